// C++ CPU kernels of the per-slice measures: lqkernels::row_powsum and lqkernels::row_gini.
// Both work on a (R, N) row view prepared by lqkernels/ops.py; see measures_common.h for the
// statistics they return.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/simd.h"
#include "measures_common.h"

namespace lqk::CPU_CAPABILITY {
namespace {

// ---------------------------------------------------------------------------------------------
// Vectorisable log2 / exp2 for float ratios r in [0, 1]. glibc's logf/expf do not vectorise
// without -ffast-math (which would also drop NaN handling); these do, inside `omp simd` loops,
// and are accurate to a few ulp, far below the 1e-5 relative error the measures promise.

inline float log2_ratio(float r) {
  // Subnormal ratios still matter for small q ((1e-40)^0.1 = 1e-4): renormalise them first.
  const bool tiny = r < std::numeric_limits<float>::min();
  const float x = tiny ? r * 16777216.0f : r;  // * 2^24
  const int32_t bits = std::bit_cast<int32_t>(x);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f800000);  // mantissa in [1, 2)
  const bool high = m > 1.41421356f;
  m = high ? m * 0.5f : m;
  e = high ? e + 1 : e;
  // ln m = 2 atanh(t), t = (m - 1) / (m + 1), |t| <= 0.172: five odd terms reach 3e-10.
  const float t = (m - 1.0f) / (m + 1.0f);
  const float t2 = t * t;
  const float ln_m =
      2.0f * t * (1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9)))));
  return static_cast<float>(e) - (tiny ? 24.0f : 0.0f) + ln_m * 1.44269504f;
}

inline float exp2_nonpositive(float y) {
  // y = q log2 r <= 0. Below -190 the result is under half the smallest subnormal: 0.
  y = y < -190.0f ? -190.0f : y;
  // y rounded to the nearest integer (ties to even, as nearbyint): adding and subtracting 1.5 * 2^23
  // leaves no fraction bits. Plain adds vectorise with SSE2; nearbyint needs SSE4.1's roundps, and
  // GCC left this loop scalar without AVX.
  const float n = (y + 12582912.0f) - 12582912.0f;
  const float f = (n - y) * -0.693147181f;  // (y - n) ln 2, in [-0.347, 0.347]
  // e^f by its Taylor series to f^7 / 7! (error < 2e-8).
  const float p =
      1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 +
      f * (1.0f / 720 + f * (1.0f / 5040)))))));
  // 2^n for n in [-190, 0], in two exact steps so subnormal results come out right.
  const float two_n_plus_64 = std::bit_cast<float>((static_cast<int32_t>(n) + 64 + 127) << 23);
  return p * two_n_plus_64 * 5.42101086e-20f;  // * 2^-64
}

template <typename acc_t>
struct Exponents {
  int count = 0;
  acc_t value[kMaxExponents];
  int kind[kMaxExponents];
  bool any_general = false;
};

template <typename acc_t>
struct PowSumState {
  acc_t scale = 0;
  acc_t sums[kMaxExponents] = {};
  int64_t count = 0;

  void raise_scale(acc_t new_scale, const Exponents<acc_t>& qs) {
    for (int j = 0; j < qs.count; ++j) sums[j] *= rescale_factor(scale, new_scale, qs.value[j]);
    scale = new_scale;
  }
  void merge(const PowSumState& other, const Exponents<acc_t>& qs) {
    if (std::isnan(other.scale) || std::isnan(scale)) {
      scale = std::numeric_limits<acc_t>::quiet_NaN();
      for (int j = 0; j < qs.count; ++j) sums[j] = scale;
    } else {
      const acc_t s = std::max(scale, other.scale);
      for (int j = 0; j < qs.count; ++j)
        sums[j] = sums[j] * rescale_factor(scale, s, qs.value[j]) +
                  other.sums[j] * rescale_factor(other.scale, s, qs.value[j]);
      scale = s;
    }
    count += other.count;
  }
};

// Reductions over a chunk keep kLanes independent partial results: one accumulator would make
// every vector add wait for the previous one (no -ffast-math to let the compiler reassociate).
constexpr int kLanes = 32;

template <typename acc_t, typename Term>
inline acc_t lane_sum(int n, Term term) {
  acc_t part[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) part[k] += term(i + k);
  }
  for (; i < n; ++i) part[0] += term(i);
  acc_t s = 0;
  for (int k = 0; k < kLanes; ++k) s += part[k];
  return s;
}

