// C++ CPU kernels of y = x · Wᵀ + b with a compressed W: lqkernels::bitmap_linear and
// lqkernels::csr16_linear (formats in lqkernels/_ops.py, "sparse linear"). x is (M, in), y (M, out).
//
// Two strategies, picked by M and the density (values_kernel_wins):
//  * few rows of x (decode): walk W's kept values 16 columns at a time and multiply them with the
//    matching slice of every x row. Bitmap: AVX-512 expand-loads put the packed values of a
//    16-column group into their lanes; csr16: gathers fetch x at 16 kept columns. The values are
//    read once, whatever M is.
//  * many rows of x: transpose a tile of T = 16, 32 or 64 x rows into xt (in, T) once; every kept
//    value w_rc adds w_rc · xt[c, :] to the T outputs of row r, one broadcast FMA per 16 lanes.
// Rows of W are split over threads by their cost (kept values, plus bitmap words), not by count,
// so layers whose rows have very different densities keep both cores busy.
//
// Backward (lqkernels::{bitmap,csr16}_linear_grad_input / _grad_values), on the same tiles: the
// values' gradient is one T-lane dot product of dyᵀ and xᵀ columns per kept value (rows split over
// threads); dy · W scatters w · dyᵀ[r, :] into the kept columns of a transposed gx tile, with the
// columns split over threads so that no two write the same one.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/simd.h"
#include "sparse_linear_checks.h"

namespace lqk::CPU_CAPABILITY {
namespace {

using Format = SparseFormat;

// Whether the value-walking kernel beats the transposed tiles for m_rows rows of x, per row of W
// in vector operations. Bitmap: per group of kWidth columns, the expansion of its packed values
// (FloatLanes::kExpandCost) and R FMAs, whatever the density (R = m_rows padded to 1, 2, 4 or 8),
// on L1-resident x; tiles: 16 / kWidth FMAs per kept value on randomly addressed xt (counted
// twice) plus ~40 of bookkeeping. csr16: a gather per x row per kWidth values beats the tiles for
// one row only (AVX-512, 90% sparsity, 2 rows: 0.61 ms by gathers, 0.44 ms by tiles). Without
// vector lanes: the scalar walk for one row (it does per kept value what a tile does per lane).
bool values_kernel_wins(Format fmt, int64_t m_rows, int64_t words, int64_t row_nnz) {
  if (fmt == Format::kCsr16 || !kHaveLanes) return m_rows == 1;
#if defined(LQK_LANES_AVX512) || defined(LQK_LANES_AVX2)
  if (m_rows > 8) return false;
  constexpr int64_t groups = 32 / FloatLanes::kWidth, tile_fmas = 16 / FloatLanes::kWidth;
  const int64_t padded = m_rows <= 2 ? m_rows : (m_rows <= 4 ? 4 : 8);
  return words * groups * (FloatLanes::kExpandCost + padded) <= 2 * tile_fmas * row_nnz + 40;
#else
  return false;
#endif
}

template <typename T> using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Checks the row offsets describe `values` (they are read as bounds, so a corrupt table must not
// reach the kernels): non-decreasing, from 0 to values.numel().
void check_offsets(const char* op, const int64_t* offsets, int64_t out, int64_t nnz) {
  TORCH_CHECK(offsets[0] == 0 && offsets[out] == nnz, op, ": row offsets must run from 0 to ",
              nnz, " (the number of values), got ", offsets[0], " to ", offsets[out]);
  for (int64_t r = 0; r < out; ++r)
    TORCH_CHECK(offsets[r] <= offsets[r + 1], op, ": row offsets decrease at row ", r, " (",
                offsets[r], " > ", offsets[r + 1], ")");
}

// Whether c[0] < c[1] < ... < c[n - 1].
inline bool strictly_ascending(const uint16_t* c, int64_t n) {
  int64_t k = 1;
#if defined(LQK_LANES_AVX512)
  for (; k < n; k += 32) {
    const __mmask32 lanes = n - k >= 32 ? ~__mmask32(0) : (__mmask32(1) << (n - k)) - 1;
    const __m512i cur = _mm512_maskz_loadu_epi16(lanes, c + k);
    const __m512i prev = _mm512_maskz_loadu_epi16(lanes, c + k - 1);
    if (_mm512_mask_cmple_epu16_mask(lanes, cur, prev)) return false;
  }
#elif defined(LQK_LANES_AVX2)
  for (; k + 16 <= n; k += 16) {  // cur <= prev (unsigned) where max(cur, prev) == prev
    const __m256i cur = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + k));
    const __m256i prev = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + k - 1));
    if (_mm256_movemask_epi8(_mm256_cmpeq_epi16(_mm256_max_epu16(cur, prev), prev))) return false;
  }
#endif
  for (; k < n; ++k)
    if (c[k] <= c[k - 1]) return false;
  return true;
}

