#include "cpu_attention.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <functional>
#include <limits>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_block_attention.h"
#include "cpu_dispatch.h"
#include "cpu_math.h"
#include "cpu_worker_pool.h"
#include "mlx/primitives.h"

namespace mlxb {
namespace {

struct Problem {
  const float* q;        // (B, H, M, D) contiguous
  const float* k;        // strided: row, head, column; columns contiguous
  const float* v;        // likewise, Dv wide
  const int32_t* bounds; // (B, M, 2)
  float *max, *sum, *out;
  int B, H, M, S, D, Dv;
  int64_t k_row, k_head, k_col, v_row, v_head, v_col;
  float cap;
};

// Queries of one row and head handled by one task: they share each key's load.
constexpr int QUERY_CHUNK = 16;
// Keys per block of the weighted sum: 128 keys of a 64-wide head are 32 KiB.
constexpr int VALUE_BLOCK = 128;
// Below this many multiply-adds a call runs on one thread: waking the pool
// costs more than it saves.
constexpr double PARALLEL_MIN_MACS = 1 << 18;

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// hsum of each of 8 vectors, in hsum's order ((x0+x4)+(x2+x6)) + ((x1+x5)+(x3+x7)):
// a query's scores come out the same whichever way they were reduced.
__attribute__((target("avx2,fma"))) inline __m256 hsum8(const __m256 a[8]) {
  __m256 h[4];
  for (int i = 0; i < 4; ++i)  // [a_i's halves added | a_{i+4}'s]
    h[i] = _mm256_add_ps(_mm256_permute2f128_ps(a[i], a[i + 4], 0x20), _mm256_permute2f128_ps(a[i], a[i + 4], 0x31));
  const __m256 p = _mm256_add_ps(_mm256_shuffle_ps(h[0], h[1], 0x44), _mm256_shuffle_ps(h[0], h[1], 0xEE));
  const __m256 q = _mm256_add_ps(_mm256_shuffle_ps(h[2], h[3], 0x44), _mm256_shuffle_ps(h[2], h[3], 0xEE));
  return _mm256_add_ps(_mm256_shuffle_ps(p, q, 0x88), _mm256_shuffle_ps(p, q, 0xDD));
}

// Scores of 4 queries (rows of q, D apart) against TK keys, into rows of
// `scores` `width` apart: 4 x TK accumulators, each key load serving 4 FMAs.
template <int TK>
__attribute__((target("avx2,fma"))) inline void score_quad(const float* q, int D, const float* key, int64_t k_col,
                                                          float* scores, int width) {
  __m256 acc[4][TK];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < TK; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int d = 0; d < D; d += 8) {
    __m256 kd[TK];
    for (int j = 0; j < TK; ++j) kd[j] = _mm256_loadu_ps(key + j * k_col + d);
    for (int i = 0; i < 4; ++i) {
      __m256 qv = _mm256_loadu_ps(q + i * D + d);
      asm("" : "+x"(qv));  // one load for TK FMAs, not one folded into each
      for (int j = 0; j < TK; ++j) acc[i][j] = _mm256_fmadd_ps(qv, kd[j], acc[i][j]);
    }
  }
  for (int j = 0; j < TK; ++j) {
    alignas(16) float four[4];
    _mm_store_ps(four, hsum4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]));
    for (int i = 0; i < 4; ++i) scores[static_cast<size_t>(i) * width + j] = four[i];
  }
}

// 16 vectors -> one whose lane 4q + k is the sum of acc[q][k]: the sums of
// 4 queries by 4 keys in 45 shuffles and adds.
__attribute__((target("avx512f,avx512vl,fma"))) inline __m512 reduce16(const __m512 acc[4][4]) {
  // Placed so that the network's output comes in query order, then key order.
  const __m512 v[16] = {acc[0][0], acc[0][2], acc[0][1], acc[0][3], acc[2][0], acc[2][2], acc[2][1], acc[2][3],
                        acc[1][0], acc[1][2], acc[1][1], acc[1][3], acc[3][0], acc[3][2], acc[3][1], acc[3][3]};
  __m512 c[8], e[4], g[2];
  for (int i = 0; i < 8; ++i)  // halves of 256 bits added: [v_i | v_i+8]
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[i], v[i + 8], 0x44), _mm512_shuffle_f32x4(v[i], v[i + 8], 0xEE));
  for (int i = 0; i < 4; ++i)  // 128-bit quarters
    e[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[i], c[i + 4], 0x88), _mm512_shuffle_f32x4(c[i], c[i + 4], 0xDD));
  for (int i = 0; i < 2; ++i)  // pairs within each quarter
    g[i] = _mm512_add_ps(_mm512_shuffle_ps(e[i], e[i + 2], 0x44), _mm512_shuffle_ps(e[i], e[i + 2], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(g[0], g[1], 0x88), _mm512_shuffle_ps(g[0], g[1], 0xDD));
}

