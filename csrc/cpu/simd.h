// Vector building blocks of the CPU kernels for the capability being compiled (CPU_CAPABILITY):
// AVX-512 where __AVX512F__/BW/VL are on, AVX2 (with FMA and F16C) where __AVX2__ is, nothing on the
// baseline (the kernels then take their scalar paths: `kHaveLanes` says which).
//
// AVX-512 has compress and expand instructions; AVX2 has not, so its forms here permute 8 lanes by
// a table indexed with the 8-bit lane mask (the permutation that packs, or unpacks, those lanes).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace lqk::CPU_CAPABILITY {
namespace {

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define LQK_LANES_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define LQK_LANES_AVX2 1
#endif

#if defined(LQK_LANES_AVX2)
// Lane permutations for each 8-bit lane mask b, 8 int32 lane indices each (8 KB a table: one load
// gives the permute's index vector): kCompress8[b] lists the set lanes in order (then 7s);
// kExpand8[b] gives each set lane its rank among the set lanes, and each clear lane 7 (the
// permuted source is 0 there unless all 8 lanes are set). A lane permute reads only the low 3 bits
// of an index, so kExpand8 also carries, in the sign bits, the mask of the first popcount(b) lanes:
// the masked load of the packed values (kFirst8[n]: all ones in the first n lanes).
using LaneRow = std::array<int32_t, 8>;
constexpr std::array<LaneRow, 256> lane_tables(bool expand) {
  std::array<LaneRow, 256> table{};
  for (int b = 0; b < 256; ++b) {
    int rank = 0;
    table[b].fill(7);
    for (int j = 0; j < 8; ++j) {
      if ((b >> j) & 1) {
        if (expand) table[b][j] = rank;
        else table[b][rank] = j;
        ++rank;
      }
    }
    if (expand)
      for (int j = 0; j < rank; ++j) table[b][j] |= INT32_MIN;
  }
  return table;
}
alignas(32) constexpr std::array<LaneRow, 256> kCompress8 = lane_tables(false);
alignas(32) constexpr std::array<LaneRow, 256> kExpand8 = lane_tables(true);
alignas(32) constexpr std::array<LaneRow, 9> kFirst8 = [] {
  std::array<LaneRow, 9> table{};
  for (int n = 0; n <= 8; ++n)
    for (int j = 0; j < n; ++j) table[n][j] = -1;
  return table;
}();
// kCount8[b] = popcount(b): a table, not popcnt, which issues on one port only (the bitmap kernel
// counts every 8 columns).
constexpr std::array<uint8_t, 256> kCount8 = [] {
  std::array<uint8_t, 256> table{};
  for (int b = 0; b < 256; ++b) table[b] = static_cast<uint8_t>(std::popcount(static_cast<unsigned>(b)));
  return table;
}();

inline __m256i lane_row(const std::array<LaneRow, 256>& table, unsigned b) {  // table[b] as a vector
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(table[b].data()));
}
#endif

// Asks for the memory kPrefetchBytes past p. The hardware prefetcher alone does not hide the
// latency of the streams the kernels walk once per call: the sparse kernels' values and indices
// (asking 2 KB ahead halved their time at 50% density with AVX-512; 4 KB took batch 1 from 1.25x
// to 1.37x dense at 50%, from 3.7x to 4.0x at 90%, when run between dense calls) and the
// measures' rows (q = 2 over a 4096 x 4096 float32 W: 1.33 -> 1.24 ms, torch's L2 norm 1.30 ms).
constexpr int kPrefetchBytes = 4096;
inline void prefetch(const void* p) { __builtin_prefetch(static_cast<const char*>(p) + kPrefetchBytes, 0, 3); }

// ---- 32-bit keys: compaction of the lanes that pass a test (the selection kernels) ------------