// Checks row r of a bitmap or csr16 index against its row offsets, as the kernel tasks that read
// the row do before reading it (in their own parallel region: this runs on every call, and a
// separate pass cost one more wake-up of the threads and 15-25% of a high-sparsity call). Bitmap:
// one bit per value, none past in_features (the kernels would read past `values` or x). csr16:
// columns in range and strictly ascending (the format's invariant, which every backend and the
// dense conversion assume).
template <Format fmt>
void check_index_row(const char* op, const int64_t* offs, const void* index, int64_t in, int64_t r) {
  if constexpr (fmt == Format::kBitmap) {
    const int64_t nwords = (in + 31) / 32;
    const uint32_t* words = static_cast<const uint32_t*>(index) + r * nwords;
    const uint32_t tail = in % 32 ? ~((1u << (in % 32)) - 1) : 0u;
    int64_t bits = 0;
    for (int64_t w = 0; w < nwords; ++w) bits += std::popcount(words[w]);
    TORCH_CHECK(bits == offs[r + 1] - offs[r], op, ": row ", r, " of the bitmap marks ", bits,
                " columns but its row offsets hold ", offs[r + 1] - offs[r], " values");
    TORCH_CHECK(!tail || !(words[nwords - 1] & tail), op, ": row ", r,
                " of the bitmap marks columns past in_features ", in);
  } else {
    const uint16_t* cols = static_cast<const uint16_t*>(index);
    const int64_t begin = offs[r], end = offs[r + 1];
    TORCH_CHECK(strictly_ascending(cols + begin, end - begin), op, ": columns of row ", r,
                " must be distinct and ascending");
    TORCH_CHECK(end == begin || cols[end - 1] < in, op, ": column ", cols[end - 1], " of row ", r,
                " is out of range for in_features ", in);
  }
}

// Rows [r0, r1): for the kernels that read a range of rows at once. The value walks (batch <= 8)
// check each row just before reading it instead, so the walk finds the index in L1: checking a
// part's rows first left them in L2 and cost 20-30% of a batch-1 call.
template <Format fmt>
void check_index_rows(const char* op, const int64_t* offs, const void* index, int64_t in, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) check_index_row<fmt>(op, offs, index, in, r);
}

// The work of a row that does not depend on its density, in kept values: the bitmap walk visits
// every word (a 1024x1024 bitmap layer at 90% sparsity took 73 us on one thread, as at 10%), csr16
// only its bookkeeping.
inline int64_t row_overhead(Format fmt, int64_t nwords) { return fmt == Format::kBitmap ? nwords : 8; }

// How many parallel parts `work` multiply-adds deserve: four per thread when there is plenty (room
// to balance), one when there is too little to pay for waking the other threads (a single part
// runs inline, with no parallel region to wait on: a busy machine made tiny layers take ms).
int64_t parts_for(int64_t work) {
  constexpr int64_t kWorkPerPart = int64_t(1) << 15;
  return std::clamp<int64_t>(work / kWorkPerPart, 1, int64_t(at::get_num_threads()) * 4);
}

// Splits rows [0, out) into `parts` contiguous ranges of about equal cost, where row r costs its
// kept values plus `per_row` (the part of its work that does not depend on its density).
std::vector<int64_t> balanced_splits(const int64_t* offsets, int64_t out, int64_t per_row, int64_t parts) {
  const double total = static_cast<double>(offsets[out] + out * per_row);
  std::vector<int64_t> bounds(parts + 1, out);
  bounds[0] = 0;
  int64_t r = 0;
  for (int64_t p = 1; p < parts; ++p) {
    const double target = total * static_cast<double>(p) / static_cast<double>(parts);
    while (r < out && static_cast<double>(offsets[r] + r * per_row) < target) ++r;
    bounds[p] = r;
  }
  return bounds;
}

// Column numbers of one bitmap row's kept values, ascending, into cols (room for 16 past the end).
inline int64_t bitmap_row_columns(const uint32_t* words, int64_t nwords, int32_t* cols) {
  int64_t n = 0;
#if defined(LQK_LANES_AVX512)
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t w = 0; w < nwords; ++w) {
    const uint32_t word = words[w];
    const __m512i lo = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(32 * w)));
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(16));
    _mm512_storeu_si512(cols + n, _mm512_maskz_compress_epi32(static_cast<__mmask16>(word), lo));
    n += std::popcount(word & 0xffffu);
    _mm512_storeu_si512(cols + n, _mm512_maskz_compress_epi32(static_cast<__mmask16>(word >> 16), hi));
    n += std::popcount(word >> 16);
  }
#elif defined(LQK_LANES_AVX2)
  for (int64_t w = 0; w < nwords; ++w) {
    for (int part = 0; part < 4; ++part) {  // a byte of the word: 8 columns
      const unsigned byte = (words[w] >> (8 * part)) & 0xffu;
      const __m256i first = _mm256_set1_epi32(static_cast<int32_t>(32 * w + 8 * part));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(cols + n), _mm256_add_epi32(lane_row(kCompress8, byte), first));
      n += std::popcount(byte);
    }
  }
#else
  for (int64_t w = 0; w < nwords; ++w)
    for (uint32_t word = words[w]; word; word &= word - 1)
      cols[n++] = static_cast<int32_t>(32 * w + std::countr_zero(word));
#endif
  return n;
}