// score_quad with 512-bit vectors for 4 keys (D a multiple of 16).
__attribute__((target("avx512f,avx512vl,fma"))) inline void score_quad512(const float* q, int D, const float* key,
                                                                                  int64_t k_col, float* scores, int width) {
  __m512 acc[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int d = 0; d < D; d += 16) {
    __m512 kd[4];
    for (int j = 0; j < 4; ++j) kd[j] = _mm512_loadu_ps(key + j * k_col + d);
    for (int i = 0; i < 4; ++i) {
      __m512 qv = _mm512_loadu_ps(q + i * D + d);
      asm("" : "+v"(qv));
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_fmadd_ps(qv, kd[j], acc[i][j]);
    }
  }
  const __m512 r = reduce16(acc);
  _mm_storeu_ps(scores, _mm512_castps512_ps128(r));
  _mm_storeu_ps(scores + width, _mm512_extractf32x4_ps(r, 1));
  _mm_storeu_ps(scores + 2 * width, _mm512_extractf32x4_ps(r, 2));
  _mm_storeu_ps(scores + 3 * width, _mm512_extractf32x4_ps(r, 3));
}

// One query against 8 keys, reduced together.
__attribute__((target("avx2,fma"))) inline void score_eight(const float* q, int D, const float* key, int64_t k_col, float* scores) {
  __m256 acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
  for (int d = 0; d < D; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(key + j * k_col + d), acc[j]);
  }
  _mm256_storeu_ps(scores, hsum8(acc));
}

// 16 rows of 16 floats -> their transpose, in place (64 shuffles).
__attribute__((target("avx512f"))) inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xDD);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xDD);
    r[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
    r[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xDD);
  }
}

// 16 keys (k_col apart) -> kt (D, 16): element d of every key in one vector.
__attribute__((target("avx512f"))) inline void transpose_keys16(const float* key, int64_t k_col, int D, float* kt) {
  for (int d0 = 0; d0 < D; d0 += 16) {
    __m512 r[16];
    for (int j = 0; j < 16; ++j) r[j] = _mm512_loadu_ps(key + j * k_col + d0);
    transpose16(r);
    for (int j = 0; j < 16; ++j) _mm512_store_ps(kt + (d0 + j) * 16, r[j]);
  }
}

// TQ queries (D apart) against 16 transposed keys: each query element is
// broadcast against a vector of 16 keys, so no horizontal sums.
template <int TQ>
__attribute__((target("avx512f,fma"))) inline void score_block_t(const float* q, int D, const float* kt, float* scores,
                                                                 int width) {
  __m512 acc[TQ];
  for (int i = 0; i < TQ; ++i) acc[i] = _mm512_setzero_ps();
  for (int d = 0; d < D; ++d) {
    const __m512 kv = _mm512_load_ps(kt + d * 16);
    for (int i = 0; i < TQ; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i * D + d]), kv, acc[i]);
  }
  for (int i = 0; i < TQ; ++i) _mm512_storeu_ps(scores + static_cast<size_t>(i) * width, acc[i]);
}

// Transposing a block of 16 keys costs about as much as 4 queries' horizontal
// sums over it, so from this many queries per task the keys are transposed.
constexpr int TRANSPOSE_MIN_QUERIES = 8;
constexpr int TRANSPOSE_MAX_DIM = 256;

