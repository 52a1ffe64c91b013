// CUDA kernels of the per-slice measures, at::Tensor side: checks, allocation, stream and device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

#include "cuda/bindings/common.h"
#include "cuda/kernels/measures.cuh"

namespace lqk::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_powsum_cuda(
    const at::Tensor& x_in, const std::optional<at::Tensor>& mask_in, at::ArrayRef<double> qs_in) {
  check_rows(x_in, mask_in, "row_powsum");
  TORCH_CHECK(qs_in.size() <= static_cast<size_t>(kMaxExponents),
              "row_powsum: at most ", kMaxExponents, " exponents per pass, got ", qs_in.size());
  ExponentList qs;
  qs.count = static_cast<int>(qs_in.size());
  for (int j = 0; j < qs.count; ++j) {
    TORCH_CHECK(qs_in[j] > 0 && std::isfinite(qs_in[j]),
                "row_powsum: exponents must be finite and > 0, got ", qs_in[j]);
    qs.value[j] = qs_in[j];
  }
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const std::optional<at::Tensor> mask =
      mask_in ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  const int64_t rows = x.size(0), n = x.size(1);
  const auto fopts = x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  const auto lopts = x.options().dtype(at::kLong);
  at::Tensor sums = at::empty({qs.count, rows}, fopts);
  at::Tensor scale = at::empty({rows}, fopts);
  at::Tensor count = at::empty({rows}, lopts);
  int sms = 0;
  check_launch(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()),
               "row_powsum");
  const int splits = row_powsum_splits(rows, n, sms);
  at::Tensor part_sums, part_scale, part_count;
  if (splits > 1) {
    part_sums = at::empty({qs.count, rows * splits}, fopts);
    part_scale = at::empty({rows * splits}, fopts);
    part_count = at::empty({rows * splits}, lopts);
  }
  check_launch(
      row_powsum(dtype_of(x), x.const_data_ptr(), mask ? mask->const_data_ptr<bool>() : nullptr,
                 rows, n, qs, splits, splits > 1 ? part_sums.data_ptr() : nullptr,
                 splits > 1 ? part_scale.data_ptr() : nullptr,
                 splits > 1 ? part_count.data_ptr<int64_t>() : nullptr, sums.data_ptr(),
                 scale.data_ptr(), count.data_ptr<int64_t>(),
                 c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
      "row_powsum");
  return {sums, count, scale};
}

// Gini needs each row's survivors in sorted order: ATen's segmented sort, then one reduction.
at::Tensor row_gini_cuda(const at::Tensor& x, const std::optional<at::Tensor>& mask) {
  check_rows(x, mask, "row_gini");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor magnitudes = x.abs();
  if (mask) magnitudes.masked_fill_(mask->logical_not(), -1);
  const at::Tensor sorted = std::get<0>(magnitudes.sort(/*dim=*/1)).contiguous();
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor out = at::empty(
      {rows}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  check_launch(row_gini_sorted(dtype_of(x), sorted.const_data_ptr(), rows, n, out.data_ptr(),
                               c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
               "row_gini");
  return out;
}

}  // namespace
}  // namespace lqk::cuda

// CUDA kernels of the schemas defined in lqkernels/_ops.py.
TORCH_LIBRARY_IMPL(lqkernels, CUDA, m) {
  m.impl("row_powsum", &lqk::cuda::row_powsum_cuda);  // per-row (scale, sum (|x|/scale)^q, survivors)
  m.impl("row_gini", &lqk::cuda::row_gini_cuda);      // per-row Gini index of the survivors
}