// acc[l] += sum_k vals[k] * xt[cols[k] * T + l] for the T lanes of one transposed x tile.
// Independent accumulator sets hide the 4-cycle FMA latency (four, or fewer where a set takes more
// than a quarter of the vector registers: AVX2 has 16); they are separate 1-d arrays with constant
// indices so that GCC keeps them in registers (a 2-d array was spilled to the stack, adding a
// store-to-load round trip to every FMA).
template <int T, typename scalar_t, typename col_t, typename acc_t>
void row_times_tile(const acc_t* xt, const col_t* cols, const scalar_t* vals, int64_t n, acc_t* acc_io) {
#if defined(LQK_LANES_AVX512) || defined(LQK_LANES_AVX2)
  if constexpr (std::is_same_v<acc_t, float> && T % FloatLanes::kWidth == 0) {
    using L = FloatLanes;
    constexpr int V = T / L::kWidth;
    constexpr int sets = std::clamp(L::kRegisters / 2 / V, 1, 4);
    typename L::Vec a0[V], a1[V], a2[V], a3[V];
    for (int v = 0; v < V; ++v) {
      a0[v] = L::load(acc_io + L::kWidth * v);
      a1[v] = a2[v] = a3[v] = L::zero();
    }
    const auto step = [&](typename L::Vec (&a)[V], int64_t k) __attribute__((always_inline)) {
      const typename L::Vec w = L::splat(to_float(vals[k]));
      const float* xp = xt + static_cast<int64_t>(cols[k]) * T;
      for (int v = 0; v < V; ++v) a[v] = L::fmadd(w, L::load(xp + L::kWidth * v), a[v]);
    };
    int64_t k = 0;
    if constexpr (sets == 4) {
      for (; k + 4 <= n; k += 4) {
        step(a0, k);
        step(a1, k + 1);
        step(a2, k + 2);
        step(a3, k + 3);
      }
    } else if constexpr (sets >= 2) {
      for (; k + 2 <= n; k += 2) {
        step(a0, k);
        step(a1, k + 1);
      }
    }
    for (; k < n; ++k) step(a0, k);
    for (int v = 0; v < V; ++v) L::store(acc_io + L::kWidth * v, L::add(L::add(a0[v], a1[v]), L::add(a2[v], a3[v])));
    return;
  }
#endif
  for (int64_t k = 0; k < n; ++k) {
    const acc_t w = to_float(vals[k]);
    const acc_t* xp = xt + static_cast<int64_t>(cols[k]) * T;
#pragma omp simd
    for (int l = 0; l < T; ++l) acc_io[l] += w * xp[l];
  }
}

// A (m, n) matrix as tiles of T rows, each transposed to (n, T) in the accumulation type:
// tile[c * T + l] = a[tile_row0 + l, c], lanes past the last row 0. Every kernel that multiplies
// kept values with rows of x or dy reads them this way: one kept value, T rows, one vector op.
template <int T, typename scalar_t>
std::unique_ptr<acc_of<scalar_t>[]> transposed_tiles(const scalar_t* a, int64_t m, int64_t n) {
  using acc_t = acc_of<scalar_t>;
  const int64_t tiles = (m + T - 1) / T;
  // Every element is written below (padding lanes with 0): no value-initialisation.
  std::unique_ptr<acc_t[]> t(new acc_t[static_cast<size_t>(tiles * n * T)]);
  // A grain of 64K elements: transposing a few rows takes less than waking the other threads.
  at::parallel_for(0, tiles * n, std::max<int64_t>(1, 65536 / T), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t tile = i / n, c = i % n;
      acc_t* dst = t.get() + i * T;
      for (int64_t l = 0; l < T; ++l) {
        const int64_t row = tile * T + l;
        dst[l] = row < m ? static_cast<acc_t>(to_float(a[row * n + c])) : acc_t(0);
      }
    }
  });
  return t;
}