// Scores of queries against `count` keys from `key` into columns of `scores`
// (rows `width` apart): queries in fours first (hsum4; in 512-bit vectors
// where the CPU has them, 1.65x faster on 16 queries by 3,000 keys), the rest
// one at a time (hsum).
__attribute__((target("avx2,fma"))) void scores_reduced(const float* q, int n, const float* k0, int64_t k_col, int count,
                                                        int width, int D, float* scores) {
  const bool wide = D % 16 == 0 && cpu_has_avx512();
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* qi = q + static_cast<size_t>(i) * D;
    float* out = scores + static_cast<size_t>(i) * width;
    int s = 0;
    if (wide)
      for (; s + 4 <= count; s += 4) score_quad512(qi, D, k0 + s * k_col, k_col, out + s, width);
    for (; s + 3 <= count; s += 3) score_quad<3>(qi, D, k0 + s * k_col, k_col, out + s, width);
    for (; s < count; ++s) score_quad<1>(qi, D, k0 + s * k_col, k_col, out + s, width);
  }
  for (; i < n; ++i) {
    const float* qi = q + static_cast<size_t>(i) * D;
    float* out = scores + static_cast<size_t>(i) * width;
    int s = 0;
    for (; s + 8 <= count; s += 8) score_eight(qi, D, k0 + s * k_col, k_col, out + s);
    for (; s < count; ++s) {
      const float* key = k0 + s * k_col;
      __m256 a = _mm256_setzero_ps();
      for (int d = 0; d < D; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qi + d), _mm256_loadu_ps(key + d), a);
      out[s] = hsum(a);
    }
  }
}

// The first multiple of 16 of `width` keys' scores, 16 transposed keys at a
// time; returns how many keys that was.
__attribute__((target("avx512f,fma"))) int scores_transposed(const float* q, int n, const float* k0, int64_t k_col, int width,
                                                               int D, float* scores) {
  alignas(64) float kt[TRANSPOSE_MAX_DIM * 16];
  int s = 0;
  for (; s + 16 <= width; s += 16) {
    transpose_keys16(k0 + s * k_col, k_col, D, kt);
    int i = 0;
    for (; i + 8 <= n; i += 8) score_block_t<8>(q + static_cast<size_t>(i) * D, D, kt, scores + static_cast<size_t>(i) * width + s, width);
    for (; i + 4 <= n; i += 4) score_block_t<4>(q + static_cast<size_t>(i) * D, D, kt, scores + static_cast<size_t>(i) * width + s, width);
    for (; i < n; ++i) score_block_t<1>(q + static_cast<size_t>(i) * D, D, kt, scores + static_cast<size_t>(i) * width + s, width);
  }
  return s;
}

// scores (n, width): query i's dot product with key columns [lo, lo + width).
// Many queries (a prefill chunk's; a prefix group's where BlockAttention does
// not take it) go 16 keys at a time, transposed: no horizontal sums (same
// file, 16 rows, before BlockAttention: decode 5% faster).
__attribute__((target("avx2,fma"))) void scores_avx2(const float* q, int n, const float* k, int64_t k_col, int lo,
                                                      int width, int D, float* scores) {
  const float* k0 = k + static_cast<int64_t>(lo) * k_col;
  int s = 0;
  if (n >= TRANSPOSE_MIN_QUERIES && D % 16 == 0 && D <= TRANSPOSE_MAX_DIM && cpu_has_avx512())
    s = scores_transposed(q, n, k0, k_col, width, D, scores);
  if (s < width) scores_reduced(q, n, k0 + s * k_col, k_col, width - s, width, D, scores + s);
}

// out[d0, d0 + 8 * NJ) += sum over columns of weights[s] * v[s, d0 + ...].
template <int NJ>
__attribute__((target("avx2,fma"))) void weighted_sum_avx2(const float* weights, int n, const float* v, int64_t v_col,
                                                           int d0, float* out) {
  __m256 acc[NJ];
  for (int j = 0; j < NJ; ++j) acc[j] = _mm256_loadu_ps(out + d0 + 8 * j);
  for (int s = 0; s < n; ++s) {
    const __m256 w = _mm256_set1_ps(weights[s]);
    const float* row = v + static_cast<int64_t>(s) * v_col + d0;
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) acc[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 8 * j), acc[j]);
  }
  for (int j = 0; j < NJ; ++j) _mm256_storeu_ps(out + d0 + 8 * j, acc[j]);
}