// Calls body(i, lane) for i in [begin, end), lane = (i - begin) % kLanes: full blocks of kLanes
// first (a constant trip count, so lane accumulators vectorise and stay in registers), then the
// tail.
template <typename Body>
inline void for_lanes(int64_t begin, int64_t end, Body body) {
  int64_t i0 = begin;
  for (; i0 + kLanes <= end; i0 += kLanes) {
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) body(i0 + k, k);
  }
  for (int k = 0; i0 < end; ++i0, ++k) body(i0, k);
}

// Sum over a chunk of (a * inv)^q, with log2(a * inv) precomputed where a general exponent needs it.
template <typename acc_t>
acc_t chunk_power_sum(const acc_t* a, acc_t inv, const acc_t* log2r, int n, acc_t q, int kind) {
  switch (kind) {
    case kOne: return lane_sum<acc_t>(n, [&](int i) { return a[i] * inv; });
    case kTwo: return lane_sum<acc_t>(n, [&](int i) { return (a[i] * inv) * (a[i] * inv); });
    case kHalf: return lane_sum<acc_t>(n, [&](int i) { return std::sqrt(a[i] * inv); });
    default:
      if constexpr (std::is_same_v<acc_t, float>) {
        return lane_sum<acc_t>(n, [&](int i) { return a[i] > 0 ? exp2_nonpositive(q * log2r[i]) : 0.0f; });
      } else {
        return lane_sum<acc_t>(n, [&](int i) { return a[i] > 0 ? std::exp2(q * log2r[i]) : acc_t(0); });
      }
  }
}

constexpr int kChunk = 512;

// Accumulates elements [begin, end) of one row into `state`: per chunk, one pass loads the
// magnitudes (into L1) and their maximum, then one pass per exponent sums them relative to the
// running maximum.
template <typename scalar_t, typename acc_t>
void accumulate_row(const scalar_t* x, const bool* mask, int64_t begin, int64_t end,
                    const Exponents<acc_t>& qs, PowSumState<acc_t>& state) {
  acc_t a[kChunk], log2r[kChunk];
  for (int64_t start = begin; start < end; start += kChunk) {
    const int n = static_cast<int>(std::min<int64_t>(kChunk, end - start));
    // Magnitudes into L1, their maximum, and a probe that is NaN exactly when some |x| is NaN or
    // inf (v - v), all with kLanes independent lanes.
    acc_t lane_max[kLanes] = {}, lane_probe[kLanes] = {};
    int64_t lane_survivors[kLanes] = {};
    for_lanes(0, n, [&](int64_t i, int k) {
      const acc_t v = std::abs(static_cast<acc_t>(x[start + i]));
      const acc_t m = mask ? (mask[start + i] ? v : acc_t(0)) : v;
      a[i] = m;
      if (mask) lane_survivors[k] += mask[start + i];
      lane_max[k] = lane_max[k] > m ? lane_max[k] : m;
      lane_probe[k] += m - m;
    });
    int64_t survivors = 0;
    for (int k = 0; k < kLanes; ++k) survivors += lane_survivors[k];
    state.count += mask ? survivors : n;
    acc_t chunk_max = 0, probe = 0;
    for (int k = 0; k < kLanes; ++k) {
      chunk_max = std::max(chunk_max, lane_max[k]);
      probe += lane_probe[k];
    }
    if (probe != 0) {
      int64_t infinite = 0;
      for (int i = 0; i < n; ++i) {
        if (std::isnan(a[i])) {  // NaN propagates to every statistic of the row, as in vector_norm
          state.scale = a[i];
          for (int j = 0; j < qs.count; ++j) state.sums[j] = a[i];
          for (int64_t k = start + n; k < end; ++k) state.count += mask ? mask[k] : 1;
          return;
        }
        infinite += std::isinf(a[i]);
      }
      // The limit as the infinite entries grow: each counts (inf/inf)^q = 1, finite ones 0.
      state.raise_scale(std::numeric_limits<acc_t>::infinity(), qs);
      for (int j = 0; j < qs.count; ++j) state.sums[j] += static_cast<acc_t>(infinite);
      continue;
    }
    if (chunk_max > state.scale) state.raise_scale(chunk_max, qs);
    if (state.scale == 0 || std::isinf(state.scale)) continue;  // all zero, or finite after inf
    acc_t inv = acc_t(1) / state.scale;
    if (std::isinf(inv)) {  // a subnormal maximum: lift the chunk into the normal range first
      const acc_t lift = sizeof(acc_t) == sizeof(float) ? acc_t(0x1p64) : acc_t(0x1p128);
      for (int i = 0; i < n; ++i) a[i] *= lift;
      inv = acc_t(1) / (state.scale * lift);
    }
    if (qs.any_general) {
      if constexpr (std::is_same_v<acc_t, float>) {
#pragma omp simd
        for (int i = 0; i < n; ++i) log2r[i] = log2_ratio(a[i] * inv);
      } else {
        for (int i = 0; i < n; ++i) log2r[i] = std::log2(a[i] * inv);
      }
    }
    for (int j = 0; j < qs.count; ++j)
      state.sums[j] += chunk_power_sum(a, inv, log2r, n, qs.value[j], qs.kind[j]);
  }
}