// The transposed-tile strategy (any M, any dtype), with tiles of T x rows. Bitmap rows are swept
// in column chunks whose slice of xt fits L1 (32 KB): every row's kept values in a chunk then
// multiply L1-resident x lanes (random columns over the whole xt would wait on L2 instead), and
// the rows' partial sums wait in `partial` between chunks. csr16 rows are not chunked: finding
// where a chunk ends in a row's column list cost more than the L2 waits it saved (at batch 16 and
// 90-95% sparsity, 1.7x slower chunked; at batch 512, 1.4x).
template <int T, typename scalar_t, Format fmt>
void linear_by_tiles(const char* op, const scalar_t* x, int64_t m_rows, int64_t in, const scalar_t* vals,
                     const int64_t* offsets, const void* index, const scalar_t* bias, int64_t out,
                     scalar_t* y) {
  using acc_t = acc_of<scalar_t>;
  // Columns per chunk: an L1-sized slice of xt, unless rows are so sparse that a chunk would hold
  // under ~32 of a row's values (then the per-chunk bookkeeping would cost more than L2 misses).
  constexpr int64_t kL1Chunk = 32768 / (T * sizeof(acc_t)) / 32 * 32;
  const int64_t row_nnz = out ? offsets[out] / out : 0;
  const int64_t chunks =
      fmt == Format::kCsr16 ? 1 : std::max<int64_t>(1, std::min((in + kL1Chunk - 1) / kL1Chunk, row_nnz / 32));
  const int64_t chunk_cols = ((in + chunks - 1) / chunks + 31) / 32 * 32;  // whole bitmap words
  const int64_t tiles = (m_rows + T - 1) / T;
  const std::unique_ptr<acc_t[]> xt = transposed_tiles<T>(x, m_rows, in);
  const int64_t nwords = (in + 31) / 32, per_row = row_overhead(fmt, nwords);
  const int64_t parts = parts_for((offsets[out] + out * per_row) * m_rows);
  const std::vector<int64_t> bounds = balanced_splits(offsets, out, per_row, parts);
  // Tile-major task order keeps one xt tile in a core's cache while it sweeps W.
  at::parallel_for(0, tiles * parts, 1, [&](int64_t lo, int64_t hi) {
    std::vector<int32_t> cols(fmt == Format::kBitmap ? chunk_cols + 16 : 0);
    std::vector<acc_t> partial;
    std::vector<int64_t> cursor;
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t tile = task / parts, part = task % parts;
      const int64_t r0 = bounds[part], r1 = bounds[part + 1];
      check_index_rows<fmt>(op, offsets, index, in, r0, r1);
      const acc_t* xtile = xt.get() + tile * in * T;
      partial.assign(static_cast<size_t>((r1 - r0) * T), acc_t(0));
      cursor.assign(offsets + r0, offsets + r1);  // next kept value of each row
      for (int64_t c0 = 0; c0 < in; c0 += chunk_cols) {
        const int64_t c1 = std::min(in, c0 + chunk_cols);
        for (int64_t r = r0; r < r1; ++r) {
          int64_t& k = cursor[r - r0];
          int64_t n;
          if constexpr (fmt == Format::kBitmap) {
            const uint32_t* words = static_cast<const uint32_t*>(index) + r * nwords;
            n = bitmap_row_columns(words + c0 / 32, (c1 - c0 + 31) / 32, cols.data());
            row_times_tile<T>(xtile + c0 * T, cols.data(), vals + k, n, partial.data() + (r - r0) * T);
          } else {
            n = offsets[r + 1] - k;  // the whole row: one chunk
            row_times_tile<T>(xtile, static_cast<const uint16_t*>(index) + k, vals + k, n,
                              partial.data() + (r - r0) * T);
          }
          k += n;
        }
      }
      // Lane-major, so that the stores run along rows of y (row-major over r would scatter them).
      const int64_t lanes = std::min<int64_t>(T, m_rows - tile * T);
      for (int64_t l = 0; l < lanes; ++l) {
        scalar_t* yl = y + (tile * T + l) * out;
        for (int64_t r = r0; r < r1; ++r)
          yl[r] = static_cast<scalar_t>(partial[(r - r0) * T + l] + (bias ? static_cast<acc_t>(to_float(bias[r])) : acc_t(0)));
      }
    }
  });
}

// ---- backward: dL/dx = dy · (W ∘ mask) and dL/dvalues = (dyᵀ · x) at the kept positions ----

// Calls f(std::integral_constant<int, T>{}) with the narrowest tile of T rows that holds m rows,
// at most 64 lanes (16 zmm): wasted lanes cost FMAs.
template <typename F>
void with_tile_width(int64_t m_rows, F&& f) {
  if (m_rows <= 16) f(std::integral_constant<int, 16>{});
  else if (m_rows <= 32) f(std::integral_constant<int, 32>{});
  else f(std::integral_constant<int, 64>{});
}

// The kept columns of row r in columns [c0, c1) (c0 a multiple of 32), relative to c0, as int32 in
// `buffer` (room for 16 past the end); [first, last) are their slots among the values. Returns
// how many.
template <Format fmt>
int64_t kept_columns(const void* index, int64_t nwords, int64_t r, int64_t c0, int64_t c1, int64_t first,
                     int64_t last, int32_t* buffer) {
  if constexpr (fmt == Format::kBitmap) {
    const uint32_t* words = static_cast<const uint32_t*>(index) + r * nwords;
    return bitmap_row_columns(words + c0 / 32, (c1 - c0 + 31) / 32, buffer);
  } else {
    const uint16_t* cols = static_cast<const uint16_t*>(index);
    for (int64_t k = first; k < last; ++k) buffer[k - first] = static_cast<int32_t>(cols[k] - c0);
    return last - first;
  }
}

