// C++ CPU kernels of selection: lqkernels::row_topk_mask (a different k per row) and
// lqkernels::global_topk_masks (one exact k over many tensors, without concatenating them).
// Both rank scores by order keys (selection_common.h) and find the k-th key by radix selection;
// ties at the boundary go to the lowest index (for global: tensor order, then flat index).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/simd.h"
#include "selection_checks.h"
#include "selection_common.h"

namespace lqk::CPU_CAPABILITY {
namespace {

template <typename scalar_t>
using AccOf = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The boundary of a selection: every key above `kth` is selected, and the first `take` keys equal
// to it (in index order).
template <typename Key>
struct Boundary {
  Key kth = 0;
  int64_t take = 0;
};

constexpr int kRowDigitBits = 11;
constexpr int kRowDigits = 1 << kRowDigitBits;
// Histogram increments to the same bin form a chain through memory; weights cluster in a few
// exponents, so the first pass counts into kWays interleaved histograms and adds them up.
constexpr int kWays = 4;

// Bits of the digit a pass over `count` keys ranks by: clearing and summing the histogram costs
// 2^bits (kWays times in the first pass), which for a row of a few thousand keys outweighs the
// keys themselves at 11 bits, so rows up to 16K keys use 8-bit digits and one pass more.
inline int digit_bits(int64_t count) { return count <= (int64_t(1) << 14) ? 8 : kRowDigitBits; }

// Masks as bytes: GCC leaves loops over bool loads scalar (perf showed the masked loops here were),
// while uint8 lanes widen and add cleanly. torch's bool tensors hold 0 or 1 in each byte.
inline const uint8_t* mask_bytes(const bool* mask) { return reinterpret_cast<const uint8_t*>(mask); }

#if defined(LQK_LANES_AVX512) || defined(LQK_LANES_AVX2)
#define LQK_KEY_LANES 1
#endif

// The compactions below keep keys in order without a branch per key. With vector lanes a 32-bit
// key vector is compacted in a register and stored whole (KeyLanes::compress_store), so `dst` needs
// 16 keys of room past the kept ones; dst may be src (in place: each store lands at or before the
// keys it came from, all already loaded).

// dst = src[i] where ((src[i] >> shift) & low) == digit; returns how many.
template <typename Key>
int64_t keep_digit(const Key* src, int64_t n, int shift, Key low, Key digit, Key* dst) {
  int64_t kept = 0, i = 0;
#if defined(LQK_KEY_LANES)
  if constexpr (sizeof(Key) == 4) {
    using L = KeyLanes;
    const L::Vec lows = L::splat(low), want = L::splat(digit);
    for (; i + L::kWidth <= n; i += L::kWidth) {
      const L::Vec v = L::load(src + i);
      const L::Mask hit = L::digit_equal(v, shift, lows, want);
      L::compress_store(dst + kept, hit, v);
      kept += std::popcount(L::bits(hit));
    }
  }
#endif
  for (; i < n; ++i) {
    const Key key = src[i];
    dst[kept] = key;
    kept += ((key >> shift) & low) == digit;
  }
  return kept;
}

// dst = keys[i] where mask[i]; returns how many.
template <typename Key>
int64_t keep_masked(const Key* keys, const bool* mask, int64_t n, Key* dst) {
  const uint8_t* m = mask_bytes(mask);
  int64_t kept = 0, i = 0;
#if defined(LQK_KEY_LANES)
  if constexpr (sizeof(Key) == 4) {
    using L = KeyLanes;
    for (; i + L::kWidth <= n; i += L::kWidth) {
      const L::Mask hit = L::from_bytes(m + i);
      L::compress_store(dst + kept, hit, L::load(keys + i));
      kept += std::popcount(L::bits(hit));
    }
  }
#endif
  for (; i < n; ++i) {
    dst[kept] = keys[i];
    kept += m[i];
  }
  return kept;
}

// Radix selection of the k-th largest candidate key (1 <= k <= candidates). The first pass
// histograms all of `keys`; later passes see only the keys in `scratch` (size >= n + 16, see
// keep_digit) that share the prefix selected so far.
template <typename Key>
Boundary<Key> radix_select(const Key* keys, int64_t n, int64_t k, Key* scratch) {
  constexpr int key_bits = sizeof(Key) * 8;
  int32_t ways[kWays][kRowDigits];
  int64_t histogram[kRowDigits];
  Boundary<Key> b;
  b.take = k;
  const int first = digit_bits(n), first_digits = 1 << first;
  for (auto& way : ways) std::fill(way, way + first_digits, 0);
  int shift = key_bits - first;
  int64_t i = 0;
  for (; i + kWays <= n; i += kWays)
    for (int w = 0; w < kWays; ++w) ++ways[w][keys[i + w] >> shift];
  for (; i < n; ++i) ++ways[0][keys[i] >> shift];
  for (int d = 0; d < first_digits; ++d) {
    histogram[d] = 0;
    for (int w = 0; w < kWays; ++w) histogram[d] += ways[w][d];
  }
  Key digit = static_cast<Key>(select_digit<int64_t>(histogram, first_digits, b.take));
  b.kth = digit << shift;
  int64_t kept = keep_digit(keys, n, shift, static_cast<Key>(first_digits - 1), digit, scratch);
  while (shift > 0) {
    const int bits = std::min(digit_bits(kept), shift);
    shift -= bits;
    const Key low = (Key(1) << bits) - 1;
    std::fill(histogram, histogram + (int64_t(1) << bits), 0);
    for (int64_t j = 0; j < kept; ++j) ++histogram[(scratch[j] >> shift) & low];
    digit = static_cast<Key>(select_digit<int64_t>(histogram, 1 << bits, b.take));
    b.kth |= digit << shift;
    kept = keep_digit(scratch, kept, shift, low, digit, scratch);
  }
  return b;
}

// Order keys of n scores (see selection_common.h).
template <typename scalar_t, bool kMagnitude, bool kLargest>
void compute_keys(const scalar_t* __restrict x, int64_t n,
                  typename KeyOf<AccOf<scalar_t>>::type* __restrict keys) {
  using acc_t = AccOf<scalar_t>;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i)
    keys[i] = order_key<acc_t>(static_cast<acc_t>(x[i]), kMagnitude, kLargest);
}

// (candidates, NaN candidates) among n scores.
template <typename scalar_t>
std::pair<int64_t, int64_t> count_candidates(const scalar_t* __restrict x, const bool* __restrict mask,
                                             int64_t n) {
  using acc_t = AccOf<scalar_t>;
  int64_t nans = 0, count = n;
  if (mask) {
    const uint8_t* __restrict m = mask_bytes(mask);
    count = 0;
#pragma omp simd reduction(+ : nans, count)
    for (int64_t i = 0; i < n; ++i) {
      const acc_t v = static_cast<acc_t>(x[i]);
      const int64_t keep = m[i];
      nans += v != v ? keep : 0;
      count += keep;
    }
  } else {
#pragma omp simd reduction(+ : nans)
    for (int64_t i = 0; i < n; ++i) {
      const acc_t v = static_cast<acc_t>(x[i]);
      nans += v != v;
    }
  }
  return {count, nans};
}

// Marks candidates ranked above the boundary; returns how many candidates sit on it.
template <typename Key>
int64_t mark_above(const Key* __restrict keys, const bool* __restrict mask, int64_t n, Key kth,
                   bool* __restrict out) {
  int64_t ties = 0;
  if (mask) {
    const uint8_t* __restrict m = mask_bytes(mask);
    uint8_t* __restrict o = reinterpret_cast<uint8_t*>(out);
#pragma omp simd reduction(+ : ties)
    for (int64_t i = 0; i < n; ++i) {
      o[i] = static_cast<uint8_t>(keys[i] > kth) & m[i];
      ties += keys[i] == kth ? int64_t(m[i]) : 0;
    }
  } else {
#pragma omp simd reduction(+ : ties)
    for (int64_t i = 0; i < n; ++i) {
      out[i] = keys[i] > kth;
      ties += keys[i] == kth;
    }
  }
  return ties;
}

// Marks the first `take` candidates on the boundary (in index order).
template <typename Key>
void mark_ties(const Key* keys, const bool* mask, int64_t n, Key kth, int64_t take, bool* out) {
  int64_t i = 0;
#if defined(LQK_KEY_LANES)
  if constexpr (sizeof(Key) == 4) {  // a vector of keys a compare: the boundary is often far into the row
    using L = KeyLanes;
    const L::Vec boundary = L::splat(kth);
    for (; i + L::kWidth <= n && take > 0; i += L::kWidth) {
      unsigned hit = L::bits(L::equal(L::load(keys + i), boundary));
      if (mask) hit &= L::bits(L::from_bytes(mask_bytes(mask) + i));
      for (; hit && take > 0; hit &= hit - 1, --take) out[i + std::countr_zero(hit)] = true;
    }
  }
#endif
  for (; i < n && take > 0; ++i) {
    if (keys[i] == kth && (!mask || mask[i])) {
      out[i] = true;
      --take;
    }
  }
}

// Rows up to this long are selected by counting, for each candidate, the candidates ranked above
// it (n^2 compares beat clearing a histogram for an N:M group of 4).
constexpr int64_t kSmallRow = 32;

template <typename Key>
void select_by_rank(const Key* keys, const bool* mask, int64_t n, int64_t k, bool* out) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t above = 0;
    for (int64_t j = 0; j < n; ++j)
      above += (!mask || mask[j]) && (keys[j] > keys[i] || (keys[j] == keys[i] && j < i));
    out[i] = (!mask || mask[i]) && above < k;
  }
}