// The common exponents (1, 2, 1/2) in one pass without rescaling: per-lane running max and
// plain sums of |x|^q, converted to sums relative to the max at the end. Valid when the max lies
// in [2^-40, 2^40] (no term can overflow, and terms lost to underflow are below 2^-46 of the
// largest) and no entry is NaN or inf (which would make a sum NaN or inf); otherwise returns
// false and the caller rescales.
template <bool kMasked, bool kWithOne, bool kWithTwo, bool kWithHalf, typename scalar_t, typename acc_t>
bool accumulate_direct(const scalar_t* __restrict x, const bool* __restrict mask, int64_t begin,
                       int64_t end, const Exponents<acc_t>& qs, PowSumState<acc_t>& state) {
  acc_t s1[kLanes] = {}, s2[kLanes] = {}, sh[kLanes] = {}, mx[kLanes] = {};
  int32_t lane_survivors[kLanes] = {};  // 32-bit lanes keep the loop at the floats' vector width
  // The mask block is copied to a local array first: a bool pointer may alias the lane arrays,
  // and the compiler would otherwise fall back to scalar code.
  auto lanes = [&](int64_t i0, int width) {
    prefetch(x + i0);
    uint8_t keep[kLanes];
    if constexpr (kMasked) std::memcpy(keep, mask + i0, width);
#pragma omp simd
    for (int k = 0; k < width; ++k) {
      acc_t v = std::abs(static_cast<acc_t>(x[i0 + k]));
      if constexpr (kMasked) {
        v = keep[k] ? v : acc_t(0);
        lane_survivors[k] += keep[k];
      }
      mx[k] = mx[k] > v ? mx[k] : v;
      if constexpr (kWithOne) s1[k] += v;
      if constexpr (kWithTwo) s2[k] += v * v;
      if constexpr (kWithHalf) sh[k] += std::sqrt(v);
    }
  };
  int64_t i0 = begin;
  for (; i0 + kLanes <= end; i0 += kLanes) lanes(i0, kLanes);
  if (i0 < end) lanes(i0, static_cast<int>(end - i0));
  int64_t survivors = 0;
  for (int k = 0; k < kLanes; ++k) survivors += lane_survivors[k];
  // Rows are short (a 4096-wide row is ~1000 cycles of memory time), so the lane reductions are
  // vectorised too and only the sums in use are formed.
  acc_t sum1 = 0, sum2 = 0, sumh = 0, largest = 0;
#pragma omp simd reduction(+ : sum1, sum2, sumh) reduction(max : largest)
  for (int k = 0; k < kLanes; ++k) {
    if constexpr (kWithOne) sum1 += s1[k];
    if constexpr (kWithTwo) sum2 += s2[k];
    if constexpr (kWithHalf) sumh += sh[k];
    largest = largest > mx[k] ? largest : mx[k];
  }
  const bool finite = std::isfinite(sum1) && std::isfinite(sum2) && std::isfinite(sumh);
  if (!finite || largest > acc_t(0x1p40) || (largest > 0 && largest < acc_t(0x1p-40))) return false;
  state.count = kMasked ? survivors : end - begin;
  state.scale = largest;
  const acc_t inv = largest > 0 ? acc_t(1) / largest : acc_t(0);  // largest >= 2^-40: finite
  for (int j = 0; j < qs.count; ++j)
    state.sums[j] = qs.kind[j] == kOne ? sum1 * inv : qs.kind[j] == kTwo ? (sum2 * inv) * inv : sumh * std::sqrt(inv);
  return true;
}