__attribute__((target("avx2,fma"))) void add_weighted_sum(const float* weights, int n, const float* v, int64_t v_col, int Dv,
                                                          float* out) {
  int d0 = 0;
  for (; d0 + 64 <= Dv; d0 += 64) weighted_sum_avx2<8>(weights, n, v, v_col, d0, out);
  for (; d0 < Dv; d0 += 8) weighted_sum_avx2<1>(weights, n, v, v_col, d0, out);
}

// TQ queries' outputs (out, out_stride apart) += their weights (weights,
// w_stride apart) over n keys times 8 * TV value columns from d0. Each output
// still sums its keys in order, as add_weighted_sum does.
template <int TQ, int TV>
__attribute__((target("avx2,fma"))) void weighted_sum_tile(const float* weights, int64_t w_stride, int n, const float* v,
                                                           int64_t v_col, int d0, float* out, int64_t out_stride) {
  __m256 acc[TQ][TV];
  for (int i = 0; i < TQ; ++i)
    for (int j = 0; j < TV; ++j) acc[i][j] = _mm256_loadu_ps(out + i * out_stride + d0 + 8 * j);
  for (int s = 0; s < n; ++s) {
    const float* row = v + static_cast<int64_t>(s) * v_col + d0;
    __m256 vs[TV];
    for (int j = 0; j < TV; ++j) vs[j] = _mm256_loadu_ps(row + 8 * j);
    for (int i = 0; i < TQ; ++i) {
      const __m256 w = _mm256_broadcast_ss(weights + i * w_stride + s);
      for (int j = 0; j < TV; ++j) acc[i][j] = _mm256_fmadd_ps(w, vs[j], acc[i][j]);
    }
  }
  for (int i = 0; i < TQ; ++i)
    for (int j = 0; j < TV; ++j) _mm256_storeu_ps(out + i * out_stride + d0 + 8 * j, acc[i][j]);
}

// The same with 512-bit vectors (bit-identical: each output still sums its
// keys in order, one FMA per key).
template <int TQ, int TV>
__attribute__((target("avx512f,avx512vl,fma"))) void weighted_sum_tile512(const float* weights, int64_t w_stride, int n,
                                                                         const float* v, int64_t v_col, int d0, float* out,
                                                                         int64_t out_stride) {
  __m512 acc[TQ][TV];
  for (int i = 0; i < TQ; ++i)
    for (int j = 0; j < TV; ++j) acc[i][j] = _mm512_loadu_ps(out + i * out_stride + d0 + 16 * j);
  for (int s = 0; s < n; ++s) {
    const float* row = v + static_cast<int64_t>(s) * v_col + d0;
    __m512 vs[TV];
    for (int j = 0; j < TV; ++j) vs[j] = _mm512_loadu_ps(row + 16 * j);
    for (int i = 0; i < TQ; ++i) {
      const __m512 w = _mm512_set1_ps(weights[i * w_stride + s]);
      for (int j = 0; j < TV; ++j) acc[i][j] = _mm512_fmadd_ps(w, vs[j], acc[i][j]);
    }
  }
  for (int i = 0; i < TQ; ++i)
    for (int j = 0; j < TV; ++j) _mm512_storeu_ps(out + i * out_stride + d0 + 16 * j, acc[i][j]);
}

// Softmax weights in place over n scores; returns {max, sum}.
__attribute__((target("avx2,fma"))) std::pair<float, float> softmax_in_place(float* x, int n, float cap) {
  if (cap > 0.0f) {
    for (int i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
  }
  float top = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : top)
  for (int i = 0; i < n; ++i) top = x[i] > top ? x[i] : top;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < n; ++i) {
    x[i] = exp_nonpositive(x[i] - top);
    sum += x[i];
  }
  return {top, sum};
}