// Copies the keys of the selected entries to `packed`; returns how many.
template <typename Key>
int64_t pack_selected(const Key* keys, const bool* selected, int64_t n, Key* packed) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i)
    if (selected[i]) packed[count++] = keys[i];
  return count;
}

// One row of row_topk_mask: returns 0, or 1 for NaN among the candidates, 2 for k out of range.
// Ranking options are template parameters so the key and mask loops vectorise.
template <typename scalar_t, bool kMagnitude, bool kLargest>
int8_t select_row(const scalar_t* __restrict x, const bool* __restrict mask, int64_t n, int64_t k,
                  typename KeyOf<AccOf<scalar_t>>::type* __restrict keys,
                  typename KeyOf<AccOf<scalar_t>>::type* __restrict scratch,
                  typename KeyOf<AccOf<scalar_t>>::type* __restrict packed, bool* __restrict out,
                  scalar_t& threshold, int64_t& candidates) {
  using acc_t = AccOf<scalar_t>;
  using Key = typename KeyOf<acc_t>::type;
  compute_keys<scalar_t, kMagnitude, kLargest>(x, n, keys);
  const auto [count, nans] = count_candidates(x, mask, n);
  candidates = count;
  if (nans) return 1;
  if (k < 0 || k > count) return 2;
  if (k == 0) {
    std::fill(out, out + n, false);
    threshold = static_cast<scalar_t>(kLargest ? std::numeric_limits<acc_t>::infinity()
                                               : -std::numeric_limits<acc_t>::infinity());
    return 0;
  }
  if (n <= kSmallRow) {  // N:M groups and other short rows: rank by counting, no histograms
    select_by_rank(keys, mask, n, k, out);
    const Key worst = *std::min_element(scratch, scratch + pack_selected(keys, out, n, scratch));
    threshold = static_cast<scalar_t>(key_value<acc_t>(worst, kMagnitude, kLargest));
    return 0;
  }
  // The histogram passes run over the candidates' keys only, packed (branch-free) to the front of
  // `packed`: fewer keys to count, and no mask test inside the passes.
  const Key* ranked = keys;
  if (mask) {
    keep_masked(keys, mask, n, packed);
    ranked = packed;
  }
  auto b = radix_select(ranked, count, k, scratch);
  // Everything ranked above the boundary, then the first `take` candidates on it.
  mark_above(keys, mask, n, b.kth, out);
  mark_ties(keys, mask, n, b.kth, b.take, out);
  threshold = static_cast<scalar_t>(key_value<acc_t>(b.kth, kMagnitude, kLargest));
  return 0;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> row_topk_mask(const at::Tensor& x_in, const at::Tensor& k_in,
                                                 const std::optional<at::Tensor>& mask_in,
                                                 bool magnitude, bool largest) {
  const auto [x, k, mask] = row_topk_inputs(x_in, k_in, mask_in);
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor out = at::empty({rows, n}, x.options().dtype(at::kBool));
  at::Tensor threshold = at::empty({rows}, x.options());
  // Per row: 0 ok, 1 NaN among the candidates, 2 k out of range (reported after the parallel loop).
  std::vector<int8_t> status(rows, 0);
  std::vector<int64_t> candidates(rows, 0);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "row_topk_mask_cpu", [&] {
    using acc_t = AccOf<scalar_t>;
    using Key = typename KeyOf<acc_t>::type;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const bool* mp = mask ? mask->const_data_ptr<bool>() : nullptr;
    const int64_t* kp = k.const_data_ptr<int64_t>();
    bool* op = out.data_ptr<bool>();
    scalar_t* tp = threshold.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
      std::vector<Key> keys(n), scratch(n + 16), packed(mp ? n + 16 : 0);  // + 16: see keep_digit
      const auto select = magnitude ? (largest ? select_row<scalar_t, true, true> : select_row<scalar_t, true, false>)
                                    : (largest ? select_row<scalar_t, false, true> : select_row<scalar_t, false, false>);
      for (int64_t row = lo; row < hi; ++row)
        status[row] = select(xp + row * n, mp ? mp + row * n : nullptr, n, kp[row], keys.data(),
                             scratch.data(), packed.data(), op + row * n, tp[row], candidates[row]);
    });
  });
  for (int64_t row = 0; row < rows; ++row) {
    TORCH_CHECK_VALUE(status[row] != 1, "row_topk_mask: scores contain NaN in slice ", row);
    TORCH_CHECK_VALUE(status[row] != 2, "row_topk_mask: k = ", k[row].item<int64_t>(), " for slice ", row,
                ", which has ", candidates[row], " candidates (k must be in [0, ", candidates[row], "])");
  }
  return {out, threshold};
}

