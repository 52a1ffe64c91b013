// CUDA kernels of selection. Per row: one block finds the k-th key by radix selection, 8 bits a
// pass with a shared-memory histogram (a weight row stays in L1/L2 across the passes), then
// writes the mask, ranking the boundary ties in index order with a block-wide ballot scan. Rows
// of at most kSmallRow entries (N:M groups) take one thread each and rank by counting. Global
// selection runs histogram passes over every tensor into one device histogram, the digit choice
// stays on the device, and a final pass marks each tensor.
#include "cuda/kernels/dtype.cuh"
#include "cuda/kernels/selection.cuh"
#include "selection_common.h"

namespace lqk::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRowDigitBits = 8;
constexpr int kSmallRow = 32;

template <typename scalar_t>
using KeyFor = typename KeyOf<typename Acc<scalar_t>::type>::type;

template <typename scalar_t>
__device__ __forceinline__ KeyFor<scalar_t> key_of(scalar_t v, bool magnitude, bool largest) {
  return order_key<typename Acc<scalar_t>::type>(to_acc(v), magnitude, largest);
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t threshold_of(KeyFor<scalar_t> kth, int64_t k, bool magnitude,
                                                 bool largest) {
  using acc_t = typename Acc<scalar_t>::type;
  const acc_t inf = acc_t(1) / acc_t(0);
  return from_acc<scalar_t>(k == 0 ? (largest ? inf : -inf) : key_value<acc_t>(kth, magnitude, largest));
}

// Marks, in index order over the block's elements [base, base + kThreads), the candidates above
// `kth` and the ties whose rank among ties (counted from `*tied_before`) is below `take`; then
// advances *tied_before. Every thread of the block must call it.
template <typename Key>
__device__ void mark_tile(bool in_range, bool candidate, Key key, Key kth, long long take,
                          long long* tied_before, bool* out_element) {
  __shared__ int warp_ties[kWarps];
  const bool tie = in_range && candidate && key == kth;
  const unsigned ballot = __ballot_sync(0xffffffffu, tie);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_ties[warp] = __popc(ballot);
  __syncthreads();
  long long rank = *tied_before + __popc(ballot & ((1u << lane) - 1));
  long long tile_ties = 0;
  for (int w = 0; w < kWarps; ++w) {
    rank += w < warp ? warp_ties[w] : 0;
    tile_ties += warp_ties[w];
  }
  if (in_range) *out_element = candidate && (key > kth || (tie && rank < take));
  __syncthreads();  // warp_ties is reused by the next tile
  if (threadIdx.x == 0) *tied_before += tile_ties;
  __syncthreads();
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
row_topk_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ k, const bool* __restrict__ mask,
                int64_t n, bool magnitude, bool largest, bool* __restrict__ out,
                scalar_t* __restrict__ threshold, int32_t* __restrict__ status,
                int64_t* __restrict__ candidates) {
  using Key = KeyFor<scalar_t>;
  constexpr int key_bits = sizeof(Key) * 8;
  __shared__ unsigned long long histogram[1 << kRowDigitBits];
  __shared__ unsigned long long count, nans;
  __shared__ Key prefix;
  __shared__ long long remaining, tied_before;
  const int64_t row = blockIdx.x;
  const scalar_t* xr = x + row * n;
  const bool* mr = mask ? mask + row * n : nullptr;
  bool* orow = out + row * n;
  const int64_t kr = k[row];
  if (threadIdx.x == 0) {
    count = 0;
    nans = 0;
    prefix = 0;
    remaining = kr;
    tied_before = 0;
  }
  __syncthreads();
  unsigned long long my_count = 0, my_nans = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const bool cand = !mr || mr[i];
    const auto v = to_acc(xr[i]);
    my_count += cand;
    my_nans += cand && v != v;
  }
  atomicAdd(&count, my_count);
  atomicAdd(&nans, my_nans);
  __syncthreads();
  const bool bad = nans > 0 || kr < 0 || kr > static_cast<long long>(count);
  if (threadIdx.x == 0) {
    status[row] = nans > 0 ? 1 : bad ? 2 : 0;
    candidates[row] = static_cast<int64_t>(count);
  }
  if (bad || kr == 0) {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) orow[i] = false;
    if (threadIdx.x == 0) threshold[row] = threshold_of<scalar_t>(0, 0, magnitude, largest);
    return;
  }
  Key decided = 0;
  for (int shift = key_bits - kRowDigitBits; shift >= 0; shift -= kRowDigitBits) {
    for (int d = threadIdx.x; d < (1 << kRowDigitBits); d += kThreads) histogram[d] = 0;
    __syncthreads();
    const Key want = prefix;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      if (mr && !mr[i]) continue;
      const Key key = key_of(xr[i], magnitude, largest);
      if ((key & decided) == want)
        atomicAdd(&histogram[(key >> shift) & ((1 << kRowDigitBits) - 1)], 1ull);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long left = static_cast<unsigned long long>(remaining);
      const Key digit = static_cast<Key>(select_digit<unsigned long long>(histogram, 1 << kRowDigitBits, left));
      prefix |= digit << shift;
      remaining = static_cast<long long>(left);
    }
    decided |= static_cast<Key>((1 << kRowDigitBits) - 1) << shift;
    __syncthreads();
  }
  const Key kth = prefix;
  const long long take = remaining;
  for (int64_t base = 0; base < n; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool in_range = i < n;
    const bool cand = in_range && (!mr || mr[i]);
    const Key key = in_range ? key_of(xr[i], magnitude, largest) : Key(0);
    bool ignored;
    mark_tile(in_range, cand, key, kth, take, &tied_before, in_range ? &orow[i] : &ignored);
  }
  if (threadIdx.x == 0) threshold[row] = threshold_of<scalar_t>(kth, kr, magnitude, largest);
}

