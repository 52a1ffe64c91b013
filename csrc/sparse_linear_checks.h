// Shape, dtype and device preconditions of lqkernels::bitmap_linear / csr16_linear, shared by the
// C++ CPU kernels and the CUDA bindings (formats in lqkernels/_ops.py, "sparse linear").
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace lqk {

enum class SparseFormat { kBitmap, kCsr16 };

// TORCH_CHECKs the compressed W of a layer with `in` inputs, dtype `t` and on `device`: values,
// row offsets and index (their shapes, dtypes and device; the data itself, offsets and indices, is
// the kernels' concern). Returns out_features.
inline int64_t check_sparse_weight(const char* op, SparseFormat fmt, at::ScalarType t, at::Device device,
                                   int64_t in, const at::Tensor& values, const at::Tensor& offsets,
                                   const at::Tensor& index) {
  const bool bitmap = fmt == SparseFormat::kBitmap;
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble, op,
              ": unsupported dtype ", t, " (float16, bfloat16, float32 or float64)");
  TORCH_CHECK(values.scalar_type() == t, op, ": values dtype ", values.scalar_type(),
              " does not match x dtype ", t);
  TORCH_CHECK(values.dim() == 1, op, ": values must be 1-d, got shape ", values.sizes());
  TORCH_CHECK(offsets.scalar_type() == at::kLong && offsets.dim() == 1 && offsets.numel() >= 1, op,
              ": row offsets must be a non-empty 1-d int64 tensor, got ", offsets.scalar_type(),
              " of shape ", offsets.sizes());
  const auto index_type = bitmap ? at::kInt : at::kShort;
  TORCH_CHECK(index.scalar_type() == index_type, op, ": ", bitmap ? "bitmap" : "columns",
              " must be ", index_type, ", got ", index.scalar_type());
  const int64_t out = offsets.numel() - 1, words = (in + 31) / 32;
  if (bitmap) {
    TORCH_CHECK(index.dim() == 2 && index.size(0) == out && index.size(1) == words, op,
                ": for in_features ", in, " and ", out, " rows expected a (", out, ", ", words,
                ") bitmap, got ", index.sizes());
  } else {
    TORCH_CHECK(in <= 65536, op, ": 16-bit columns address at most 65536 inputs, got in_features ", in);
    TORCH_CHECK(index.dim() == 1 && index.numel() == values.numel(), op,
                ": values and columns must be 1-d of one length, got ", values.sizes(), " and ",
                index.sizes());
  }
  for (const at::Tensor* other : {&values, &offsets, &index})
    TORCH_CHECK(other->device() == device, op, ": operands must be on x's device ", device,
                ", got one on ", other->device());
  return out;
}

// TORCH_CHECKs every shape, dtype and device precondition of y = x · Wᵀ + b with W in `fmt`;
// returns out_features.
inline int64_t check_sparse_linear(const char* op, SparseFormat fmt, const at::Tensor& x,
                                   const at::Tensor& values, const at::Tensor& offsets,
                                   const at::Tensor& index, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be (M, in_features), got shape ", x.sizes());
  const auto t = x.scalar_type();
  const int64_t out = check_sparse_weight(op, fmt, t, x.device(), x.size(1), values, offsets, index);
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == t && bias->dim() == 1 && bias->numel() == out, op,
                ": bias must be (", out, ",) of dtype ", t, ", got ", bias->sizes(), " ",
                bias->scalar_type());
    TORCH_CHECK(bias->device() == x.device(), op, ": bias is on ", bias->device(), " but x is on ",
                x.device());
  }
  return out;
}

// TORCH_CHECKs dy, the gradient of y = x · Wᵀ + b: (M, out_features), of the layer's dtype and
// device (rows = -1: any M).
inline void check_output_gradient(const char* op, const at::Tensor& dy, int64_t rows, int64_t out,
                                  at::ScalarType t, at::Device device) {
  TORCH_CHECK(dy.dim() == 2 && dy.size(1) == out && (rows < 0 || dy.size(0) == rows), op,
              ": dy must be (", rows < 0 ? "M" : std::to_string(rows), ", ", out, "), got shape ", dy.sizes());
  TORCH_CHECK(dy.scalar_type() == t, op, ": dy dtype ", dy.scalar_type(), " does not match ", t);
  TORCH_CHECK(dy.device() == device, op, ": dy is on ", dy.device(), " but the layer is on ", device);
}

}  // namespace lqk
