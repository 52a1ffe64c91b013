// CUDA kernels of y = x · Wᵀ + b with a compressed W, for decode-shaped x (1-64 rows; any m is
// correct, in tiles of kRowsPerWarp rows).
//
// One warp computes one row of W against a tile of up to kRowsPerWarp x rows:
//  * csr16: lanes stride over the row's kept values (coalesced loads of values and columns) and
//    gather x at their columns (x is small and stays in L1/L2);
//  * bitmap: lanes take one 32-bit word each, a warp scan of the words' popcounts gives each lane
//    the slot of its first kept value, and each lane walks its word's set bits.
// A row costs its kept values, and the grid holds a warp per row: the block scheduler hands out
// blocks as others finish, so rows of different densities balance over the SMs. Indices are
// bounds-guarded (column < in, slot < nnz): a corrupt index table cannot read out of bounds, and no
// validation pass (a device sync) is needed on the decode path.
#include "cuda/kernels/sparse_linear.cuh"

#include "cuda/kernels/dtype.cuh"

namespace lqk::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kRowsPerWarp = 8;

// The (row of W, tile of x rows) a warp computes; `valid` is false for the warps past the last
// row of W (whole warps, so the shuffles below stay convergent).
struct WarpTask {
  int64_t row, m0;
  int rows;
  bool valid;
  __device__ WarpTask(int64_t m, int64_t out)
      : row(static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32),
        m0(static_cast<int64_t>(blockIdx.y) * kRowsPerWarp),
        rows(static_cast<int>(m - m0 < kRowsPerWarp ? m - m0 : kRowsPerWarp)),
        valid(row < out) {}
};

// acc[i] += w * x[i][col] for the tile's rows.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void add_column(acc_t (&acc)[kRowsPerWarp], const scalar_t* x, int64_t in,
                                           int rows, int64_t col, acc_t w) {
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i)
    if (i < rows) acc[i] += w * to_acc(x[i * in + col]);
}

// Warp-sums every acc[i] and lane 0 writes y[i][row] (+ bias).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void write_row(acc_t (&acc)[kRowsPerWarp], const scalar_t* bias, int64_t row,
                                          int rows, int64_t out, scalar_t* y) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    acc_t v = acc[i];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0 && i < rows) y[i * out + row] = from_acc<scalar_t>(v + (bias ? to_acc(bias[row]) : acc_t(0)));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
csr16_linear_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ values,
                    const int64_t* __restrict__ row_offsets, const uint16_t* __restrict__ columns,
                    const scalar_t* __restrict__ bias, int64_t m, int64_t in, int64_t out, int64_t nnz,
                    scalar_t* __restrict__ y) {
  using acc_t = typename Acc<scalar_t>::type;
  const WarpTask t(m, out);
  if (!t.valid) return;
  const scalar_t* xt = x + t.m0 * in;
  acc_t acc[kRowsPerWarp] = {};
  const int64_t end = row_offsets[t.row + 1] < nnz ? row_offsets[t.row + 1] : nnz;
  for (int64_t k = row_offsets[t.row] + threadIdx.x % 32; k < end; k += 32) {
    const int64_t col = columns[k];
    if (col < in) add_column(acc, xt, in, t.rows, col, to_acc(values[k]));
  }
  write_row(acc, bias, t.row, t.rows, out, y + t.m0 * out);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
bitmap_linear_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ values,
                     const int64_t* __restrict__ row_offsets, const uint32_t* __restrict__ bitmap,
                     const scalar_t* __restrict__ bias, int64_t m, int64_t in, int64_t out, int64_t nnz,
                     scalar_t* __restrict__ y) {
  using acc_t = typename Acc<scalar_t>::type;
  const WarpTask t(m, out);
  if (!t.valid) return;
  const int lane = threadIdx.x % 32;
  const scalar_t* xt = x + t.m0 * in;
  const int64_t words = (in + 31) / 32;
  const uint32_t* row_words = bitmap + t.row * words;
  acc_t acc[kRowsPerWarp] = {};
  int64_t base = row_offsets[t.row];
  for (int64_t w0 = 0; w0 < words; w0 += 32) {
    const int64_t w = w0 + lane;
    uint32_t word = w < words ? row_words[w] : 0u;
    const int count = __popc(word);
    int inclusive = count;  // warp scan of the popcounts: slot of this lane's first kept value
    for (int offset = 1; offset < 32; offset *= 2) {
      const int v = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += v;
    }
    int64_t slot = base + inclusive - count;
    for (; word; word &= word - 1, ++slot) {
      const int64_t col = w * 32 + (__ffs(word) - 1);
      if (col < in && slot < nnz) add_column(acc, xt, in, t.rows, col, to_acc(values[slot]));
    }
    base += __shfl_sync(0xffffffffu, inclusive, 31);
  }
  write_row(acc, bias, t.row, t.rows, out, y + t.m0 * out);
}

template <typename scalar_t, typename index_t>
cudaError_t launch(void (*kernel)(const scalar_t*, const scalar_t*, const int64_t*, const index_t*,
                                  const scalar_t*, int64_t, int64_t, int64_t, int64_t, scalar_t*),
                   const void* x, const void* values, const int64_t* row_offsets, const index_t* index,
                   const void* bias, int64_t m, int64_t in, int64_t out, int64_t nnz, void* y,
                   cudaStream_t stream) {
  if (m == 0 || out == 0) return cudaSuccess;
  const int64_t row_blocks = (out + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t row_tiles = (m + kRowsPerWarp - 1) / kRowsPerWarp;
  if (row_blocks > 2147483647 || row_tiles > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(row_tiles));
  kernel<<<grid, kWarpsPerBlock * 32, 0, stream>>>(
      static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(values), row_offsets, index,
      static_cast<const scalar_t*>(bias), m, in, out, nnz, static_cast<scalar_t*>(y));
  return cudaGetLastError();
}

template <typename scalar_t> struct Csr16Launch {
  template <typename... A> static cudaError_t run(A... a) { return launch<scalar_t, uint16_t>(csr16_linear_kernel<scalar_t>, a...); }
};
template <typename scalar_t> struct BitmapLaunch {
  template <typename... A> static cudaError_t run(A... a) { return launch<scalar_t, uint32_t>(bitmap_linear_kernel<scalar_t>, a...); }
};

}  // namespace

cudaError_t bitmap_linear(DType dtype, const void* x, const void* values, const int64_t* row_offsets,
                          const uint32_t* bitmap, const void* bias, int64_t m, int64_t in, int64_t out,
                          int64_t nnz, void* y, cudaStream_t stream) {
  return dispatch<BitmapLaunch>(dtype, x, values, row_offsets, bitmap, bias, m, in, out, nnz, y, stream);
}

cudaError_t csr16_linear(DType dtype, const void* x, const void* values, const int64_t* row_offsets,
                         const uint16_t* columns, const void* bias, int64_t m, int64_t in, int64_t out,
                         int64_t nnz, void* y, cudaStream_t stream) {
  return dispatch<Csr16Launch>(dtype, x, values, row_offsets, columns, bias, m, in, out, nnz, y, stream);
}

}  // namespace lqk::cuda