// Queries [m0, m1) of row b, head h.
void run_task(const Problem& p, int b, int h, int m0, int m1) {
  thread_local std::vector<float> scores;
  const int32_t* bounds = p.bounds + static_cast<size_t>(b) * p.M * 2;
  int lo = INT_MAX, hi = 0;
  for (int m = m0; m < m1; ++m) {
    lo = std::min(lo, bounds[2 * m]);
    hi = std::max(hi, bounds[2 * m + 1]);
  }
  const int width = std::max(0, hi - lo);
  const float* k = p.k + b * p.k_row + h * p.k_head;
  const float* v = p.v + b * p.v_row + h * p.v_head;
  const size_t first = (static_cast<size_t>(b) * p.H + h) * p.M;
  scores.resize(static_cast<size_t>(m1 - m0) * width);
  if (width > 0) scores_avx2(p.q + (first + m0) * p.D, m1 - m0, k, p.k_col, lo, width, p.D, scores.data());
  for (int m = m0; m < m1; ++m) {
    const int begin = bounds[2 * m], end = bounds[2 * m + 1];
    float* out = p.out + (first + m) * p.Dv;
    std::fill(out, out + p.Dv, 0.0f);
    if (end <= begin) {
      p.max[first + m] = -std::numeric_limits<float>::infinity();
      p.sum[first + m] = 0.0f;
      continue;
    }
    auto [top, sum] = softmax_in_place(scores.data() + static_cast<size_t>(m - m0) * width + (begin - lo), end - begin, p.cap);
    p.max[first + m] = top;
    p.sum[first + m] = sum;
  }
  // Values a block of keys at a time, every query of the task per block: the
  // block stays in L1 while the queries pass, where one query at a time would
  // stream all of V (750 KiB per head on a 3,000-token file) once per query.
  // Queries that see the whole block go several at a time, each value load
  // serving several FMAs (on a 3,000-token file, 16 queries: 1.2x faster
  // with AVX2; 6 or 4 at a time in 512-bit vectors where the CPU has them).
  for (int s0 = lo; s0 < hi; s0 += VALUE_BLOCK) {
    const int s1 = std::min(hi, s0 + VALUE_BLOCK);
    auto all_whole = [&](int a, int b) {
      for (int i = a; i < b; ++i)
        if (bounds[2 * i] > s0 || bounds[2 * i + 1] < s1) return false;
      return true;
    };
    auto weights = [&](int m) { return scores.data() + static_cast<size_t>(m - m0) * width + (s0 - lo); };
    const float* vb = v + static_cast<int64_t>(s0) * p.v_col;
    int m = m0;
    if (cpu_has_avx512() && p.Dv % 32 == 0) {
      auto wide = [&]<int TQ>(std::integral_constant<int, TQ>) {
        for (; m + TQ <= m1 && all_whole(m, m + TQ); m += TQ) {
          for (int d0 = 0; d0 < p.Dv; d0 += 32)
            weighted_sum_tile512<TQ, 2>(weights(m), width, s1 - s0, vb, p.v_col, d0, p.out + (first + m) * p.Dv, p.Dv);
        }
      };
      // A decoding row's query heads (3 per key head on the default model) too.
      wide(std::integral_constant<int, 6>{});
      wide(std::integral_constant<int, 4>{});
      wide(std::integral_constant<int, 3>{});
      wide(std::integral_constant<int, 2>{});
      wide(std::integral_constant<int, 1>{});
    }
    for (; m + 8 <= m1 && all_whole(m, m + 8); m += 8) {
      for (int d0 = 0; d0 < p.Dv; d0 += 8)
        weighted_sum_tile<8, 1>(weights(m), width, s1 - s0, vb, p.v_col, d0, p.out + (first + m) * p.Dv, p.Dv);
    }
    for (; m + 4 <= m1 && all_whole(m, m + 4); m += 4) {
      int d0 = 0;
      for (; d0 + 16 <= p.Dv; d0 += 16)
        weighted_sum_tile<4, 2>(weights(m), width, s1 - s0, vb, p.v_col, d0, p.out + (first + m) * p.Dv, p.Dv);
      if (d0 < p.Dv) weighted_sum_tile<4, 1>(weights(m), width, s1 - s0, vb, p.v_col, d0, p.out + (first + m) * p.Dv, p.Dv);
    }
    for (; m < m1; ++m) {
      const int b0 = std::max(bounds[2 * m], s0), b1 = std::min(bounds[2 * m + 1], s1);
      if (b1 <= b0) continue;
      add_weighted_sum(scores.data() + static_cast<size_t>(m - m0) * width + (b0 - lo), b1 - b0,
                       v + static_cast<int64_t>(b0) * p.v_col, p.v_col, p.Dv, p.out + (first + m) * p.Dv);
    }
  }
}