namespace {

// ---- global selection over many tensors ---------------------------------------------------------

constexpr int kGlobalDigitBits = 16;
constexpr int64_t kGlobalChunk = int64_t(1) << 16;

// A contiguous run of one tensor's flat elements: the unit of parallel work, in ranking order.
struct Span {
  int64_t tensor, begin, end;
};

template <typename scalar_t, bool kMagnitude, bool kLargest>
void global_select(const std::vector<const scalar_t*>& x_data, const std::vector<const bool*>& mask_data,
                   const std::vector<Span>& spans, int64_t k, const std::vector<bool*>& out_data) {
  using Key = typename KeyOf<AccOf<scalar_t>>::type;
  constexpr int key_bits = sizeof(Key) * 8;
  constexpr int64_t digits = int64_t(1) << kGlobalDigitBits;
  const int64_t num_spans = static_cast<int64_t>(spans.size());
  // Each task works on spans [lo, hi) with its own key buffer.
  auto for_spans = [&](auto&& body) {
    at::parallel_for(0, num_spans, 1, [&](int64_t lo, int64_t hi) {
      std::vector<Key> keys(kGlobalChunk);
      for (int64_t s = lo; s < hi; ++s) {
        const Span& sp = spans[s];
        const int64_t n = sp.end - sp.begin;
        const scalar_t* x = x_data[sp.tensor] + sp.begin;
        const bool* mask = mask_data[sp.tensor] ? mask_data[sp.tensor] + sp.begin : nullptr;
        body(s, sp, x, mask, n, keys.data());
      }
    });
  };

  // Radix selection, kGlobalDigitBits a pass over all tensors, one histogram per thread. The
  // first pass also counts candidates and NaNs (the span is still in L2 for its keys).
  std::vector<int64_t> span_candidates(num_spans), span_nans(num_spans);
  Boundary<Key> b;
  b.take = k;
  Key prefix_mask = 0;
  const int threads = at::get_num_threads();
  std::vector<int64_t> histograms(static_cast<size_t>(threads) * digits);
  for (int shift = key_bits - kGlobalDigitBits; shift >= 0; shift -= kGlobalDigitBits) {
    const bool first = prefix_mask == 0;
    std::fill(histograms.begin(), histograms.end(), 0);
    for_spans([&](int64_t s, const Span&, const scalar_t* x, const bool* mask, int64_t n, Key* keys) {
      if (first) std::tie(span_candidates[s], span_nans[s]) = count_candidates(x, mask, n);
      int64_t* histogram = histograms.data() + static_cast<size_t>(at::get_thread_num()) * digits;
      compute_keys<scalar_t, kMagnitude, kLargest>(x, n, keys);
      if (first && mask) {
        // Whether an entry counts is then the mask's coin flip, which a branch would mispredict
        // half the time: add the mask byte instead.
        const uint8_t* m = mask_bytes(mask);
        for (int64_t i = 0; i < n; ++i) histogram[(keys[i] >> shift) & (digits - 1)] += m[i];
      } else {
        for (int64_t i = 0; i < n; ++i)
          if ((keys[i] & prefix_mask) == b.kth && (!mask || mask[i]))
            ++histogram[(keys[i] >> shift) & (digits - 1)];
      }
    });
    if (first) {
      int64_t total = 0;
      for (int64_t s = 0; s < num_spans; ++s) {
        if (span_nans[s]) {
          const Span& sp = spans[s];
          int64_t at = sp.begin;
          while (!(std::isnan(static_cast<double>(x_data[sp.tensor][at])) &&
                   (!mask_data[sp.tensor] || mask_data[sp.tensor][at])))
            ++at;
          TORCH_CHECK_VALUE(false, "global_topk_masks: tensor ", sp.tensor, " contains NaN at flat index ", at);
        }
        total += span_candidates[s];
      }
      TORCH_CHECK_VALUE(k >= 0 && k <= total, "global_topk_masks: k = ", k, " but the tensors hold ",
                        total, " candidates (k must be in [0, ", total, "])");
      if (k == 0) break;
    }
    for (int t = 1; t < threads; ++t)
      for (int64_t d = 0; d < digits; ++d) histograms[d] += histograms[t * digits + d];
    b.kth |= static_cast<Key>(select_digit<int64_t>(histograms.data(), digits, b.take)) << shift;
    prefix_mask |= static_cast<Key>(digits - 1) << shift;
  }

  // Marks; ties at the boundary go to the first `take` in ranking order, so each span needs the
  // tie counts of the spans before it.
  std::vector<int64_t> span_ties(num_spans, 0);
  const Key kth = k > 0 ? b.kth : std::numeric_limits<Key>::max();  // k = 0: nothing is above
  for_spans([&](int64_t s, const Span& sp, const scalar_t* x, const bool* mask, int64_t n, Key* keys) {
    compute_keys<scalar_t, kMagnitude, kLargest>(x, n, keys);
    span_ties[s] = mark_above(keys, mask, n, kth, out_data[sp.tensor] + sp.begin);
  });
  std::vector<int64_t> budget(num_spans, 0);
  for (int64_t s = 0, left = k > 0 ? b.take : 0; s < num_spans; ++s) {
    budget[s] = std::min(left, span_ties[s]);
    left -= budget[s];
  }
  for_spans([&](int64_t s, const Span& sp, const scalar_t* x, const bool* mask, int64_t n, Key* keys) {
    if (budget[s] == 0) return;
    compute_keys<scalar_t, kMagnitude, kLargest>(x, n, keys);
    mark_ties(keys, mask, n, kth, budget[s], out_data[sp.tensor] + sp.begin);
  });
}

}  // namespace

