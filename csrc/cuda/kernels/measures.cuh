// Torch-free CUDA kernels of the per-slice measures (raw pointers + cudaStream_t).
// The statistics are those of measures_common.h; rows are contiguous, row-major (rows, n).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "measures_common.h"

namespace lqk::cuda {

enum class DType { kHalf, kBFloat16, kFloat, kDouble };

struct ExponentList {
  int count = 0;
  double value[kMaxExponents];
};

// How many blocks share one row: enough for every row together to fill `num_sms` multiprocessors
// twice over, never more than one block per 16k elements.
int row_powsum_splits(int64_t rows, int64_t n, int num_sms);

// Per-row statistics of x (rows, n) in the accumulation type (float, or double for double x):
// sums[j * rows + r] = T_{q_j}, scale[r], count[r]. With splits > 1, each row is first reduced in
// `splits` parts into part_sums (count, rows * splits), part_scale and part_count (rows * splits),
// then merged; with splits == 1 the part buffers are unused.
cudaError_t row_powsum(DType dtype, const void* x, const bool* mask, int64_t rows, int64_t n,
                       const ExponentList& qs, int splits, void* part_sums, void* part_scale,
                       int64_t* part_count, void* sums, void* scale, int64_t* count,
                       cudaStream_t stream);

// Gini index per row from magnitudes sorted ascending along each row, pruned entries stored as a
// negative value (so they sort first). out is in the accumulation type.
cudaError_t row_gini_sorted(DType dtype, const void* sorted, int64_t rows, int64_t n, void* out,
                            cudaStream_t stream);

}  // namespace lqk::cuda