// State of elements [begin, end) of one row: the one-pass direct sums where they apply, else
// the rescaling pass.
template <typename scalar_t, typename acc_t>
PowSumState<acc_t> row_state(const scalar_t* x, const bool* mask, int64_t begin, int64_t end,
                             const Exponents<acc_t>& qs, int kinds) {
  using Direct = bool (*)(const scalar_t*, const bool*, int64_t, int64_t, const Exponents<acc_t>&,
                          PowSumState<acc_t>&);
  // Indexed by [masked][kinds], kinds a bit set of {1: one, 2: two, 4: half}. No exponents (the
  // survivor counts alone) takes the ℓ1 pass: its sum exposes NaN and inf entries like the others.
  static constexpr Direct direct[2][8] = {
      {accumulate_direct<false, true, false, false, scalar_t, acc_t>, accumulate_direct<false, true, false, false, scalar_t, acc_t>,
       accumulate_direct<false, false, true, false, scalar_t, acc_t>, accumulate_direct<false, true, true, false, scalar_t, acc_t>,
       accumulate_direct<false, false, false, true, scalar_t, acc_t>, accumulate_direct<false, true, false, true, scalar_t, acc_t>,
       accumulate_direct<false, false, true, true, scalar_t, acc_t>, accumulate_direct<false, true, true, true, scalar_t, acc_t>},
      {accumulate_direct<true, true, false, false, scalar_t, acc_t>, accumulate_direct<true, true, false, false, scalar_t, acc_t>,
       accumulate_direct<true, false, true, false, scalar_t, acc_t>, accumulate_direct<true, true, true, false, scalar_t, acc_t>,
       accumulate_direct<true, false, false, true, scalar_t, acc_t>, accumulate_direct<true, true, false, true, scalar_t, acc_t>,
       accumulate_direct<true, false, true, true, scalar_t, acc_t>, accumulate_direct<true, true, true, true, scalar_t, acc_t>}};
  PowSumState<acc_t> state;
  const Direct fast = kinds >= 0 ? direct[mask != nullptr][kinds] : nullptr;
  if (fast && fast(x, mask, begin, end, qs, state)) return state;
  state = PowSumState<acc_t>();
  accumulate_row(x, mask, begin, end, qs, state);
  return state;
}

