// CUDA kernels of the per-slice measures. One block reduces one part of one row: each thread
// keeps an online state (running max `scale`, sums of (|x| / scale)^q), loads kUnroll elements at
// a time (independent loads keep many bytes in flight), rescales only when a tile raises its max,
// and the block merges the thread states with warp shuffles.
#include "cuda/kernels/dtype.cuh"
#include "cuda/kernels/measures.cuh"

namespace lqk::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 8;

__device__ __forceinline__ float fast_log2(float r) { return __log2f(r); }
__device__ __forceinline__ double fast_log2(double r) { return log2(r); }
__device__ __forceinline__ float fast_exp2(float y) { return exp2f(y); }
__device__ __forceinline__ double fast_exp2(double y) { return exp2(y); }

template <typename acc_t>
struct Exponents {
  int count;
  acc_t value[kMaxExponents];
  int kind[kMaxExponents];
};

template <typename acc_t>
struct State {
  acc_t scale;
  acc_t sums[kMaxExponents];
  long long count;
  bool nan;

  __device__ void raise_scale(acc_t new_scale, const Exponents<acc_t>& qs) {
#pragma unroll
    for (int j = 0; j < kMaxExponents; ++j)
      if (j < qs.count) sums[j] *= rescale_factor(scale, new_scale, qs.value[j]);
    scale = new_scale;
  }

  __device__ void merge(acc_t other_scale, const acc_t* other_sums, long long other_count,
                        bool other_nan, const Exponents<acc_t>& qs) {
    const acc_t s = scale > other_scale ? scale : other_scale;
#pragma unroll
    for (int j = 0; j < kMaxExponents; ++j)
      if (j < qs.count)
        sums[j] = sums[j] * rescale_factor(scale, s, qs.value[j]) +
                  other_sums[j] * rescale_factor(other_scale, s, qs.value[j]);
    scale = s;
    count += other_count;
    nan = nan || other_nan;
  }
};

template <typename acc_t>
__device__ __forceinline__ acc_t power_term(acc_t r, acc_t log2r, acc_t q, int kind) {
  switch (kind) {
    case kOne: return r;
    case kTwo: return r * r;
    case kHalf: return sqrt(r);
    default: return r > acc_t(0) ? fast_exp2(q * log2r) : acc_t(0);
  }
}

// Block-wide reductions through warp shuffles and one shared slot per warp; every thread gets the
// result.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op) {
  __shared__ T slots[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // the slots may still be read by a previous call
  if (lane == 0) slots[warp] = v;
  __syncthreads();
  v = slots[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) v = op(v, slots[w]);
  return v;
}

