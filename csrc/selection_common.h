// Shared by the C++ CPU and CUDA selection kernels (no torch, no CUDA headers).
//
// Selection ranks scores by an unsigned "order key": larger key = ranked first. Keys make radix
// selection exact (no float compares, one histogram pass per digit) and define ties precisely:
// equal keys are equal scores (-0 is mapped to +0 first), broken by lowest index.
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define LQK_SEL_HD __host__ __device__ __forceinline__
#else
#define LQK_SEL_HD inline
#endif

namespace lqk {

template <typename Float> struct KeyOf;
template <> struct KeyOf<float> { using type = uint32_t; };
template <> struct KeyOf<double> { using type = uint64_t; };

// The key of score v: ranks |v| if `magnitude`, else v; reversed when not `largest`.
template <typename Float>
LQK_SEL_HD typename KeyOf<Float>::type order_key(Float v, bool magnitude, bool largest) {
  using Key = typename KeyOf<Float>::type;
  constexpr Key sign = Key(1) << (sizeof(Key) * 8 - 1);
  v = v == Float(0) ? Float(0) : v;  // -0 ranks with +0
  Key bits;
  memcpy(&bits, &v, sizeof(bits));
  const Key key = magnitude ? (bits & ~sign) : ((bits & sign) ? ~bits : (bits | sign));
  return largest ? key : ~key;
}

// The ranked score (|v| if `magnitude`) that has this key.
template <typename Float>
LQK_SEL_HD Float key_value(typename KeyOf<Float>::type key, bool magnitude, bool largest) {
  using Key = typename KeyOf<Float>::type;
  constexpr Key sign = Key(1) << (sizeof(Key) * 8 - 1);
  key = largest ? key : ~key;
  const Key bits = magnitude ? key : ((key & sign) ? (key & ~sign) : ~key);
  Float v;
  memcpy(&v, &bits, sizeof(v));
  return v;
}

// Walks a digit histogram from the highest digit down to the one holding the `remaining`-th
// largest key; returns the digit and leaves in `remaining` its rank among keys with that digit.
template <typename Count>
LQK_SEL_HD int select_digit(const Count* histogram, int digits, Count& remaining) {
  for (int d = digits - 1; d > 0; --d) {
    if (histogram[d] >= remaining) return d;
    remaining -= histogram[d];
  }
  return 0;
}

}  // namespace lqk
