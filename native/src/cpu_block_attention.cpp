#include "cpu_block_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_dispatch.h"
#include "cpu_math.h"

namespace mlxb {
namespace {

constexpr int LANES = 16;
constexpr int MAX_DIM = 256;
// Keys per task: 256 keys by 48 queries of scores are 48 KiB, and a 64-wide
// head's values for them 64 KiB, both held in L2 while the task runs.
constexpr int CHUNK = 256;
constexpr int MIN_CHUNK = 64;
// Queries per task (a prompt's suffix after a prefix has many): 192 by 256
// keys of scores are 192 KiB.
constexpr int QUERY_BLOCK = 192;
// Chunks' partial results per call at most (16 MiB): long blocks under many
// queries take longer chunks.
constexpr int64_t PART_FLOATS = 1 << 22;

#if defined(__x86_64__)
// Scores of TJ keys against TV vectors of queries: scores[j * width + 16 v + l]
// is key j's dot product with query 16 v + l (element d at qt[d * npad +
// 16 v + l]). Each key element is broadcast against a vector of queries, so
// the keys stay as stored; each score sums its D products in order, as the
// other kernels do.
template <int TJ, int TV>
__attribute__((target("avx512f"))) inline void score_tile(const float* qt, int npad, const float* key, int64_t k_col, int D,
                                                        float* scores, int width) {
  __m512 acc[TJ][TV];
  for (int j = 0; j < TJ; ++j)
    for (int v = 0; v < TV; ++v) acc[j][v] = _mm512_setzero_ps();
  for (int d = 0; d < D; ++d) {
    __m512 qv[TV];
    for (int v = 0; v < TV; ++v) qv[v] = _mm512_loadu_ps(qt + static_cast<int64_t>(d) * npad + LANES * v);
    for (int j = 0; j < TJ; ++j) {
      const __m512 kj = _mm512_set1_ps(key[j * k_col + d]);
      for (int v = 0; v < TV; ++v) acc[j][v] = _mm512_fmadd_ps(qv[v], kj, acc[j][v]);
    }
  }
  for (int j = 0; j < TJ; ++j)
    for (int v = 0; v < TV; ++v) _mm512_storeu_ps(scores + static_cast<int64_t>(j) * width + LANES * v, acc[j][v]);
}

// Asks for rows [s0, s1) (`bytes` each, `stride` floats apart) to be brought in.
template <_mm_hint HINT>
inline void prefetch_rows(const float* base, int64_t stride, int s0, int s1, int bytes) {
  for (int s = s0; s < s1; ++s)
    for (int b = 0; b < bytes; b += 64) _mm_prefetch(reinterpret_cast<const char*>(base + s * stride) + b, HINT);
}

// `count` keys against the query vectors [v0, v0 + TV), TJ keys at a time.
// The block comes from memory (a 3,000-token file is 46 MB a step on the
// default model): each tile asks for the next tile's keys, and for its own
// keys' values, which the value pass reads next (a step's block attention,
// 30 layers from memory: 11.3-11.9 ms before, 10.5-11.2 ms after).
template <int TJ, int TV>
__attribute__((target("avx512f"))) void score_keys(const float* qt, int npad, const float* k, int64_t k_col, int D, int count,
                                                 float* scores, int width, const float* v, int64_t v_col, int Dv) {
  int s = 0;
  for (; s + TJ <= count; s += TJ) {
    prefetch_rows<_MM_HINT_T0>(k, k_col, s + TJ, std::min(count, s + 2 * TJ), D * 4);
    prefetch_rows<_MM_HINT_T1>(v, v_col, s, s + TJ, Dv * 4);
    score_tile<TJ, TV>(qt, npad, k + s * k_col, k_col, D, scores + static_cast<int64_t>(s) * width, width);
  }
  prefetch_rows<_MM_HINT_T1>(v, v_col, s, count, Dv * 4);
  for (; s < count; ++s) score_tile<1, TV>(qt, npad, k + s * k_col, k_col, D, scores + static_cast<int64_t>(s) * width, width);
}

// out[q][d0, d0 + 16 TV) of TQ queries from q0 = sum over `count` keys of
// weight * value: each value load serves TQ queries.
template <int TQ, int TV>
__attribute__((target("avx512f"))) void value_tile(const float* weights, int npad, int count, const float* v, int64_t v_col,
                                                 int d0, float* out, int Dv) {
  __m512 acc[TQ][TV];
  for (int i = 0; i < TQ; ++i)
    for (int j = 0; j < TV; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int s = 0; s < count; ++s) {
    const float* row = v + s * v_col + d0;
    __m512 vs[TV];
    for (int j = 0; j < TV; ++j) vs[j] = _mm512_loadu_ps(row + LANES * j);
    for (int i = 0; i < TQ; ++i) {
      const __m512 w = _mm512_set1_ps(weights[static_cast<int64_t>(s) * npad + i]);
      for (int j = 0; j < TV; ++j) acc[i][j] = _mm512_fmadd_ps(w, vs[j], acc[i][j]);
    }
  }
  for (int i = 0; i < TQ; ++i)
    for (int j = 0; j < TV; ++j) _mm512_storeu_ps(out + i * Dv + d0 + LANES * j, acc[i][j]);
}

template <int TQ>
__attribute__((target("avx512f"))) void value_columns(const float* weights, int npad, int count, const float* v, int64_t v_col,
                                                    int Dv, float* out) {
  for (int d0 = 0; d0 < Dv;) {
    switch (std::min(4, (Dv - d0) / LANES)) {
      case 4: value_tile<TQ, 4>(weights, npad, count, v, v_col, d0, out, Dv); d0 += 64; break;
      case 3: value_tile<TQ, 3>(weights, npad, count, v, v_col, d0, out, Dv); d0 += 48; break;
      case 2: value_tile<TQ, 2>(weights, npad, count, v, v_col, d0, out, Dv); d0 += 32; break;
      default: value_tile<TQ, 1>(weights, npad, count, v, v_col, d0, out, Dv); d0 += 16; break;
    }
  }
}
#endif

}  // namespace

bool BlockAttention::suits(int queries, int head_dim, int value_dim) {
#if defined(__x86_64__)
  // Below a vector of queries the lanes would be mostly padding. (One row's
  // 3 queries over a 3,000-token file: no faster here, as its step waits on
  // reading the block.)
  return cpu_has_avx512() && queries >= LANES && head_dim % LANES == 0 && head_dim <= MAX_DIM && value_dim % LANES == 0;
#else
  return false;
#endif
}

BlockAttention::BlockAttention(const BlockAttentionProblem& p, int threads) : p_(p) {
  npad_ = (p.N + LANES - 1) / LANES * LANES;
  qblocks_ = (npad_ + QUERY_BLOCK - 1) / QUERY_BLOCK;
  // Enough tasks for every thread to take several (the last ones even out),
  // and no more chunks' partial results than PART_FLOATS.
  chunk_ = CHUNK;
  while (chunk_ > MIN_CHUNK && p.H * qblocks_ * ((p.S + chunk_ - 1) / chunk_) < 4 * threads) chunk_ /= 2;
  const int most = std::max<int64_t>(1, PART_FLOATS / (static_cast<int64_t>(p.H) * p.N * (p.Dv + 2)));
  if ((p.S + chunk_ - 1) / chunk_ > most) chunk_ = ((p.S + most - 1) / most + LANES - 1) / LANES * LANES;
  chunks_ = std::max(1, (p.S + chunk_ - 1) / chunk_);
  qt_.assign(static_cast<size_t>(p.H) * p.D * npad_, 0.0f);
  for (int h = 0; h < p.H; ++h)
    for (int n = 0; n < p.N; ++n)
      for (int d = 0; d < p.D; ++d)
        qt_[(static_cast<size_t>(h) * p.D + d) * npad_ + n] = p.q[(static_cast<size_t>(h) * p.N + n) * p.D + d];
  // Not zeroed: the tasks write every entry (a 3,000-token block's partial
  // outputs are 440 KiB per layer).
  const size_t parts = static_cast<size_t>(p.H) * chunks_ * p.N;
  part_max_.reset(new float[parts]);
  part_sum_.reset(new float[parts]);
  part_out_.reset(new float[parts * p.Dv]);
}

double BlockAttention::macs() const { return static_cast<double>(p_.H) * p_.N * p_.S * (p_.D + p_.Dv); }

__attribute__((target("avx512f,avx512bw"))) void BlockAttention::run_task(int t) {
#if defined(__x86_64__)
  // Task t: head h, queries [q0, q1) (width lanes), keys [s0, s0 + count).
  const int c = t % chunks_, qb = t / chunks_ % qblocks_, h = t / chunks_ / qblocks_;
  const int s0 = c * chunk_, count = std::min(p_.S, s0 + chunk_) - s0;
  const int q0 = qb * QUERY_BLOCK, width = std::min(npad_ - q0, QUERY_BLOCK), q1 = std::min(p_.N, q0 + width);
  const size_t part = (static_cast<size_t>(h) * chunks_ + c) * p_.N;
  float* pmax = part_max_.get() + part;
  float* psum = part_sum_.get() + part;
  float* pout = part_out_.get() + part * p_.Dv;
  if (count <= 0) {
    std::fill(pmax + q0, pmax + q1, -std::numeric_limits<float>::infinity());
    std::fill(psum + q0, psum + q1, 0.0f);
    std::fill(pout + static_cast<size_t>(q0) * p_.Dv, pout + static_cast<size_t>(q1) * p_.Dv, 0.0f);
    return;
  }
  thread_local std::vector<float> scores;  // (count, width)
  scores.resize(static_cast<size_t>(count) * width);
  const float* k = p_.k + h * p_.k_head + s0 * p_.k_col;
  const float* v = p_.v + h * p_.v_head + s0 * p_.v_col;

  // Scores, three query vectors (48 queries) by 8 keys at a time: 24
  // accumulators, 11 loads per 24 multiply-adds.
  const float* qt = qt_.data() + static_cast<size_t>(h) * p_.D * npad_ + q0;
  for (int v0 = 0, left = width / LANES; left > 0;) {
    const int tv = left == 4 || left == 2 ? 2 : std::min(left, 3);
    const float* qv = qt + LANES * v0;
    float* sv = scores.data() + LANES * v0;
    if (tv == 3) score_keys<8, 3>(qv, npad_, k, p_.k_col, p_.D, count, sv, width, v, p_.v_col, p_.Dv);
    else if (tv == 2) score_keys<12, 2>(qv, npad_, k, p_.k_col, p_.D, count, sv, width, v, p_.v_col, p_.Dv);
    else score_keys<16, 1>(qv, npad_, k, p_.k_col, p_.D, count, sv, width, v, p_.v_col, p_.Dv);
    v0 += tv;
    left -= tv;
  }

  // Softmax down each query's column, a vector of queries at a time: max,
  // then exp and sum. Columns outside a query's bounds (rows that use less of
  // the block, a sliding window) weigh 0.
  const float inf = std::numeric_limits<float>::infinity();
  for (int v0 = 0; v0 < width; v0 += LANES) {
    float* col = scores.data() + v0;
    alignas(64) int32_t begins[LANES], ends[LANES];
    for (int l = 0; l < LANES; ++l) {
      // Padding lanes (zero queries) see everything: no masking pass for them.
      const int n = q0 + v0 + l;
      begins[l] = (n < p_.N ? p_.bounds[2 * n] : 0) - s0;
      ends[l] = (n < p_.N ? p_.bounds[2 * n + 1] : p_.S) - s0;
    }
    const __m512i begin = _mm512_load_si512(begins), end = _mm512_load_si512(ends);
    __m512 top = _mm512_set1_ps(-inf);
    if (*std::max_element(begins, begins + LANES) <= 0 && *std::min_element(ends, ends + LANES) >= count) {
      for (int s = 0; s < count; ++s) top = _mm512_max_ps(top, _mm512_loadu_ps(col + static_cast<int64_t>(s) * width));
    } else {
      for (int s = 0; s < count; ++s) {
        const __m512i at = _mm512_set1_epi32(s);
        const __mmask16 seen = _mm512_cmpge_epi32_mask(at, begin) & _mm512_cmplt_epi32_mask(at, end);
        float* row = col + static_cast<int64_t>(s) * width;
        const __m512 x = _mm512_mask_blend_ps(seen, _mm512_set1_ps(-inf), _mm512_loadu_ps(row));
        _mm512_storeu_ps(row, x);
        top = _mm512_max_ps(top, x);
      }
    }
    // A query that sees no column here: every exp is of -inf, so 0.
    const __m512 shift = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(top, _mm512_set1_ps(-inf), _CMP_EQ_OQ), top, _mm512_setzero_ps());
    __m512 sum = _mm512_setzero_ps();
    for (int s = 0; s < count; ++s) {
      float* row = col + static_cast<int64_t>(s) * width;
      const __m512 e = exp_nonpositive512(_mm512_sub_ps(_mm512_loadu_ps(row), shift));
      _mm512_storeu_ps(row, e);
      sum = _mm512_add_ps(sum, e);
    }
    alignas(64) float tops[LANES], sums[LANES];
    _mm512_store_ps(tops, top);
    _mm512_store_ps(sums, sum);
    for (int l = 0; l < LANES && q0 + v0 + l < p_.N; ++l) {
      pmax[q0 + v0 + l] = tops[l];
      psum[q0 + v0 + l] = sums[l];
    }
  }