// Merges the block's thread states into thread 0's. Rescaling pairs of states as a tree would cost
// a pow per exponent at every level; instead every thread rescales once to the block's maximum,
// after which the sums add plainly.
template <typename acc_t>
__device__ void block_merge(State<acc_t>& st, const Exponents<acc_t>& qs) {
  const acc_t block_scale = block_reduce(st.scale, [](acc_t a, acc_t b) { return a > b ? a : b; });
#pragma unroll
  for (int j = 0; j < kMaxExponents; ++j)
    if (j < qs.count)
      st.sums[j] = block_reduce(st.sums[j] * rescale_factor(st.scale, block_scale, qs.value[j]),
                                [](acc_t a, acc_t b) { return a + b; });
  st.scale = block_scale;
  st.count = block_reduce(st.count, [](long long a, long long b) { return a + b; });
  st.nan = block_reduce(int(st.nan), [](int a, int b) { return a | b; }) != 0;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
row_powsum_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ mask, int64_t rows,
                  int64_t n, Exponents<acc_t> qs, int splits, acc_t* __restrict__ out_sums,
                  acc_t* __restrict__ out_scale, int64_t* __restrict__ out_count) {
  const int64_t task = blockIdx.x;
  const int64_t row = task / splits, part = task % splits;
  const int64_t span = (n + splits - 1) / splits;
  const int64_t begin = min(n, part * span), end = min(n, begin + span);
  const scalar_t* xr = x + row * n;
  const bool* mr = mask ? mask + row * n : nullptr;

  State<acc_t> st;
  st.scale = 0;
#pragma unroll
  for (int j = 0; j < kMaxExponents; ++j) st.sums[j] = 0;
  st.count = 0;
  st.nan = false;

  for (int64_t base = begin; base < end; base += int64_t(kThreads) * kUnroll) {
    acc_t a[kUnroll];
    acc_t tile_max = 0;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + threadIdx.x + int64_t(u) * kThreads;
      const bool keep = i < end && (!mr || mr[i]);
      a[u] = keep ? fabs(to_acc(xr[i])) : acc_t(0);
      st.count += keep;
      st.nan = st.nan || a[u] != a[u];
      tile_max = a[u] > tile_max ? a[u] : tile_max;
    }
    if (tile_max > st.scale) st.raise_scale(tile_max, qs);
    if (st.scale == acc_t(0)) continue;
    const bool inf_scale = isinf(st.scale);
    // A subnormal maximum has no finite reciprocal: lift magnitudes into the normal range first.
    const acc_t lift = isinf(acc_t(1) / st.scale) ? acc_t(sizeof(acc_t) == 4 ? 0x1p64 : 0x1p128) : acc_t(1);
    const acc_t inv = acc_t(1) / (st.scale * lift);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const acc_t r = inf_scale ? acc_t(isinf(a[u]) ? 1 : 0) : (a[u] * lift) * inv;
      const acc_t log2r = fast_log2(r);  // unused (and dead-code eliminated) for special exponents
#pragma unroll
      for (int j = 0; j < kMaxExponents; ++j)
        if (j < qs.count) st.sums[j] += power_term(r, log2r, qs.value[j], qs.kind[j]);
    }
  }
  block_merge(st, qs);
  if (threadIdx.x == 0) {
    const acc_t nan = acc_t(0) / acc_t(0);
    const int64_t out = row * splits + part, stride = rows * splits;
#pragma unroll
    for (int j = 0; j < kMaxExponents; ++j)
      if (j < qs.count) out_sums[j * stride + out] = st.nan ? nan : st.sums[j];
    out_scale[out] = st.nan ? nan : st.scale;
    out_count[out] = st.count;
  }
}

// One thread per row merges the row's `splits` partial states.
template <typename acc_t>
__global__ void merge_parts_kernel(int64_t rows, Exponents<acc_t> qs, int splits,
                                   const acc_t* __restrict__ part_sums,
                                   const acc_t* __restrict__ part_scale,
                                   const int64_t* __restrict__ part_count, acc_t* __restrict__ sums,
                                   acc_t* __restrict__ scale, int64_t* __restrict__ count) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const int64_t stride = rows * splits;
  State<acc_t> st;
  st.scale = 0;
  st.count = 0;
  st.nan = false;
#pragma unroll
  for (int j = 0; j < kMaxExponents; ++j) st.sums[j] = 0;
  for (int p = 0; p < splits; ++p) {
    const int64_t i = row * splits + p;
    acc_t other[kMaxExponents];
#pragma unroll
    for (int j = 0; j < kMaxExponents; ++j) other[j] = j < qs.count ? part_sums[j * stride + i] : 0;
    const acc_t s = part_scale[i];
    st.merge(s, other, part_count[i], s != s, qs);
  }
  const acc_t nan = acc_t(0) / acc_t(0);
  for (int j = 0; j < qs.count; ++j) sums[j * rows + row] = st.nan ? nan : st.sums[j];
  scale[row] = st.nan ? nan : st.scale;
  count[row] = st.count;
}

template <typename scalar_t>
cudaError_t launch_row_powsum(const void* x, const bool* mask, int64_t rows, int64_t n,
                              const ExponentList& list, int splits, void* part_sums,
                              void* part_scale, int64_t* part_count, void* sums, void* scale,
                              int64_t* count, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  Exponents<acc_t> qs;
  qs.count = list.count;
  for (int j = 0; j < kMaxExponents; ++j) {
    qs.value[j] = j < list.count ? static_cast<acc_t>(list.value[j]) : acc_t(1);
    qs.kind[j] = j < list.count ? exponent_kind(list.value[j]) : kOne;
  }
  if (rows == 0) return cudaSuccess;
  const bool direct = splits == 1;
  row_powsum_kernel<scalar_t, acc_t><<<rows * splits, kThreads, 0, stream>>>(
      static_cast<const scalar_t*>(x), mask, rows, n, qs, splits,
      static_cast<acc_t*>(direct ? sums : part_sums), static_cast<acc_t*>(direct ? scale : part_scale),
      direct ? count : part_count);
  if (!direct) {
    merge_parts_kernel<acc_t><<<(rows + 127) / 128, 128, 0, stream>>>(
        rows, qs, splits, static_cast<const acc_t*>(part_sums), static_cast<const acc_t*>(part_scale),
        part_count, static_cast<acc_t*>(sums), static_cast<acc_t*>(scale), count);
  }
  return cudaGetLastError();
}