// One thread per short row: an entry is selected when fewer than k candidates rank above it.
template <typename scalar_t>
__global__ void small_row_topk_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ k,
                                      const bool* __restrict__ mask, int64_t rows, int64_t n,
                                      bool magnitude, bool largest, bool* __restrict__ out,
                                      scalar_t* __restrict__ threshold, int32_t* __restrict__ status,
                                      int64_t* __restrict__ candidates) {
  using Key = KeyFor<scalar_t>;
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  Key keys[kSmallRow];
  bool cand[kSmallRow];
  int64_t count = 0;
  bool nan = false;
  for (int i = 0; i < n; ++i) {
    const auto v = to_acc(x[row * n + i]);
    cand[i] = !mask || mask[row * n + i];
    keys[i] = order_key<typename Acc<scalar_t>::type>(v, magnitude, largest);
    count += cand[i];
    nan = nan || (cand[i] && v != v);
  }
  const int64_t kr = k[row];
  const bool bad = nan || kr < 0 || kr > count;
  status[row] = nan ? 1 : bad ? 2 : 0;
  candidates[row] = count;
  Key worst = ~Key(0);
  for (int i = 0; i < n; ++i) {
    int64_t above = 0;
    for (int j = 0; j < n; ++j)
      above += cand[j] && (keys[j] > keys[i] || (keys[j] == keys[i] && j < i));
    const bool keep = !bad && cand[i] && above < kr;
    out[row * n + i] = keep;
    if (keep && keys[i] < worst) worst = keys[i];
  }
  threshold[row] = threshold_of<scalar_t>(worst, bad ? 0 : kr, magnitude, largest);
}

// ---- global selection ----

template <typename scalar_t>
__global__ void global_count_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ mask,
                                    int64_t numel, unsigned long long* state) {
  unsigned long long count = 0, nans = 0;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < numel; i += int64_t(gridDim.x) * kThreads) {
    const bool cand = !mask || mask[i];
    const auto v = to_acc(x[i]);
    count += cand;
    nans += cand && v != v;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    count += __shfl_down_sync(0xffffffffu, count, offset);
    nans += __shfl_down_sync(0xffffffffu, nans, offset);
  }
  if (threadIdx.x % 32 == 0) {
    atomicAdd(&state[2], count);
    atomicAdd(&state[3], nans);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
global_histogram_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ mask, int64_t numel,
                        bool magnitude, bool largest, unsigned long long decided, int shift,
                        unsigned long long digit_mask, const unsigned long long* __restrict__ state,
                        unsigned long long* __restrict__ histogram) {
  using Key = KeyFor<scalar_t>;
  __shared__ unsigned int local[kGlobalDigits];  // privatised: few global atomics per block
  for (int d = threadIdx.x; d < kGlobalDigits; d += kThreads) local[d] = 0;
  __syncthreads();
  const Key want = static_cast<Key>(state[0]) & static_cast<Key>(decided);
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < numel; i += int64_t(gridDim.x) * kThreads) {
    if (mask && !mask[i]) continue;
    const Key key = key_of(x[i], magnitude, largest);
    if ((key & static_cast<Key>(decided)) == want) atomicAdd(&local[(key >> shift) & digit_mask], 1u);
  }
  __syncthreads();
  for (int d = threadIdx.x; d < kGlobalDigits; d += kThreads)
    if (local[d]) atomicAdd(&histogram[d], static_cast<unsigned long long>(local[d]));
}

__global__ void global_select_digit_kernel(unsigned long long* histogram, int digits, int shift,
                                           unsigned long long* state) {
  unsigned long long remaining = state[1];
  const unsigned long long digit = select_digit<unsigned long long>(histogram, digits, remaining);
  state[0] |= digit << shift;
  state[1] = remaining;
  for (int d = 0; d < kGlobalDigits; ++d) histogram[d] = 0;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
global_mark_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ mask, int64_t numel,
                   bool magnitude, bool largest, const unsigned long long* __restrict__ state,
                   bool* __restrict__ out, int64_t* __restrict__ block_ties,
                   const int64_t* __restrict__ block_budget) {
  using Key = KeyFor<scalar_t>;
  __shared__ long long tied_before;
  if (threadIdx.x == 0) tied_before = 0;
  __syncthreads();
  const Key kth = static_cast<Key>(state[0]);
  const int64_t begin = blockIdx.x * int64_t(kGlobalMarkBlock);
  // Without budgets every tie is left unmarked (take = 0) and only counted.
  const long long take = block_budget ? block_budget[blockIdx.x] : 0;
  if (block_budget && take == 0) return;
  for (int64_t base = begin; base < begin + kGlobalMarkBlock; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool in_range = i < numel;
    const bool cand = in_range && (!mask || mask[i]);
    const Key key = in_range ? key_of(x[i], magnitude, largest) : Key(0);
    bool keep = false;
    mark_tile(in_range, cand, key, kth, take, &tied_before, &keep);
    if (in_range && (!block_budget || keep)) out[i] = block_budget ? true : keep;
  }
  if (!block_budget && threadIdx.x == 0) block_ties[blockIdx.x] = tied_before;
}

