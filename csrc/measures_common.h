// Shared by the C++ CPU and CUDA kernels of the per-slice measures (no torch, no CUDA headers).
//
// Every measure lqkernels computes (lq norms, power sums, PQ Index, SI_q, Hoyer) is a function of
// the per-slice statistics (scale, T_q, d):
//   scale = max |x| over survivors,  T_q = sum over survivors of (|x| / scale)^q,  d = #survivors,
// with 0/0 := 0 and inf/inf := 1 (the limit of a slice whose largest entries grow without bound).
// Keeping sums relative to the running maximum makes them overflow- and underflow-free for any
// finite input (each term is in [0, 1]), and merging two partial states is associative.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define LQK_HD __host__ __device__ __forceinline__
#else
#define LQK_HD inline
#endif

namespace lqk {

// At most this many exponents in one pass (the CUDA kernels keep one running sum per exponent in
// registers).
constexpr int kMaxExponents = 8;

// Exponents with a cheaper exact formula than exp2(q * log2 r).
enum ExponentKind : int { kGeneral = 0, kOne = 1, kTwo = 2, kHalf = 3 };

LQK_HD int exponent_kind(double q) {
  return q == 1.0 ? kOne : q == 2.0 ? kTwo : q == 0.5 ? kHalf : kGeneral;
}

// (old_scale / new_scale)^q: re-expresses sums kept relative to old_scale relative to a larger
// new_scale. Equal scales (inf included) give 1; a zero new_scale means both are zero and so are
// the sums.
template <typename acc_t>
LQK_HD acc_t rescale_factor(acc_t old_scale, acc_t new_scale, acc_t q) {
  if (old_scale == new_scale) return acc_t(1);
  if (!(old_scale > acc_t(0)) || !(new_scale > acc_t(0))) return acc_t(0);  // empty sums: no pow
  if constexpr (sizeof(acc_t) == sizeof(float)) {
    return powf(old_scale / new_scale, q);
  } else {
    return pow(old_scale / new_scale, q);
  }
}

}  // namespace lqk