// One task: queries [m0, m1) of row b, head h of a problem.
struct Task {
  const Problem* p;
  int b, h, m0, m1;
};

// Appends a problem's tasks. Few tasks split unevenly over the threads (a
// group's 48 queries in 16s make 9 tasks on 2 threads); smaller chunks even
// them out. Chunks stay multiples of 4, so every query is reduced as before.
void add_tasks(const Problem& p, int threads, std::vector<Task>& tasks) {
  int chunk = QUERY_CHUNK, chunks = (p.M + chunk - 1) / chunk;
  while (chunk > 4 && (p.B * p.H * chunks) % threads != 0 && p.B * p.H * chunks < 4 * threads) {
    chunk -= 4;
    chunks = (p.M + chunk - 1) / chunk;
  }
  for (int b = 0; b < p.B; ++b)
    for (int h = 0; h < p.H; ++h)
      for (int m0 = 0; m0 < p.M; m0 += chunk) tasks.push_back({&p, b, h, m0, std::min(p.M, m0 + chunk)});
}

double problem_macs(const Problem& p) { return static_cast<double>(p.B) * p.H * p.M * p.S * (p.D + p.Dv); }

// Tasks [0, count) of a call worth `macs` multiply-adds: on the pool, or here when too small to repay waking it.
void run_tasks(int count, double macs, const std::function<void(int)>& task) {
  if (macs < PARALLEL_MIN_MACS) {
    for (int t = 0; t < count; ++t) task(t);
  } else {
    WorkerPool::instance().run(count, task);
  }
}

#endif

