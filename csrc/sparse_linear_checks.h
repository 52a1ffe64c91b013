// Shape, dtype and device preconditions of lqkernels::bitmap_linear / csr16_linear, shared by the
// C++ CPU kernels and the CUDA bindings (formats in lqkernels/_ops.py, "sparse linear").
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace lqk {

enum class SparseFormat { kBitmap, kCsr16 };

// TORCH_CHECKs every shape, dtype and device precondition of y = x · Wᵀ + b with W in `fmt`
// (the data itself, offsets and indices, is the kernels' concern); returns out_features.
inline int64_t check_sparse_linear(const char* op, SparseFormat fmt, const at::Tensor& x,
                                   const at::Tensor& values, const at::Tensor& offsets,
                                   const at::Tensor& index, const std::optional<at::Tensor>& bias) {
  const bool bitmap = fmt == SparseFormat::kBitmap;
  TORCH_CHECK(x.dim() == 2, op, ": x must be (M, in_features), got shape ", x.sizes());
  const auto t = x.scalar_type();
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
  const int64_t out = offsets.numel() - 1, in = x.size(1), words = (in + 31) / 32;
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
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == t && bias->dim() == 1 && bias->numel() == out, op,
                ": bias must be (", out, ",) of dtype ", t, ", got ", bias->sizes(), " ",
                bias->scalar_type());
    TORCH_CHECK(bias->device() == x.device(), op, ": bias is on ", bias->device(), " but x is on ",
                x.device());
  }
  for (const at::Tensor* other : {&values, &offsets, &index})
    TORCH_CHECK(other->device() == x.device(), op, ": operands must be on x's device ", x.device(),
                ", got one on ", other->device());
  return out;
}

}  // namespace lqk