int grid_for(int64_t numel) {
  const int64_t blocks = (numel + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

template <typename T> struct RowLaunch {
  static cudaError_t run(const void* x, const int64_t* k, const bool* mask, int64_t rows, int64_t n,
                         bool magnitude, bool largest, bool* out, void* threshold, int32_t* status,
                         int64_t* candidates, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    const T* xt = static_cast<const T*>(x);
    T* tt = static_cast<T*>(threshold);
    if (n <= kSmallRow) {
      small_row_topk_kernel<T><<<(rows + 127) / 128, 128, 0, stream>>>(
          xt, k, mask, rows, n, magnitude, largest, out, tt, status, candidates);
    } else {
      row_topk_kernel<T><<<rows, kThreads, 0, stream>>>(xt, k, mask, n, magnitude, largest, out, tt,
                                                         status, candidates);
    }
    return cudaGetLastError();
  }
};

template <typename T> struct CountLaunch {
  static cudaError_t run(const void* x, const bool* mask, int64_t numel, unsigned long long* state,
                         cudaStream_t stream) {
    if (numel == 0) return cudaSuccess;
    global_count_kernel<T><<<grid_for(numel), kThreads, 0, stream>>>(static_cast<const T*>(x), mask,
                                                                     numel, state);
    return cudaGetLastError();
  }
};

template <typename T> struct HistogramLaunch {
  static cudaError_t run(const void* x, const bool* mask, int64_t numel, bool magnitude, bool largest,
                         unsigned long long decided, int shift, unsigned long long digit_mask,
                         const unsigned long long* state, unsigned long long* histogram,
                         cudaStream_t stream) {
    if (numel == 0) return cudaSuccess;
    global_histogram_kernel<T><<<grid_for(numel), kThreads, 0, stream>>>(
        static_cast<const T*>(x), mask, numel, magnitude, largest, decided, shift, digit_mask, state,
        histogram);
    return cudaGetLastError();
  }
};

template <typename T> struct MarkLaunch {
  static cudaError_t run(const void* x, const bool* mask, int64_t numel, bool magnitude, bool largest,
                         const unsigned long long* state, bool* out, int64_t* block_ties,
                         const int64_t* block_budget, cudaStream_t stream) {
    if (numel == 0) return cudaSuccess;
    const int64_t blocks = (numel + kGlobalMarkBlock - 1) / kGlobalMarkBlock;
    global_mark_kernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(x), mask, numel,
                                                           magnitude, largest, state, out,
                                                           block_ties, block_budget);
    return cudaGetLastError();
  }
};

}  // namespace

cudaError_t row_topk_mask(DType dtype, const void* x, const int64_t* k, const bool* mask,
                          int64_t rows, int64_t n, bool magnitude, bool largest, bool* out,
                          void* threshold, int32_t* status, int64_t* candidates,
                          cudaStream_t stream) {
  return dispatch<RowLaunch>(dtype, x, k, mask, rows, n, magnitude, largest, out, threshold, status,
                             candidates, stream);
}

cudaError_t global_count(DType dtype, const void* x, const bool* mask, int64_t numel,
                         unsigned long long* state, cudaStream_t stream) {
  return dispatch<CountLaunch>(dtype, x, mask, numel, state, stream);
}

cudaError_t global_histogram(DType dtype, const void* x, const bool* mask, int64_t numel,
                             bool magnitude, bool largest, unsigned long long decided, int shift,
                             unsigned long long digit_mask, const unsigned long long* state,
                             unsigned long long* histogram, cudaStream_t stream) {
  return dispatch<HistogramLaunch>(dtype, x, mask, numel, magnitude, largest, decided, shift,
                                   digit_mask, state, histogram, stream);
}

cudaError_t global_select_digit(unsigned long long* histogram, int digits, int shift,
                                unsigned long long* state, cudaStream_t stream) {
  global_select_digit_kernel<<<1, 1, 0, stream>>>(histogram, digits, shift, state);
  return cudaGetLastError();
}

cudaError_t global_mark(DType dtype, const void* x, const bool* mask, int64_t numel,
                        bool magnitude, bool largest, const unsigned long long* state, bool* out,
                        int64_t* block_ties, const int64_t* block_budget, cudaStream_t stream) {
  return dispatch<MarkLaunch>(dtype, x, mask, numel, magnitude, largest, state, out, block_ties,
                              block_budget, stream);
}

}  // namespace lqk::cuda