std::vector<at::Tensor> global_topk_masks(at::TensorList xs_in,
                                          const std::optional<at::TensorList>& masks_in,
                                          int64_t k, bool magnitude, bool largest) {
  check_global_topk_args(xs_in, masks_in);
  std::vector<at::Tensor> xs, masks;
  std::vector<Span> spans;
  for (size_t t = 0; t < xs_in.size(); ++t) {
    const at::Tensor& x = xs_in[t];
    xs.push_back(x.contiguous());
    if (masks_in) masks.push_back((*masks_in)[t].contiguous());
    for (int64_t b = 0; b < x.numel(); b += kGlobalChunk)
      spans.push_back({static_cast<int64_t>(t), b, std::min(x.numel(), b + kGlobalChunk)});
  }
  std::vector<at::Tensor> outs;
  for (const at::Tensor& x : xs) outs.push_back(at::empty(x.sizes(), x.options().dtype(at::kBool)));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xs[0].scalar_type(), "global_topk_masks_cpu", [&] {
    std::vector<const scalar_t*> x_data;
    std::vector<const bool*> mask_data;
    std::vector<bool*> out_data;
    for (size_t t = 0; t < xs.size(); ++t) {
      x_data.push_back(xs[t].const_data_ptr<scalar_t>());
      mask_data.push_back(masks.empty() ? nullptr : masks[t].const_data_ptr<bool>());
      out_data.push_back(outs[t].data_ptr<bool>());
    }
    const auto select = magnitude ? (largest ? global_select<scalar_t, true, true> : global_select<scalar_t, true, false>)
                                  : (largest ? global_select<scalar_t, false, true> : global_select<scalar_t, false, false>);
    select(x_data, mask_data, spans, k, out_data);
  });
  return outs;
}

}  // namespace lqk::CPU_CAPABILITY
