// CUDA kernels of selection, at::Tensor side: checks, allocation, stream and device, and the
// errors the kernels report (one synchronisation to read them).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/bindings/common.h"
#include "cuda/kernels/selection.cuh"
#include "selection_checks.h"

namespace lqk::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> row_topk_mask_cuda(const at::Tensor& x_in, const at::Tensor& k_in,
                                                      const std::optional<at::Tensor>& mask_in,
                                                      bool magnitude, bool largest) {
  check_rows(x_in, mask_in, "row_topk_mask");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto [x, k, mask] = row_topk_inputs(x_in, k_in, mask_in);
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor out = at::empty({rows, n}, x.options().dtype(at::kBool));
  at::Tensor threshold = at::empty({rows}, x.options());
  at::Tensor status = at::empty({rows}, x.options().dtype(at::kInt));
  at::Tensor candidates = at::empty({rows}, x.options().dtype(at::kLong));
  check_launch(row_topk_mask(dtype_of(x), x.const_data_ptr(), k.const_data_ptr<int64_t>(),
                             mask ? mask->const_data_ptr<bool>() : nullptr, rows, n, magnitude,
                             largest, out.data_ptr<bool>(), threshold.data_ptr(),
                             status.data_ptr<int32_t>(), candidates.data_ptr<int64_t>(),
                             c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
               "row_topk_mask");
  if (rows > 0 && status.max().item<int32_t>() != 0) {
    const int64_t row = status.ne(0).nonzero()[0][0].item<int64_t>();
    TORCH_CHECK_VALUE(status[row].item<int32_t>() != 1, "row_topk_mask: scores contain NaN in slice ", row);
    const int64_t c = candidates[row].item<int64_t>();
    TORCH_CHECK_VALUE(false, "row_topk_mask: k = ", k[row].item<int64_t>(), " for slice ", row,
                      ", which has ", c, " candidates (k must be in [0, ", c, "])");
  }
  return {out, threshold};
}

std::vector<at::Tensor> global_topk_masks_cuda(at::TensorList xs_in,
                                               const std::optional<at::TensorList>& masks_in,
                                               int64_t k, bool magnitude, bool largest) {
  check_global_topk_args(xs_in, masks_in);
  const c10::cuda::CUDAGuard guard(xs_in[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(xs_in[0].get_device()).stream();
  std::vector<at::Tensor> xs, masks, outs;
  for (size_t t = 0; t < xs_in.size(); ++t) {
    dtype_of(xs_in[t]);
    xs.push_back(xs_in[t].contiguous());
    if (masks_in) masks.push_back((*masks_in)[t].contiguous());
    outs.push_back(at::zeros(xs_in[t].sizes(), xs_in[t].options().dtype(at::kBool)));
  }
  const DType dtype = dtype_of(xs[0]);
  auto mask_ptr = [&](size_t t) { return masks.empty() ? nullptr : masks[t].const_data_ptr<bool>(); };
  // state: [prefix, remaining, candidates, NaN candidates] (selection.cuh).
  at::Tensor state = at::zeros({4}, xs[0].options().dtype(at::kLong));
  auto* st = reinterpret_cast<unsigned long long*>(state.data_ptr<int64_t>());
  for (size_t t = 0; t < xs.size(); ++t)
    check_launch(global_count(dtype, xs[t].const_data_ptr(), mask_ptr(t), xs[t].numel(), st, stream),
                 "global_topk_masks");
  const at::Tensor counts = state.cpu();
  const int64_t total = counts[2].item<int64_t>();
  if (counts[3].item<int64_t>() != 0) {  // the error path: find which tensor, and where
    for (size_t t = 0; t < xs.size(); ++t) {
      at::Tensor nan = xs[t].isnan().reshape(-1);
      if (!masks.empty()) nan.logical_and_(masks[t].reshape(-1));
      const at::Tensor where = nan.nonzero();
      TORCH_CHECK_VALUE(where.numel() == 0, "global_topk_masks: tensor ", t, " contains NaN at flat index ",
                        where[0][0].item<int64_t>());
    }
  }
  TORCH_CHECK_VALUE(k >= 0 && k <= total, "global_topk_masks: k = ", k, " but the tensors hold ", total,
                    " candidates (k must be in [0, ", total, "])");
  if (k == 0) return outs;
  state.fill_(0);
  state[1].fill_(k);
  at::Tensor histogram = at::zeros({kGlobalDigits}, state.options());
  auto* hist = reinterpret_cast<unsigned long long*>(histogram.data_ptr<int64_t>());
  const int key_bits = dtype == DType::kDouble ? 64 : 32;
  unsigned long long decided = 0;
  for (int top = key_bits; top > 0; top -= kGlobalDigitBits) {
    const int shift = top > kGlobalDigitBits ? top - kGlobalDigitBits : 0;
    const int bits = top - shift;
    const unsigned long long digit_mask = (1ull << bits) - 1;
    for (size_t t = 0; t < xs.size(); ++t)
      check_launch(global_histogram(dtype, xs[t].const_data_ptr(), mask_ptr(t), xs[t].numel(),
                                    magnitude, largest, decided, shift, digit_mask, st, hist, stream),
                   "global_topk_masks");
    check_launch(global_select_digit(hist, 1 << bits, shift, st, stream), "global_topk_masks");
    decided |= digit_mask << shift;
  }
  // Mark above the boundary and count each block's ties; then the first `remaining` ties in
  // ranking order (tensor order, then index) get marked too.
  std::vector<at::Tensor> ties;
  for (size_t t = 0; t < xs.size(); ++t) {
    ties.push_back(at::zeros({(xs[t].numel() + kGlobalMarkBlock - 1) / kGlobalMarkBlock}, state.options()));
    check_launch(global_mark(dtype, xs[t].const_data_ptr(), mask_ptr(t), xs[t].numel(), magnitude,
                             largest, st, outs[t].data_ptr<bool>(), ties[t].data_ptr<int64_t>(),
                             nullptr, stream),
                 "global_topk_masks");
  }
  const at::Tensor all_ties = at::cat(ties);
  const at::Tensor before = all_ties.cumsum(0) - all_ties;
  const at::Tensor budget = (state[1] - before).clamp_min(0).minimum(all_ties).contiguous();
  int64_t offset = 0;
  for (size_t t = 0; t < xs.size(); ++t) {
    check_launch(global_mark(dtype, xs[t].const_data_ptr(), mask_ptr(t), xs[t].numel(), magnitude,
                             largest, st, outs[t].data_ptr<bool>(), nullptr,
                             budget.const_data_ptr<int64_t>() + offset, stream),
                 "global_topk_masks");
    offset += ties[t].numel();
  }
  return outs;
}

}  // namespace
}  // namespace lqk::cuda

// CUDA kernels of the schemas defined in lqkernels/_ops.py.
TORCH_LIBRARY_IMPL(lqkernels, CUDA, m) {
  m.impl("row_topk_mask", &lqk::cuda::row_topk_mask_cuda);          // per-row top-k mask, k per row
  m.impl("global_topk_masks", &lqk::cuda::global_topk_masks_cuda);  // exact top-k over many tensors
}