// Attention over each row's suffix columns plus, for rows in a group, the
// group's prefix block, merged through the softmax normalizers in the same
// call. Before, each layer built the merge from a dozen small MLX ops over the
// whole batch (plus filler shares for rows in no group), which cost a step of
// one long prompt beside fifteen short ones more than its prefix attention.
class GroupedAttentionCpu : public CpuKernel {
 public:
  GroupedAttentionCpu(mx::Stream stream, float scale, float cap, std::vector<std::vector<int>> rows)
      : CpuKernel(stream), scale_(scale), cap_(cap), rows_(std::move(rows)) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    dispatch_on_cpu(stream(), inputs, outputs, [inputs, out = outputs[0], scale = scale_, cap = cap_, rows = rows_]() mutable {
#if defined(__x86_64__)
      run(inputs, out, scale, cap, rows);
#else
      throw std::runtime_error("cpu_attention: x86-64 only");
#endif
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("cpu_attention: CPU only");
  }

  const char* name() const override { return "GroupedAttentionCpu"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const GroupedAttentionCpu&>(other);
    return o.scale_ == scale_ && o.cap_ == cap_ && o.rows_ == rows_;
  }

 private:
#if defined(__x86_64__)
  // inputs: q (B, H, M, D) unscaled, k, v (B, H, S, .), bounds (B, M, 2), then
  // per group its block's keys and values (1, H, length, .) and bounds (n, M, 2).
  static void run(const std::vector<mx::array>& in, mx::array& out, float scale, float cap,
                  const std::vector<std::vector<int>>& rows) {
    const auto &q = in[0], &k = in[1], &v = in[2];
    const int B = q.shape(0), H = q.shape(1), M = q.shape(2), D = q.shape(3), Dv = v.shape(3);
    const size_t per_row = static_cast<size_t>(H) * M;
    for (const auto& a : in)
      if (a.ndim() == 4 && a.strides(3) != 1) throw std::runtime_error("cpu_attention: keys and values need contiguous rows");

    std::vector<float> qs(q.size());
    const float* q0 = q.data<float>();
    for (size_t i = 0; i < qs.size(); ++i) qs[i] = q0[i] * scale;
    std::vector<float> own_max(B * per_row), own_sum(B * per_row);
    float* own_out = out.data<float>();  // the own share, then the result in place
    const size_t G = rows.size();
    // Each group's queries gathered head-major (1, H, n * M, D), as one row.
    std::vector<std::vector<float>> gq(G), gmax(G), gsum(G), gout(G);
    std::vector<Problem> problems;
    problems.reserve(G + 1);
    problems.push_back({qs.data(), k.data<float>(), v.data<float>(), in[3].data<int32_t>(), own_max.data(), own_sum.data(), own_out,
                        B, H, M, static_cast<int>(k.shape(2)), D, Dv,
                        k.strides(0), k.strides(1), k.strides(2), v.strides(0), v.strides(1), v.strides(2), cap});
    // Batch row -> its group and its place among the group's rows (-1: none).
    std::vector<int> group_of(B, -1), place_in_group(B, 0);
    for (size_t g = 0; g < G; ++g) {
      const auto &bk = in[4 + 3 * g], &bv = in[5 + 3 * g], &gb = in[6 + 3 * g];
      const int n = static_cast<int>(rows[g].size());
      for (int r = 0; r < n; ++r) {
        group_of[rows[g][r]] = static_cast<int>(g);
        place_in_group[rows[g][r]] = r;
      }
      gq[g].resize(static_cast<size_t>(H) * n * M * D);
      for (int h = 0; h < H; ++h)
        for (int r = 0; r < n; ++r) {
          std::copy_n(qs.data() + (rows[g][r] * per_row + static_cast<size_t>(h) * M) * D, static_cast<size_t>(M) * D,
                      gq[g].data() + (static_cast<size_t>(h) * n + r) * M * D);
        }
      gmax[g].resize(static_cast<size_t>(H) * n * M);
      gsum[g].resize(gmax[g].size());
      gout[g].resize(gmax[g].size() * Dv);
      problems.push_back({gq[g].data(), bk.data<float>(), bv.data<float>(), gb.data<int32_t>(), gmax[g].data(), gsum[g].data(),
                          gout[g].data(), 1, H, n * M, static_cast<int>(bk.shape(2)), D, Dv,
                          0, bk.strides(1), bk.strides(2), 0, bv.strides(1), bv.strides(2), cap});
    }
    const int threads = WorkerPool::instance().threads();
    std::vector<Task> tasks;
    double macs = 0;
    // A group's block goes to BlockAttention, which reads it once for all
    // the group's queries.
    std::vector<BlockAttention> blocks;
    blocks.reserve(G);
    for (size_t g = 0; g < G; ++g) {
      const Problem& p = problems[1 + g];
      if (cap == 0.0f && BlockAttention::suits(p.M, D, Dv)) {
        blocks.emplace_back(BlockAttentionProblem{p.q, p.k, p.v, p.bounds, p.k_head, p.k_col, p.v_head, p.v_col, H, p.M, p.S, D, Dv,
                                                  p.max, p.sum, p.out},
                            threads);
        macs += blocks.back().macs();
      } else {
        add_tasks(p, threads, tasks);
        macs += problem_macs(p);
      }
    }
    // The rows' own columns last: the blocks' tasks are the long ones (a
    // 3,000-token file against the rows' few dozen suffix columns), and the
    // threads take tasks in order, so the short ones fill in behind them.
    add_tasks(problems[0], threads, tasks);
    macs += problem_macs(problems[0]);
    std::vector<std::pair<int, int>> block_tasks;  // (block, its task)
    for (int b = 0; b < static_cast<int>(blocks.size()); ++b)
      for (int t = 0; t < blocks[b].tasks(); ++t) block_tasks.emplace_back(b, t);
    const int nb = static_cast<int>(block_tasks.size()), total = nb + static_cast<int>(tasks.size());
    auto task = [&](int t) {
      if (t < nb) {
        blocks[block_tasks[t].first].run_task(block_tasks[t].second);
      } else {
        const Task& x = tasks[t - nb];
        run_task(*x.p, x.b, x.h, x.m0, x.m1);
      }
    };
    auto merge = [&](int t) { blocks[t / H].merge(t % H); };
    const int merges = static_cast<int>(blocks.size()) * H;
    run_tasks(total, macs, task);
    run_tasks(merges, macs, merge);

    // Merge: a row's own share with its group's share of the same query.
    for (int b = 0; b < B; ++b) {
      const int g = group_of[b], r = place_in_group[b];
      const int n = g < 0 ? 0 : static_cast<int>(rows[g].size());
      for (int h = 0; h < H; ++h)
        for (int m = 0; m < M; ++m) {
          const size_t o = b * per_row + static_cast<size_t>(h) * M + m;
          float* dst = own_out + o * Dv;
          float a = 1.0f, w = 0.0f, den = own_sum[o];
          const float* pout = nullptr;
          if (g >= 0) {
            const size_t i = (static_cast<size_t>(h) * n + r) * M + m;
            const float top = std::max(own_max[o], gmax[g][i]);
            if (top == -std::numeric_limits<float>::infinity()) {
              std::fill(dst, dst + Dv, 0.0f);
              continue;
            }
            a = std::exp(own_max[o] - top);
            w = std::exp(gmax[g][i] - top);
            den = own_sum[o] * a + gsum[g][i] * w;
            pout = gout[g].data() + i * Dv;
          }
          if (den == 0.0f) {
            std::fill(dst, dst + Dv, 0.0f);
            continue;
          }
          for (int d = 0; d < Dv; ++d) dst[d] = (pout ? dst[d] * a + pout[d] * w : dst[d]) / den;
        }
    }
  }
#endif

  float scale_, cap_;
  std::vector<std::vector<int>> rows_;
};

// Bounds as the kernels read them: (n, M, 2) int32, contiguous.
mx::array contiguous_bounds(const mx::array& bounds, int n, int M) {
  auto cpu = mx::Device(mx::Device::cpu);
  if (bounds.shape() == mx::Shape{n, M, 2}) return row_contiguous(mx::astype(bounds, mx::int32, cpu));
  return mx::contiguous(mx::broadcast_to(mx::astype(bounds, mx::int32, cpu), {n, M, 2}, cpu), false, cpu);
}

}  // namespace