void check_rows(const at::Tensor& x, const std::optional<at::Tensor>& mask, const char* op) {
  TORCH_CHECK(x.dim() == 2, op, ": expects a (rows, n) tensor, got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ",
              x.scalar_type());
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, op, ": mask must be bool, got ",
                mask->scalar_type());
    TORCH_CHECK(mask->sizes() == x.sizes(), op, ": mask shape ", mask->sizes(),
                " does not match x shape ", x.sizes());
    TORCH_CHECK(mask->device() == x.device(), op, ": mask is on ", mask->device(),
                " but x is on ", x.device());
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_powsum(
    const at::Tensor& x_in, const std::optional<at::Tensor>& mask_in, at::ArrayRef<double> qs_in) {
  check_rows(x_in, mask_in, "row_powsum");
  TORCH_CHECK(qs_in.size() <= static_cast<size_t>(kMaxExponents),
              "row_powsum: at most ", kMaxExponents, " exponents per pass, got ", qs_in.size());
  for (double q : qs_in)
    TORCH_CHECK(q > 0 && std::isfinite(q), "row_powsum: exponents must be finite and > 0, got ", q);
  const at::Tensor x = x_in.contiguous();
  const std::optional<at::Tensor> mask =
      mask_in ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  const int64_t rows = x.size(0), n = x.size(1);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto fopts = x.options().dtype(acc_type);
  at::Tensor sums = at::empty({static_cast<int64_t>(qs_in.size()), rows}, fopts);
  at::Tensor scale = at::empty({rows}, fopts);
  at::Tensor count = at::empty({rows}, x.options().dtype(at::kLong));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "row_powsum_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    Exponents<acc_t> qs;
    qs.count = static_cast<int>(qs_in.size());
    for (int j = 0; j < qs.count; ++j) {
      qs.value[j] = static_cast<acc_t>(qs_in[j]);
      qs.kind[j] = exponent_kind(qs_in[j]);
      qs.any_general |= qs.kind[j] == kGeneral;
    }
    // Bit set of the special exponents for the one-pass path; -1 if any exponent is general.
    int kinds = 0;
    for (int j = 0; j < qs.count; ++j)
      kinds = qs.kind[j] == kGeneral || kinds < 0 ? -1 : kinds | (qs.kind[j] == kOne ? 1 : qs.kind[j] == kTwo ? 2 : 4);
    // Few long rows (a whole tensor reduced at once) are split so every thread has work.
    const int64_t threads = at::get_num_threads();
    const int64_t splits =
        rows == 0 || rows >= threads ? 1 : std::max<int64_t>(1, std::min((threads + rows - 1) / rows, n / 65536));
    const int64_t span = (n + splits - 1) / std::max<int64_t>(splits, 1);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const bool* mp = mask ? mask->const_data_ptr<bool>() : nullptr;
    acc_t* sp = sums.data_ptr<acc_t>();
    acc_t* scp = scale.data_ptr<acc_t>();
    int64_t* cp = count.data_ptr<int64_t>();
    auto store = [&](int64_t row, const PowSumState<acc_t>& s) {
      for (int j = 0; j < qs.count; ++j) sp[j * rows + row] = s.sums[j];
      scp[row] = s.scale;
      cp[row] = s.count;
    };
    if (splits == 1) {  // whole rows: each task stores its own (a serial pass over many short rows
                        // cost as much as the parallel one)
      at::parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t row = lo; row < hi; ++row)
          store(row, row_state(xp + row * n, mp ? mp + row * n : nullptr, 0, n, qs, kinds));
      });
      return;
    }
    std::vector<PowSumState<acc_t>> parts(rows * splits);
    at::parallel_for(0, rows * splits, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t task = lo; task < hi; ++task) {
        const int64_t row = task / splits, part = task % splits;
        const int64_t begin = std::min(n, part * span), end = std::min(n, begin + span);
        parts[task] = row_state(xp + row * n, mp ? mp + row * n : nullptr, begin, end, qs, kinds);
      }
    });
    for (int64_t row = 0; row < rows; ++row) {
      PowSumState<acc_t>& s = parts[row * splits];
      for (int64_t part = 1; part < splits; ++part) s.merge(parts[row * splits + part], qs);
      store(row, s);
    }
  });
  return {sums, count, scale};
}