// gv[k] = sum over the M rows of dy[:, r] · x[:, c] for every kept (r, c), from T-row tiles of
// dyᵀ and xᵀ. Rows of W are split over threads by their cost, as in the forward; each task owns
// its rows' values and sums all tiles itself, so nothing is shared between tasks.
template <int T, typename scalar_t, Format fmt>
void grad_values_by_tiles(const char* op, const scalar_t* dy, const scalar_t* x, int64_t m_rows, int64_t in,
                          int64_t out, const int64_t* offsets, const void* index, scalar_t* gv) {
  using acc_t = acc_of<scalar_t>;
  const int64_t tiles = (m_rows + T - 1) / T, nwords = (in + 31) / 32;
  const std::unique_ptr<acc_t[]> xt = transposed_tiles<T>(x, m_rows, in);
  const std::unique_ptr<acc_t[]> dyt = transposed_tiles<T>(dy, m_rows, out);
  const int64_t per_row = row_overhead(fmt, nwords);
  const int64_t parts = parts_for((offsets[out] + out * per_row) * m_rows);
  const std::vector<int64_t> bounds = balanced_splits(offsets, out, per_row, parts);
  at::parallel_for(0, parts, 1, [&](int64_t lo, int64_t hi) {
    std::vector<int32_t> cols(static_cast<size_t>(nwords * 32 + 16));
    std::vector<acc_t> acc;
    for (int64_t part = lo; part < hi; ++part) {
      const int64_t r0 = bounds[part], r1 = bounds[part + 1];
      check_index_rows<fmt>(op, offsets, index, in, r0, r1);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = kept_columns<fmt>(index, nwords, r, 0, in, offsets[r], offsets[r + 1], cols.data());
        acc.assign(static_cast<size_t>(n), acc_t(0));
        for (int64_t tile = 0; tile < tiles; ++tile) {
          const acc_t* d = dyt.get() + (tile * out + r) * T;
          const acc_t* xtile = xt.get() + tile * in * T;
          for (int64_t k = 0; k < n; ++k) {
            const acc_t* xc = xtile + static_cast<int64_t>(cols[k]) * T;
            acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int l = 0; l < T; ++l) sum += d[l] * xc[l];
            acc[k] += sum;
          }
        }
        for (int64_t k = 0; k < n; ++k) gv[offsets[r] + k] = static_cast<scalar_t>(acc[k]);
      }
    }
  });
}

// gx = dy · (W ∘ mask), from T-row tiles of dyᵀ: every kept w_rc adds w_rc · dyᵀ[r, :] to column c
// of a transposed gx tile. Columns, not rows, are split over threads (32-aligned ranges, each
// written by one task), so the scattered adds never collide; `starts` holds the slot of each row's
// first kept value in each range.
template <int T, typename scalar_t, Format fmt>
void grad_input_by_tiles(const char* op, const scalar_t* dy, int64_t m_rows, int64_t out, const scalar_t* vals,
                         const int64_t* offsets, const void* index, int64_t in, scalar_t* gx) {
  using acc_t = acc_of<scalar_t>;
  const int64_t tiles = (m_rows + T - 1) / T, nwords = (in + 31) / 32;
  const std::unique_ptr<acc_t[]> dyt = transposed_tiles<T>(dy, m_rows, out);
  const int64_t work = (offsets[out] + out * row_overhead(fmt, nwords)) * m_rows;
  const int64_t ranges = std::clamp<int64_t>(parts_for(work), 1, std::max<int64_t>(nwords, 1));
  const int64_t range_words = (nwords + ranges - 1) / ranges;
  std::vector<int64_t> starts(static_cast<size_t>(out * (ranges + 1)));
  at::parallel_for(0, out, 256, [&](int64_t lo, int64_t hi) {
    check_index_rows<fmt>(op, offsets, index, in, lo, hi);
    for (int64_t r = lo; r < hi; ++r) {
      int64_t* s = starts.data() + r * (ranges + 1);
      s[0] = offsets[r];
      for (int64_t j = 1; j <= ranges; ++j) {
        if constexpr (fmt == Format::kBitmap) {
          const uint32_t* words = static_cast<const uint32_t*>(index) + r * nwords;
          int64_t bits = 0;
          for (int64_t w = (j - 1) * range_words; w < std::min(nwords, j * range_words); ++w)
            bits += std::popcount(words[w]);
          s[j] = s[j - 1] + bits;
        } else {
          const uint16_t* cols = static_cast<const uint16_t*>(index);
          const int64_t c = std::min(in, j * range_words * 32);
          s[j] = std::lower_bound(cols + s[j - 1], cols + offsets[r + 1], c,
                                  [](uint16_t a, int64_t b) { return static_cast<int64_t>(a) < b; }) - cols;
        }
      }
    }
  });
  at::parallel_for(0, tiles * ranges, 1, [&](int64_t lo, int64_t hi) {
    std::vector<int32_t> cols(static_cast<size_t>(range_words * 32 + 16));
    std::vector<acc_t> gxt;
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t tile = task / ranges, j = task % ranges;
      const int64_t c0 = std::min(in, j * range_words * 32), c1 = std::min(in, (j + 1) * range_words * 32);
      gxt.assign(static_cast<size_t>((c1 - c0) * T), acc_t(0));
      for (int64_t r = 0; r < out; ++r) {
        const int64_t first = starts[r * (ranges + 1) + j], last = starts[r * (ranges + 1) + j + 1];
        if (first == last) continue;
        const int64_t n = kept_columns<fmt>(index, nwords, r, c0, c1, first, last, cols.data());
        const acc_t* d = dyt.get() + (tile * out + r) * T;
        for (int64_t k = 0; k < n; ++k) {
          const acc_t w = static_cast<acc_t>(to_float(vals[first + k]));
          acc_t* g = gxt.data() + static_cast<int64_t>(cols[k]) * T;
#pragma omp simd
          for (int l = 0; l < T; ++l) g[l] += w * d[l];
        }
      }
      const int64_t lanes = std::min<int64_t>(T, m_rows - tile * T);
      for (int64_t l = 0; l < lanes; ++l) {
        scalar_t* row = gx + (tile * T + l) * in;
        for (int64_t c = c0; c < c1; ++c) row[c] = static_cast<scalar_t>(gxt[(c - c0) * T + l]);
      }
    }
  });
}

