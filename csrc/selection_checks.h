// Argument preconditions of lqkernels::row_topk_mask, shared by the C++ CPU kernel and the CUDA
// bindings (contract in lqkernels/_ops.py, "selection").
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace lqk {

inline void check_row_topk_args(const at::Tensor& x, const at::Tensor& k, const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(x.dim() == 2, "row_topk_mask: expects a (rows, n) tensor, got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "row_topk_mask: scores must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(k.scalar_type() == at::kLong && k.dim() == 1 && k.size(0) == x.size(0),
              "row_topk_mask: k must be an int64 tensor of shape (", x.size(0), "), got ",
              k.scalar_type(), " of shape ", k.sizes());
  TORCH_CHECK(k.device() == x.device(), "row_topk_mask: k is on ", k.device(), " but scores are on ",
              x.device());
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->sizes() == x.sizes() && mask->device() == x.device(),
                "row_topk_mask: mask must be a bool tensor of shape ", x.sizes(), " on ", x.device(),
                ", got ", mask->scalar_type(), " of shape ", mask->sizes(), " on ", mask->device());
  }
}

// The checked arguments of row_topk_mask, made contiguous for the kernels.
struct RowTopkInputs {
  at::Tensor x, k;
  std::optional<at::Tensor> mask;
};

inline RowTopkInputs row_topk_inputs(const at::Tensor& x, const at::Tensor& k, const std::optional<at::Tensor>& mask) {
  check_row_topk_args(x, k, mask);
  return {x.contiguous(), k.contiguous(),
          mask ? std::optional<at::Tensor>(mask->contiguous()) : std::nullopt};
}

}  // namespace lqk
