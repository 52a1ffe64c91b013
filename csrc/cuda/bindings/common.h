// at::Tensor-side helpers shared by the CUDA bindings.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "cuda/kernels/measures.cuh"  // DType

namespace lqk::cuda {

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    default: TORCH_CHECK(false, "lqkernels: unsupported dtype ", t.scalar_type(),
                         " (float16, bfloat16, float32 or float64)");
  }
}

// x: a CUDA (rows, n) tensor of a supported dtype; mask: None or bool of x's shape and device.
inline void check_rows(const at::Tensor& x, const std::optional<at::Tensor>& mask, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 2, op, ": expects a (rows, n) tensor, got shape ", x.sizes());
  dtype_of(x);
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, op, ": mask must be bool, got ", mask->scalar_type());
    TORCH_CHECK(mask->sizes() == x.sizes(), op, ": mask shape ", mask->sizes(),
                " does not match x shape ", x.sizes());
    TORCH_CHECK(mask->device() == x.device(), op, ": mask is on ", mask->device(), " but x is on ",
                x.device());
  }
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace lqk::cuda
