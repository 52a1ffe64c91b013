// CUDA kernels of the sparse-linear ops, at::Tensor side: checks, allocation, stream and device.
// The kernels guard every index they read, so the decode path skips the CPU kernels' data
// validation (which would need a device sync); shapes, dtypes and devices are checked here.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/kernels/sparse_linear.cuh"
#include "sparse_linear_checks.h"

namespace lqk::cuda {
namespace {

DType sparse_dtype(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kDouble;
    default: return DType::kFloat;  // check_sparse_linear allowed only these four
  }
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

// Both formats: checks, contiguous operands, one launch. `launch` is lqk::cuda::bitmap_linear or
// csr16_linear; index_t the unsigned view of the index tensor's elements.
template <typename index_t, typename Launch>
at::Tensor sparse_linear_cuda(const char* op, Launch launch, const at::Tensor& x_in, const at::Tensor& values,
                              const at::Tensor& row_offsets, const at::Tensor& index,
                              const std::optional<at::Tensor>& bias) {
  const int64_t out = check_sparse_linear(
      op, sizeof(index_t) == 4 ? SparseFormat::kBitmap : SparseFormat::kCsr16, x_in, values, row_offsets,
      index, bias);
  TORCH_CHECK(x_in.is_cuda(), op, ": x must be a CUDA tensor, got ", x_in.device());
  const int64_t in = x_in.size(1);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), v = values.contiguous(), o = row_offsets.contiguous();
  const at::Tensor i = index.contiguous();
  const std::optional<at::Tensor> bias_c = bias ? std::optional(bias->contiguous()) : std::nullopt;
  at::Tensor y = at::empty({x.size(0), out}, x.options());
  check_launch(launch(sparse_dtype(x), x.const_data_ptr(), v.const_data_ptr(), o.const_data_ptr<int64_t>(),
                      static_cast<const index_t*>(i.const_data_ptr()), bias_c ? bias_c->const_data_ptr() : nullptr,
                      x.size(0), in, out, v.numel(), y.mutable_data_ptr(),
                      c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
               op);
  return y;
}

at::Tensor bitmap_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_offsets,
                              const at::Tensor& bitmap, const std::optional<at::Tensor>& bias) {
  return sparse_linear_cuda<uint32_t>("bitmap_linear", &lqk::cuda::bitmap_linear, x, values, row_offsets,
                                      bitmap, bias);
}

at::Tensor csr16_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_offsets,
                             const at::Tensor& columns, const std::optional<at::Tensor>& bias) {
  return sparse_linear_cuda<uint16_t>("csr16_linear", &lqk::cuda::csr16_linear, x, values, row_offsets,
                                      columns, bias);
}

}  // namespace
}  // namespace lqk::cuda

// CUDA kernels of the sparse-linear schemas defined in lqkernels/_ops.py (bsr: Triton, lqkernels/_triton).
TORCH_LIBRARY_IMPL(lqkernels, CUDA, m) {
  m.impl("bitmap_linear", &lqk::cuda::bitmap_linear_cuda);  // y = x·Wᵀ + b, bitmap + packed values
  m.impl("csr16_linear", &lqk::cuda::csr16_linear_cuda);    // y = x·Wᵀ + b, 16-bit columns + values
}