namespace {

// Gini index of magnitudes sorted ascending, c_1..c_d: 1 - 2 sum_k (c_k / ||c||_1) (d - k + 1/2) / d,
// summed in double; 0 for an empty or all-zero slice.
template <typename T>
double gini_of_sorted(const T* c, int64_t d) {
  double total = 0, weighted = 0;
  for (int64_t k = 0; k < d; ++k) {
    total += c[k];
    weighted += c[k] * (static_cast<double>(d - k) - 0.5);
  }
  return total > 0 ? 1.0 - 2.0 * weighted / (static_cast<double>(d) * total) : 0.0;
}

// Gini index of magnitudes c (reordered in place): NaN if any is NaN; with infinite entries, the
// limit in which they dominate equally.
double gini_of_magnitudes(std::vector<double>& c) {
  double largest = 0;
  for (double v : c) {
    if (std::isnan(v)) return v;
    largest = std::max(largest, v);
  }
  if (std::isinf(largest))
    for (double& v : c) v = std::isinf(v) ? 1.0 : 0.0;
  std::sort(c.begin(), c.end());
  return gini_of_sorted(c.data(), static_cast<int64_t>(c.size()));
}

// Sorts the bit patterns of non-negative floats, which order as the floats do: an LSD radix sort
// over three 11-bit digits (a whole-tensor Gini sorts millions of keys: 6x faster than std::sort of
// doubles), skipping a digit all keys share. `counts` holds 3 * 2048 entries. Returns whichever of
// keys / scratch holds the result.
constexpr int kDigitBits = 11;
constexpr int64_t kDigitBins = int64_t{1} << kDigitBits;

uint32_t* radix_sort_keys(uint32_t* keys, uint32_t* scratch, int64_t n, int64_t* counts) {
  std::fill(counts, counts + 3 * kDigitBins, int64_t{0});
  for (int64_t i = 0; i < n; ++i)
    for (int digit = 0; digit < 3; ++digit) ++counts[digit * kDigitBins + ((keys[i] >> (digit * kDigitBits)) & (kDigitBins - 1))];
  for (int digit = 0; digit < 3; ++digit) {
    int64_t* bins = counts + digit * kDigitBins;
    const int shift = digit * kDigitBits;
    if (bins[(keys[0] >> shift) & (kDigitBins - 1)] == n) continue;
    for (int64_t bin = 0, start = 0; bin < kDigitBins; ++bin) std::swap(bins[bin], start), start += bins[bin];
    for (int64_t i = 0; i < n; ++i) scratch[bins[(keys[i] >> shift) & (kDigitBins - 1)]++] = keys[i];
    std::swap(keys, scratch);
  }
  return keys;
}

// Rows with fewer keys sort them with std::sort: the radix sort's 3 x 2048 bins cost more there
// (measured crossover near 100 keys; 16M keys in rows of 128-4096: 2.2-8x faster by radix).
constexpr int64_t kRadixMinKeys = 128;

// Gini of one row's survivors for float, half and bfloat16 x (their magnitudes are exact floats).
template <typename scalar_t>
double gini_of_float_row(const scalar_t* x, const bool* mask, int64_t n, std::vector<uint32_t>& keys,
                         std::vector<uint32_t>& scratch, std::vector<int64_t>& counts) {
  keys.clear();
  uint32_t largest = 0;
  for (int64_t i = 0; i < n; ++i)
    if (!mask || mask[i]) {
      const uint32_t key = std::bit_cast<uint32_t>(std::abs(static_cast<float>(x[i])));
      keys.push_back(key);
      largest = std::max(largest, key);
    }
  const int64_t d = static_cast<int64_t>(keys.size());
  constexpr uint32_t kInfinity = 0x7f800000u;  // keys above it are NaN
  if (largest >= kInfinity) {
    if (largest > kInfinity) return std::numeric_limits<double>::quiet_NaN();
    std::vector<double> c(keys.size());
    for (int64_t k = 0; k < d; ++k) c[k] = std::bit_cast<float>(keys[k]);
    return gini_of_magnitudes(c);
  }
  const uint32_t* sorted = keys.data();
  if (d < kRadixMinKeys) {
    std::sort(keys.begin(), keys.end());
  } else {
    scratch.resize(keys.size());
    counts.resize(3 * kDigitBins);
    sorted = radix_sort_keys(keys.data(), scratch.data(), d, counts.data());
  }
  return gini_of_sorted(reinterpret_cast<const float*>(sorted), d);
}

template <typename scalar_t>
void row_gini_kernel(const scalar_t* xp, const bool* mp, int64_t rows, int64_t n, at::Tensor& out) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  acc_t* op = out.data_ptr<acc_t>();
  at::parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
    std::vector<double> c;
    std::vector<uint32_t> keys, scratch;
    std::vector<int64_t> counts;
    for (int64_t row = lo; row < hi; ++row) {
      const scalar_t* x = xp + row * n;
      const bool* mask = mp ? mp + row * n : nullptr;
      if constexpr (std::is_same_v<scalar_t, double>) {
        c.clear();
        for (int64_t i = 0; i < n; ++i)
          if (!mask || mask[i]) c.push_back(std::abs(x[i]));
        op[row] = gini_of_magnitudes(c);
      } else {
        op[row] = static_cast<acc_t>(gini_of_float_row(x, mask, n, keys, scratch, counts));
      }
    }
  });
}

}  // namespace

// Gini index of each row's survivors (Hurley & Rickard): sort |x| ascending as c_1..c_d, then
// 1 - 2 sum_k (c_k / ||c||_1) (d - k + 1/2) / d, summed in double.
at::Tensor row_gini(const at::Tensor& x_in, const std::optional<at::Tensor>& mask_in) {
  check_rows(x_in, mask_in, "row_gini");
  const at::Tensor x = x_in.contiguous();
  const std::optional<at::Tensor> mask =
      mask_in ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  const int64_t rows = x.size(0), n = x.size(1);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({rows}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "row_gini_cpu", [&] {
    row_gini_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), mask ? mask->const_data_ptr<bool>() : nullptr,
                              rows, n, out);
  });
  return out;
}

}  // namespace lqk::CPU_CAPABILITY