#if defined(LQK_LANES_AVX512)
struct KeyLanes {
  static constexpr int kWidth = 16;
  using Vec = __m512i;
  using Mask = __mmask16;
  static Vec load(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static Vec splat(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
  static Mask equal(Vec a, Vec b) { return _mm512_cmpeq_epi32_mask(a, b); }
  // ((v >> shift) & low) == digit, lane by lane.
  static Mask digit_equal(Vec v, int shift, Vec low, Vec digit) {
    return _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_srl_epi32(v, _mm_cvtsi32_si128(shift)), low), digit);
  }
  // The lanes whose mask byte is set (torch's bools are 0 or 1).
  static Mask from_bytes(const uint8_t* m) {
    return _mm_test_epi8_mask(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m)), _mm_set1_epi8(1));
  }
  // Stores the lanes of `keep` to dst in order (a whole vector: dst needs kWidth keys of room). The
  // register form of compress and a full store: the memory form is microcoded on some CPUs.
  static void compress_store(uint32_t* dst, Mask keep, Vec v) {
    _mm512_storeu_si512(dst, _mm512_maskz_compress_epi32(keep, v));
  }
  static unsigned bits(Mask m) { return m; }
};
#elif defined(LQK_LANES_AVX2)
struct KeyLanes {
  static constexpr int kWidth = 8;
  using Vec = __m256i;
  using Mask = unsigned;
  static Vec load(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static Vec splat(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
  static Mask equal(Vec a, Vec b) {
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b))));
  }
  static Mask digit_equal(Vec v, int shift, Vec low, Vec digit) {
    return equal(_mm256_and_si256(_mm256_srl_epi32(v, _mm_cvtsi32_si128(shift)), low), digit);
  }
  static Mask from_bytes(const uint8_t* m) {
    // Bit 0 of each byte to its bit 7, then one bit per byte.
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(m));
    return static_cast<unsigned>(_mm_movemask_epi8(_mm_slli_epi16(bytes, 7))) & 0xffu;
  }
  static void compress_store(uint32_t* dst, Mask keep, Vec v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permutevar8x32_epi32(v, lane_row(kCompress8, keep)));
  }
  static unsigned bits(Mask m) { return m; }
};
#endif

// ---- float lanes: the sparse-linear kernels that walk W's kept values -------------------------

inline float to_float(float v) { return v; }
inline float to_float(c10::Half v) { return static_cast<float>(v); }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }
inline double to_float(double v) { return v; }

#if defined(LQK_LANES_AVX512)
struct FloatLanes {
  static constexpr int kWidth = 16;
  static constexpr int kRegisters = 32;
  // Vector operations to put one group of packed values into its lanes (for the kernel choice).
  static constexpr int kExpandCost = 1;
  using Vec = __m512;
  using Mask = __mmask16;
  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec splat(float v) { return _mm512_set1_ps(v); }
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static float sum(Vec v) { return _mm512_reduce_add_ps(v); }
  static Mask first(int64_t n) { return n >= 16 ? Mask(0xffff) : Mask((1u << n) - 1); }
  static int count(Mask keep) { return std::popcount(static_cast<unsigned>(keep)); }

