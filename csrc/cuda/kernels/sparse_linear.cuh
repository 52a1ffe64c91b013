// Torch-free CUDA kernels of y = x · Wᵀ + b with a compressed W (raw pointers + cudaStream_t).
// Formats as in lqkernels/_ops.py ("sparse linear"); x (m, in) and y (m, out) row-major,
// contiguous; values, bias and y in x's dtype, accumulation in float (double for double).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernels/measures.cuh"  // DType

namespace lqk::cuda {

// bitmap: row_offsets (out + 1), bitmap (out, ceil(in / 32)) 32-bit words.
cudaError_t bitmap_linear(DType dtype, const void* x, const void* values, const int64_t* row_offsets,
                          const uint32_t* bitmap, const void* bias, int64_t m, int64_t in, int64_t out,
                          int64_t nnz, void* y, cudaStream_t stream);

// csr16: row_offsets (out + 1), columns (nnz) unsigned 16-bit.
cudaError_t csr16_linear(DType dtype, const void* x, const void* values, const int64_t* row_offsets,
                         const uint16_t* columns, const void* bias, int64_t m, int64_t in, int64_t out,
                         int64_t nnz, void* y, cudaStream_t stream);

}  // namespace lqk::cuda