// Dot products of rows [r0, r1) of W with R rows of xf (float, rows padded to a multiple of 32
// columns with zeros), the first `valid` written to y[i * out + r]. With vector lanes: a bitmap
// word's values are expanded into the lanes of their columns, kWidth at a time, and multiply the
// x lanes in place; csr16 gathers x at kWidth kept columns. Without: the kept values one by one.
template <int R, typename scalar_t, Format fmt>
void rows_by_values(const char* op, int64_t in, const float* xf, int64_t ld, const scalar_t* vals,
                    const int64_t* offsets, const void* index, const scalar_t* bias, int64_t nwords,
                    int64_t r0, int64_t r1, int64_t out, int64_t valid, scalar_t* y) {
  const scalar_t* vals_end = vals + offsets[out];
  for (int64_t r = r0; r < r1; ++r) {
    check_index_row<fmt>(op, offsets, index, in, r);
    float sums[R];
#if defined(LQK_LANES_AVX512) || defined(LQK_LANES_AVX2)
    using L = FloatLanes;
    // Independent accumulator sets, so that consecutive groups do not wait on each other's FMAs:
    // one per group of a word where registers allow (with one set, AVX2's 4 groups a word would
    // chain 4 FMA latencies per word), at least two.
    constexpr int groups = 32 / L::kWidth, sets = std::clamp(L::kRegisters / 2 / R, 2, groups);
    typename L::Vec acc[sets][R];
    for (auto& a : acc) for (auto& v : a) v = L::zero();
    const scalar_t* v = vals + offsets[r];
    if constexpr (fmt == Format::kBitmap) {
      const uint32_t* words = static_cast<const uint32_t*>(index) + r * nwords;
      for (int64_t w = 0; w < nwords; ++w) {
        prefetch(v);
        const uint32_t word = words[w];
        // Where each group's values start is counted apart from `v`: the groups' loads wait only
        // on the word (a running pointer chained a count and an add per group).
        int before = 0;
        for (int g = 0; g < groups; ++g) {
          const auto keep = static_cast<typename L::Mask>((word >> (g * L::kWidth)) & ((1ull << L::kWidth) - 1));
          const typename L::Vec values = L::expand(v + before, keep, vals_end);
          before += L::count(keep);
          for (int i = 0; i < R; ++i)
            acc[g % sets][i] = L::fmadd(values, L::load(xf + i * ld + 32 * w + g * L::kWidth), acc[g % sets][i]);
        }
        v += before;
      }
    } else {
      const uint16_t* cols = static_cast<const uint16_t*>(index) + offsets[r];
      const int64_t n = offsets[r + 1] - offsets[r];
      // Two gathers in flight per step, each with its own accumulators. The sets are named by
      // constants: one chosen at run time (k's parity) kept them on the stack, a store and a load
      // around every FMA.
      const auto step = [&](int set, int64_t k, int64_t lanes) __attribute__((always_inline)) {
        const typename L::Vec w = L::load_first(v + k, lanes, vals_end);
        for (int i = 0; i < R; ++i) acc[set][i] = L::fmadd(w, L::gather(xf + i * ld, cols + k, lanes), acc[set][i]);
      };
      int64_t k = 0;
      for (; k + 2 * L::kWidth <= n; k += 2 * L::kWidth) {
        prefetch(v + k);
        prefetch(cols + k);
        step(0, k, L::kWidth);
        step(1, k + L::kWidth, L::kWidth);
      }
      for (; k < n; k += L::kWidth) step(0, k, std::min<int64_t>(L::kWidth, n - k));
    }
    for (int i = 0; i < R; ++i) {
      typename L::Vec total = acc[0][i];
      for (int set = 1; set < sets; ++set) total = L::add(total, acc[set][i]);
      sums[i] = L::sum(total);
    }
#else
    (void)vals_end;
    static_assert(R == 1, "without vector lanes the values are walked for one x row only");
    // Four partial sums: consecutive values do not wait on each other's adds.
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    const scalar_t* v = vals + offsets[r];
    if constexpr (fmt == Format::kBitmap) {
      const uint32_t* words = static_cast<const uint32_t*>(index) + r * nwords;
      for (int64_t w = 0; w < nwords; ++w) {
        const float* xw = xf + 32 * w;
        uint32_t word = words[w];
        for (; std::popcount(word) >= 2; v += 2) {  // two set bits a step
          const int c0 = std::countr_zero(word);
          word &= word - 1;
          const int c1 = std::countr_zero(word);
          word &= word - 1;
          s0 += to_float(v[0]) * xw[c0];
          s1 += to_float(v[1]) * xw[c1];
        }
        if (word) s2 += to_float(*v++) * xw[std::countr_zero(word)];
      }
    } else {
      const uint16_t* cols = static_cast<const uint16_t*>(index) + offsets[r];
      const int64_t n = offsets[r + 1] - offsets[r];
      int64_t k = 0;
      for (; k + 4 <= n; k += 4) {
        s0 += to_float(v[k]) * xf[cols[k]];
        s1 += to_float(v[k + 1]) * xf[cols[k + 1]];
        s2 += to_float(v[k + 2]) * xf[cols[k + 2]];
        s3 += to_float(v[k + 3]) * xf[cols[k + 3]];
      }
      for (; k < n; ++k) s0 += to_float(v[k]) * xf[cols[k]];
    }
    sums[0] = (s0 + s1) + (s2 + s3);
#endif
    const float b = bias ? to_float(bias[r]) : 0.0f;
    for (int i = 0; i < valid; ++i) y[i * out + r] = static_cast<scalar_t>(sums[i] + b);
  }
}