mx::array cpu_attention_bounds(const mx::array& bounds, int heads_per_kv) {
  const int n = bounds.shape(0), L = bounds.shape(1), G = heads_per_kv;
  if (bounds.is_available() && bounds.dtype() == mx::int32 && bounds.flags().row_contiguous) {
    // The step's bounds are made on the host: so is this, with no graph nodes.
    std::vector<int32_t> out(static_cast<size_t>(n) * G * L * 2);
    const int32_t* in = bounds.data<int32_t>();
    for (int r = 0; r < n; ++r) {
      for (int g = 0; g < G; ++g) std::copy_n(in + static_cast<size_t>(r) * L * 2, L * 2, out.data() + (static_cast<size_t>(r) * G + g) * L * 2);
    }
    return mx::array(out.data(), {n, G * L, 2}, mx::int32);
  }
  auto cpu = mx::Device(mx::Device::cpu);
  return mx::reshape(mx::broadcast_to(mx::expand_dims(mx::astype(bounds, mx::int32, cpu), 1, cpu), {n, G, L, 2}, cpu), {n, G * L, 2}, cpu);
}

bool cpu_attention_supported(int head_dim, int value_dim) {
  return cpu_has_avx2_fma() && head_dim % 8 == 0 && value_dim % 8 == 0;
}

mx::array cpu_grouped_attention(const mx::array& q, float scale, const mx::array& k, const mx::array& v,
                                const mx::array& bounds, const std::vector<CpuPrefixGroup>& groups, float logit_cap) {
  auto cpu = mx::Device(mx::Device::cpu);
  const int B = q.shape(0), H = q.shape(1), M = q.shape(2), Dv = v.shape(3);
  auto f32 = [&](const mx::array& a) { return mx::astype(a, mx::float32, cpu); };
  std::vector<mx::array> inputs{row_contiguous(f32(q)), f32(k), f32(v), contiguous_bounds(bounds, B, M)};
  std::vector<std::vector<int>> rows;
  for (const auto& g : groups) {
    if (g.keys.shape(0) != 1 || g.keys.shape(1) != H || g.values.shape(1) != H || g.keys.shape(2) != g.values.shape(2))
      throw std::invalid_argument("cpu_grouped_attention: a prefix block's shapes do not agree with the queries");
    inputs.insert(inputs.end(), {f32(g.keys), f32(g.values), contiguous_bounds(g.bounds, static_cast<int>(g.rows.size()), M)});
    rows.push_back(g.rows);
  }
  return mx::array({B, H, M, Dv}, mx::float32,
                   std::make_shared<GroupedAttentionCpu>(mx::default_stream(cpu), scale, logit_cap, std::move(rows)), inputs);
}

}  // namespace mlxb
