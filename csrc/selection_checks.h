// Argument preconditions of lqkernels::row_topk_mask and lqkernels::global_topk_masks, shared by the
// C++ CPU kernels and the CUDA bindings (contract in lqkernels/_ops.py, "selection").
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

inline void check_global_topk_args(at::TensorList xs, const std::optional<at::TensorList>& masks) {
  TORCH_CHECK(!xs.empty(), "global_topk_masks: needs at least one tensor");
  TORCH_CHECK(!masks || masks->size() == xs.size(), "global_topk_masks: got ", masks ? masks->size() : 0,
              " masks for ", xs.size(), " tensors");
  for (size_t t = 0; t < xs.size(); ++t) {
    const at::Tensor& x = xs[t];
    TORCH_CHECK(x.scalar_type() == xs[0].scalar_type() && at::isFloatingType(x.scalar_type()),
                "global_topk_masks: tensor ", t, " has dtype ", x.scalar_type(),
                "; all must share one floating dtype (", xs[0].scalar_type(), ")");
    TORCH_CHECK(x.device() == xs[0].device(), "global_topk_masks: tensor ", t, " is on ", x.device(),
                " but tensor 0 is on ", xs[0].device());
    if (masks) {
      const at::Tensor& m = (*masks)[t];
      TORCH_CHECK(m.scalar_type() == at::kBool && m.sizes() == x.sizes() && m.device() == x.device(),
                  "global_topk_masks: mask ", t, " must be a bool tensor of shape ", x.sizes(), " on ",
                  x.device(), ", got ", m.scalar_type(), " of shape ", m.sizes(), " on ", m.device());
    }
  }
}

}  // namespace lqk