// The value-walking strategy for M <= 8 (float, half and bfloat16 x: products in float).
template <typename scalar_t, Format fmt>
void linear_by_values(const char* op, const scalar_t* x, int64_t m_rows, int64_t in, const scalar_t* vals,
                      const int64_t* offsets, const void* index, const scalar_t* bias, int64_t out,
                      scalar_t* y) {
  const int64_t nwords = (in + 31) / 32, ld = nwords * 32;
  std::vector<float> xf(static_cast<size_t>((m_rows + 7) / 8 * 8 * ld), 0.0f);
  for (int64_t m = 0; m < m_rows; ++m)
    for (int64_t c = 0; c < in; ++c) xf[m * ld + c] = to_float(x[m * in + c]);
  const int64_t per_row = row_overhead(fmt, nwords);
  const int64_t parts = parts_for((offsets[out] + out * per_row) * m_rows);
  const std::vector<int64_t> bounds = balanced_splits(offsets, out, per_row, parts);
  at::parallel_for(0, parts, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t part = lo; part < hi; ++part) {
      const int64_t r0 = bounds[part], r1 = bounds[part + 1];
      // m_rows <= 8 (values_kernel_wins), padded with zeros up to 1, 2, 4 or 8: one compiled
      // kernel each (one row only without vector lanes).
      const float* xp = xf.data();
      if (m_rows == 1) {
        rows_by_values<1, scalar_t, fmt>(op, in, xp, ld, vals, offsets, index, bias, nwords, r0, r1, out, m_rows, y);
      } else if constexpr (kHaveLanes) {
        if (m_rows == 2) rows_by_values<2, scalar_t, fmt>(op, in, xp, ld, vals, offsets, index, bias, nwords, r0, r1, out, m_rows, y);
        else if (m_rows <= 4) rows_by_values<4, scalar_t, fmt>(op, in, xp, ld, vals, offsets, index, bias, nwords, r0, r1, out, m_rows, y);
        else rows_by_values<8, scalar_t, fmt>(op, in, xp, ld, vals, offsets, index, bias, nwords, r0, r1, out, m_rows, y);
      }
    }
  });
}

template <Format fmt>
at::Tensor sparse_linear_cpu(const char* op, const at::Tensor& x_in, const at::Tensor& values_in,
                             const at::Tensor& offsets_in, const at::Tensor& index_in,
                             const std::optional<at::Tensor>& bias) {
  check_sparse_linear(op, fmt, x_in, values_in, offsets_in, index_in, bias);
  TORCH_CHECK(x_in.device().is_cpu(), op, ": expects CPU tensors, got ", x_in.device());
  const at::Tensor x = x_in.contiguous(), values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous(), index = index_in.contiguous();
  const int64_t m_rows = x.size(0), in = x.size(1), out = offsets.numel() - 1;
  const int64_t nwords = (in + 31) / 32;
  const int64_t* offs = offsets.const_data_ptr<int64_t>();
  check_offsets(op, offs, out, values.numel());
  const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({m_rows, out}, x.options());
  if (m_rows == 0 || out == 0) {  // no kernel task to check its rows: check them all here
    check_index_rows<fmt>(op, offs, index.const_data_ptr(), in, 0, out);
    return y;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparse_linear_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* vp = values.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias ? bias_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    bool done = false;
    if constexpr (!std::is_same_v<scalar_t, double>) {  // float products: not for float64
      if (values_kernel_wins(fmt, m_rows, nwords, out ? offs[out] / out : 0)) {
        linear_by_values<scalar_t, fmt>(op, xp, m_rows, in, vp, offs, index.const_data_ptr(), bp, out, yp);
        done = true;
      }
    }
    if (!done)
      with_tile_width(m_rows, [&](auto t) {
        linear_by_tiles<decltype(t)::value, scalar_t, fmt>(op, xp, m_rows, in, vp, offs, index.const_data_ptr(), bp,
                                                          out, yp);
      });
  });
  return y;
}