  // 16-bit values widened to float lanes.
  template <typename scalar_t>
  static Vec widen(__m256i h) {
    if constexpr (std::is_same_v<scalar_t, c10::Half>) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  // The first popcount(keep) values at p in the lanes of `keep` (bitmap); others 0. Reads only
  // those values (masked loads do not fault on the lanes they leave out).
  template <typename scalar_t>
  static Vec expand(const scalar_t* p, Mask keep, const scalar_t*) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      return _mm512_maskz_expandloadu_ps(keep, p);
    } else {
      const __m256i h = _mm256_maskz_loadu_epi16(first(std::popcount(static_cast<unsigned>(keep))), p);
      return _mm512_maskz_expand_ps(keep, widen<scalar_t>(h));
    }
  }
  // The first n (<= 16) values at p; the other lanes 0.
  template <typename scalar_t>
  static Vec load_first(const scalar_t* p, int64_t n, const scalar_t*) {
    if constexpr (std::is_same_v<scalar_t, float>) return _mm512_maskz_loadu_ps(first(n), p);
    else return widen<scalar_t>(_mm256_maskz_loadu_epi16(first(n), p));
  }
  // x[cols[j]] for the first n (<= 16) columns; the other lanes 0.
  static Vec gather(const float* x, const uint16_t* cols, int64_t n) {
    const Mask keep = first(n);
    const __m512i c = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(keep, cols));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), keep, c, x, 4);
  }
};
#elif defined(LQK_LANES_AVX2)
struct FloatLanes {
  static constexpr int kWidth = 8;
  static constexpr int kRegisters = 16;
  static constexpr int kExpandCost = 2;  // table load, lane permute, zeroing
  using Vec = __m256;
  using Mask = unsigned;
  static Vec zero() { return _mm256_setzero_ps(); }
  static Vec splat(float v) { return _mm256_set1_ps(v); }
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static float sum(Vec v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
  }

  // The first n (<= 8) values at p in float lanes, the other lanes 0. A whole-vector load where
  // 8 values lie before `end` (the end of the array), else through a buffer: no read past the end.
  template <typename scalar_t>
  static Vec load_first(const scalar_t* p, int64_t n, const scalar_t* end) {
    return _mm256_and_ps(widen<scalar_t>(load8_within(p, end)), _mm256_castsi256_ps(first(n)));
  }
  static int count(Mask keep) { return kCount8[keep]; }
  // The first popcount(keep) values at p in the lanes of `keep`, others 0: the packed values,
  // lanes past them zeroed (float: a masked load, which reads nothing there), permuted by kExpand8.
  template <typename scalar_t>
  static Vec expand(const scalar_t* p, Mask keep, const scalar_t* end) {
    const __m256i lanes = lane_row(kExpand8, keep);
    Vec packed;
    if constexpr (std::is_same_v<scalar_t, float>) packed = _mm256_maskload_ps(p, lanes);
    else packed = load_first(p, count(keep), end);
    return _mm256_permutevar8x32_ps(packed, lanes);
  }
  // x[cols[j]] for the first n (<= 8) columns; the other lanes 0 (no load for them).
  static Vec gather(const float* x, const uint16_t* cols, int64_t n) {
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, _mm256_cvtepu16_epi32(_mm256_castsi256_si128(load8_within(cols, cols + n))),
                                    _mm256_castsi256_ps(first(n)), 4);
  }

 private:
  // All ones in the first n (<= 8) 32-bit lanes.
  static __m256i first(int64_t n) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(kFirst8[n].data())); }
  // 8 elements at p, as they lie in memory (a float's 32 bytes, a 16-bit type's 16 in the low half),
  // reading nothing at or past `end`: elements from there on are 0.
  template <typename T>
  static __m256i load8_within(const T* p, const T* end) {
    alignas(32) T tail[8] = {};
    const T* from = p;
    if (end - p < 8) {
      std::memcpy(tail, p, static_cast<size_t>(std::max<int64_t>(end - p, 0)) * sizeof(T));
      from = tail;
    }
    if constexpr (sizeof(T) == 4) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from));
    else return _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(from)));
  }
  // Float lanes of 8 loaded elements (float, or half / bfloat16 widened).
  template <typename scalar_t>
  static Vec widen(__m256i raw) {
    if constexpr (std::is_same_v<scalar_t, float>) return _mm256_castsi256_ps(raw);
    else if constexpr (std::is_same_v<scalar_t, c10::Half>) return _mm256_cvtph_ps(_mm256_castsi256_si128(raw));
    else return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(raw)), 16));
  }
};
#endif

#if defined(LQK_LANES_AVX512) || defined(LQK_LANES_AVX2)
constexpr bool kHaveLanes = true;
#else
constexpr bool kHaveLanes = false;
#endif

}  // namespace
}  // namespace lqk::CPU_CAPABILITY