  // Values: six queries by up to 64 value columns at a time.
  int q = q0;
  for (; q + 6 <= q1; q += 6) value_columns<6>(scores.data() + (q - q0), width, count, v, p_.v_col, p_.Dv, pout + q * p_.Dv);
  for (; q < q1; ++q) value_columns<1>(scores.data() + (q - q0), width, count, v, p_.v_col, p_.Dv, pout + q * p_.Dv);
#endif
}

// Per query: the chunks' weights exp(max_c - top), then the output a vector
// of value columns at a time, adding the chunks in order (the same sums as a
// scalar loop, which had taken 0.7 ms of a 16-row step's 39).
__attribute__((target("avx512f"))) void BlockAttention::merge(int h) {
#if defined(__x86_64__)
  const size_t per_head = static_cast<size_t>(chunks_) * p_.N;
  thread_local std::vector<float> weights;
  weights.resize(chunks_);
  for (int n = 0; n < p_.N; ++n) {
    const size_t first = h * per_head + n;  // chunk c at first + c * N
    float top = -std::numeric_limits<float>::infinity();
    for (int c = 0; c < chunks_; ++c) top = std::max(top, part_max_[first + static_cast<size_t>(c) * p_.N]);
    const size_t o = static_cast<size_t>(h) * p_.N + n;
    float* out = p_.out + o * p_.Dv;
    float sum = 0.0f;
    if (top == -std::numeric_limits<float>::infinity()) {
      std::fill(out, out + p_.Dv, 0.0f);
    } else {
      for (int c = 0; c < chunks_; ++c) {
        const size_t i = first + static_cast<size_t>(c) * p_.N;
        weights[c] = std::exp(part_max_[i] - top);
        sum += part_sum_[i] * weights[c];
      }
      const float* parts = part_out_.get() + first * p_.Dv;
      const size_t chunk_stride = static_cast<size_t>(p_.N) * p_.Dv;
      for (int d = 0; d < p_.Dv; d += LANES) {
        __m512 acc = _mm512_setzero_ps();
        for (int c = 0; c < chunks_; ++c)
          acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(parts + c * chunk_stride + d), _mm512_set1_ps(weights[c])));
        _mm512_storeu_ps(out + d, acc);
      }
    }
    p_.max[o] = top;
    p_.sum[o] = sum;
  }
#endif
}

}  // namespace mlxb
