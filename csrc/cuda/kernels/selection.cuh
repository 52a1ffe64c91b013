// Torch-free CUDA kernels of selection (raw pointers + cudaStream_t). Ranking and tie rule:
// selection_common.h; contracts: lqkernels/_ops.py (row_topk_mask, global_topk_masks).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernels/measures.cuh"  // DType

namespace lqk::cuda {

// Per-row selection of x (rows, n): out (rows, n) bool, threshold (rows) in x's dtype, and per
// row status (0 ok, 1 NaN among the candidates, 2 k outside [0, candidates]) and candidates.
cudaError_t row_topk_mask(DType dtype, const void* x, const int64_t* k, const bool* mask,
                          int64_t rows, int64_t n, bool magnitude, bool largest, bool* out,
                          void* threshold, int32_t* status, int64_t* candidates,
                          cudaStream_t stream);

// Global selection works on one tensor at a time, in ranking order, sharing device-side state:
//   state[0] = the key prefix decided so far (bits of a uint32/uint64 key),
//   state[1] = how many keys equal to the prefix are still to be taken,
//   state[2] = candidates seen, state[3] = NaN candidates seen (global_count).
constexpr int kGlobalDigitBits = 11;
constexpr int kGlobalDigits = 1 << kGlobalDigitBits;

// Adds the tensor's candidates and NaN candidates to state[2], state[3].
cudaError_t global_count(DType dtype, const void* x, const bool* mask, int64_t numel,
                         unsigned long long* state, cudaStream_t stream);

// Adds to `histogram` (kGlobalDigits counts) the digits (key >> shift) & digit_mask of the
// candidates whose key agrees with state[0] on the `decided` bits.
cudaError_t global_histogram(DType dtype, const void* x, const bool* mask, int64_t numel,
                             bool magnitude, bool largest, unsigned long long decided, int shift,
                             unsigned long long digit_mask, const unsigned long long* state,
                             unsigned long long* histogram, cudaStream_t stream);

// Picks the digit holding the state[1]-th largest key from `histogram` (one thread), updates
// state[0] and state[1], and clears the histogram for the next pass.
cudaError_t global_select_digit(unsigned long long* histogram, int digits, int shift,
                                unsigned long long* state, cudaStream_t stream);

// Blocks of kGlobalMarkBlock elements: marks keys above the boundary state[0] and writes each
// block's tie count to block_ties; with block_budget given instead, marks each block's first
// block_budget[b] ties.
constexpr int kGlobalMarkBlock = 1024;
cudaError_t global_mark(DType dtype, const void* x, const bool* mask, int64_t numel,
                        bool magnitude, bool largest, const unsigned long long* state, bool* out,
                        int64_t* block_ties, const int64_t* block_budget, cudaStream_t stream);

}  // namespace lqk::cuda