// dL/dx of y = x · Wᵀ + b: dy (M, out) · (W ∘ mask), (M, in_features).
template <Format fmt>
at::Tensor sparse_linear_grad_input_cpu(const char* op, const at::Tensor& dy_in, const at::Tensor& values_in,
                                        const at::Tensor& offsets_in, const at::Tensor& index_in, int64_t in) {
  TORCH_CHECK(in >= 0, op, ": in_features must be >= 0, got ", in);
  const int64_t out = check_sparse_weight(op, fmt, dy_in.scalar_type(), dy_in.device(), in, values_in, offsets_in,
                                          index_in);
  check_output_gradient(op, dy_in, -1, out, dy_in.scalar_type(), dy_in.device());
  TORCH_CHECK(dy_in.device().is_cpu(), op, ": expects CPU tensors, got ", dy_in.device());
  const at::Tensor dy = dy_in.contiguous(), values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous(), index = index_in.contiguous();
  const int64_t* offs = offsets.const_data_ptr<int64_t>();
  check_offsets(op, offs, out, values.numel());
  const int64_t m_rows = dy.size(0);
  at::Tensor gx = at::empty({m_rows, in}, dy.options());
  if (m_rows == 0 || in == 0) {  // no kernel task to check the rows: check them all here
    check_index_rows<fmt>(op, offs, index.const_data_ptr(), in, 0, out);
    return gx;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "sparse_linear_grad_input_cpu", [&] {
    with_tile_width(m_rows, [&](auto t) {
      grad_input_by_tiles<decltype(t)::value, scalar_t, fmt>(op, dy.const_data_ptr<scalar_t>(), m_rows, out,
                                                             values.const_data_ptr<scalar_t>(), offs,
                                                             index.const_data_ptr(), in, gx.mutable_data_ptr<scalar_t>());
    });
  });
  return gx;
}

// dL/dvalues of y = x · Wᵀ + b: (dyᵀ · x) at the kept positions, in the values' order.
template <Format fmt>
at::Tensor sparse_linear_grad_values_cpu(const char* op, const at::Tensor& dy_in, const at::Tensor& x_in,
                                         const at::Tensor& values_in, const at::Tensor& offsets_in,
                                         const at::Tensor& index_in) {
  const int64_t out = check_sparse_linear(op, fmt, x_in, values_in, offsets_in, index_in, std::nullopt);
  check_output_gradient(op, dy_in, x_in.size(0), out, x_in.scalar_type(), x_in.device());
  TORCH_CHECK(x_in.device().is_cpu(), op, ": expects CPU tensors, got ", x_in.device());
  const at::Tensor dy = dy_in.contiguous(), x = x_in.contiguous(), values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous(), index = index_in.contiguous();
  const int64_t* offs = offsets.const_data_ptr<int64_t>();
  check_offsets(op, offs, out, values.numel());
  const int64_t m_rows = x.size(0), in = x.size(1);
  at::Tensor gv = at::empty_like(values);
  if (m_rows == 0 || out == 0) {  // no kernel task to check the rows: check them all here
    check_index_rows<fmt>(op, offs, index.const_data_ptr(), in, 0, out);
    return gv.zero_();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparse_linear_grad_values_cpu", [&] {
    with_tile_width(m_rows, [&](auto t) {
      grad_values_by_tiles<decltype(t)::value, scalar_t, fmt>(op, dy.const_data_ptr<scalar_t>(),
                                                              x.const_data_ptr<scalar_t>(), m_rows, in, out, offs,
                                                              index.const_data_ptr(), gv.mutable_data_ptr<scalar_t>());
    });
  });
  return gv;
}

}  // namespace

at::Tensor bitmap_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_offsets,
                         const at::Tensor& bitmap, const std::optional<at::Tensor>& bias) {
  return sparse_linear_cpu<Format::kBitmap>("bitmap_linear", x, values, row_offsets, bitmap, bias);
}

at::Tensor csr16_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_offsets,
                        const at::Tensor& columns, const std::optional<at::Tensor>& bias) {
  return sparse_linear_cpu<Format::kCsr16>("csr16_linear", x, values, row_offsets, columns, bias);
}

at::Tensor bitmap_linear_grad_input(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& row_offsets,
                                    const at::Tensor& bitmap, int64_t in_features) {
  return sparse_linear_grad_input_cpu<Format::kBitmap>("bitmap_linear_grad_input", dy, values, row_offsets, bitmap,
                                                       in_features);
}

at::Tensor csr16_linear_grad_input(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& row_offsets,
                                   const at::Tensor& columns, int64_t in_features) {
  return sparse_linear_grad_input_cpu<Format::kCsr16>("csr16_linear_grad_input", dy, values, row_offsets, columns,
                                                      in_features);
}

at::Tensor bitmap_linear_grad_values(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& values,
                                     const at::Tensor& row_offsets, const at::Tensor& bitmap) {
  return sparse_linear_grad_values_cpu<Format::kBitmap>("bitmap_linear_grad_values", dy, x, values, row_offsets,
                                                        bitmap);
}

at::Tensor csr16_linear_grad_values(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& values,
                                    const at::Tensor& row_offsets, const at::Tensor& columns) {
  return sparse_linear_grad_values_cpu<Format::kCsr16>("csr16_linear_grad_values", dy, x, values, row_offsets,
                                                       columns);
}

}  // namespace lqk::CPU_CAPABILITY