// One block per row of magnitudes sorted ascending, pruned entries negative and first:
// gini = 1 - 2 sum_pos c_pos (n - pos - 1/2) / (d sum c), on c / max, summed in double (a whole
// tensor's weighted sum in float32 drifts past 1e-5).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
row_gini_kernel(const scalar_t* __restrict__ sorted, int64_t n, acc_t* __restrict__ out) {
  const scalar_t* sr = sorted + blockIdx.x * n;
  const double largest = n > 0 ? to_acc(sr[n - 1]) : 0.0;  // NaN sorts last
  const bool inf_max = isinf(largest);
  const double inv = largest > 0 ? 1.0 / largest : 0.0;
  double total = 0, weighted = 0, survivors = 0;
  for (int64_t pos = threadIdx.x; pos < n; pos += kThreads) {
    const double v = to_acc(sr[pos]);
    if (!(v >= 0)) continue;  // pruned
    const double c = inf_max ? (isinf(v) ? 1.0 : 0.0) : v * inv;
    total += c;
    weighted += c * (double(n - pos) - 0.5);
    survivors += 1;
  }
  __shared__ double sh[3][kThreads];
  sh[0][threadIdx.x] = total;
  sh[1][threadIdx.x] = weighted;
  sh[2][threadIdx.x] = survivors;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width)
      for (int k = 0; k < 3; ++k) sh[k][threadIdx.x] += sh[k][threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    total = sh[0][0];
    weighted = sh[1][0];
    survivors = sh[2][0];
    out[blockIdx.x] = static_cast<acc_t>(largest != largest ? largest
                      : total > 0 ? 1.0 - 2.0 * weighted / (survivors * total) : 0.0);
  }
}

template <typename scalar_t>
cudaError_t launch_row_gini(const void* sorted, int64_t rows, int64_t n, void* out,
                            cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  if (rows == 0) return cudaSuccess;
  row_gini_kernel<scalar_t, acc_t><<<rows, kThreads, 0, stream>>>(
      static_cast<const scalar_t*>(sorted), n, static_cast<acc_t*>(out));
  return cudaGetLastError();
}

template <typename T> struct PowSumLaunch {
  template <typename... A> static cudaError_t run(A... a) { return launch_row_powsum<T>(a...); }
};
template <typename T> struct GiniLaunch {
  template <typename... A> static cudaError_t run(A... a) { return launch_row_gini<T>(a...); }
};

}  // namespace

int row_powsum_splits(int64_t rows, int64_t n, int num_sms) {
  if (rows <= 0) return 1;
  const int64_t want = (2 * int64_t(num_sms) + rows - 1) / rows;
  const int64_t most = (n + 16383) / 16384;
  return static_cast<int>(want < most ? (want > 1 ? want : 1) : (most > 1 ? most : 1));
}

cudaError_t row_powsum(DType dtype, const void* x, const bool* mask, int64_t rows, int64_t n,
                       const ExponentList& qs, int splits, void* part_sums, void* part_scale,
                       int64_t* part_count, void* sums, void* scale, int64_t* count,
                       cudaStream_t stream) {
  return dispatch<PowSumLaunch>(dtype, x, mask, rows, n, qs, splits, part_sums, part_scale,
                                part_count, sums, scale, count, stream);
}

cudaError_t row_gini_sorted(DType dtype, const void* sorted, int64_t rows, int64_t n, void* out,
                            cudaStream_t stream) {
  return dispatch<GiniLaunch>(dtype, sorted, rows, n, out, stream);
}

}  // namespace lqk::cuda
