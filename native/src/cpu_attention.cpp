#include "cpu_attention.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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
// Keys per block of the weighted sum: 64 keys of a 64-wide head are 16 KiB.
constexpr int VALUE_BLOCK = 64;
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

// scores (n, width): query i's dot product with key columns [lo, lo + width).
__attribute__((target("avx2,fma"))) void scores_avx2(const float* q, int n, const float* k, int64_t k_col, int lo,
                                                      int width, int D, float* scores) {
  for (int s = 0; s < width; ++s) {
    const float* key = k + static_cast<int64_t>(lo + s) * k_col;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
      const float* q0 = q + static_cast<size_t>(i) * D;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int d = 0; d < D; d += 8) {
        const __m256 kd = _mm256_loadu_ps(key + d);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d), kd, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + D + d), kd, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + 2 * D + d), kd, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + 3 * D + d), kd, a3);
      }
      alignas(16) float four[4];
      _mm_store_ps(four, hsum4(a0, a1, a2, a3));
      for (int j = 0; j < 4; ++j) scores[static_cast<size_t>(i + j) * width + s] = four[j];
    }
    for (; i < n; ++i) {
      const float* qi = q + static_cast<size_t>(i) * D;
      __m256 a = _mm256_setzero_ps();
      for (int d = 0; d < D; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qi + d), _mm256_loadu_ps(key + d), a);
      scores[static_cast<size_t>(i) * width + s] = hsum(a);
    }
  }
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
  // Each output still sums its keys in order, so results are unchanged.
  for (int s0 = lo; s0 < hi; s0 += VALUE_BLOCK) {
    const int s1 = std::min(hi, s0 + VALUE_BLOCK);
    for (int m = m0; m < m1; ++m) {
      const int b0 = std::max(bounds[2 * m], s0), b1 = std::min(bounds[2 * m + 1], s1);
      if (b1 <= b0) continue;
      add_weighted_sum(scores.data() + static_cast<size_t>(m - m0) * width + (b0 - lo), b1 - b0,
                       v + static_cast<int64_t>(b0) * p.v_col, p.v_col, p.Dv, p.out + (first + m) * p.Dv);
    }
  }
}

void run_problem(const Problem& p) {
  const int chunks = (p.M + QUERY_CHUNK - 1) / QUERY_CHUNK;
  const int tasks = p.B * p.H * chunks;
  auto task = [&](int t) {
    const int chunk = t % chunks, bh = t / chunks;
    const int m0 = chunk * QUERY_CHUNK;
    run_task(p, bh / p.H, bh % p.H, m0, std::min(p.M, m0 + QUERY_CHUNK));
  };
  const double macs = static_cast<double>(p.B) * p.H * p.M * p.S * (p.D + p.Dv);
  if (macs < PARALLEL_MIN_MACS) {
    for (int t = 0; t < tasks; ++t) task(t);
  } else {
    WorkerPool::instance().run(tasks, task);
  }
}
#endif

class AttentionShareCpu : public mx::Primitive {
 public:
  AttentionShareCpu(mx::Stream stream, float cap) : mx::Primitive(stream), cap_(cap) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    dispatch_on_cpu(stream(), inputs, outputs, [q = inputs[0], k = inputs[1], v = inputs[2], bounds = inputs[3],
                                                max = outputs[0], sum = outputs[1], out = outputs[2], cap = cap_]() mutable {
#if defined(__x86_64__)
      if (k.strides(3) != 1 || v.strides(3) != 1) throw std::runtime_error("cpu_attention: keys and values need contiguous rows");
      Problem p{q.data<float>(), k.data<float>(), v.data<float>(), bounds.data<int32_t>(), max.data<float>(), sum.data<float>(),
                out.data<float>(), q.shape(0), q.shape(1), q.shape(2), k.shape(2), q.shape(3), v.shape(3),
                // A batch of one key set read by every row (broadcast) has stride 0.
                k.shape(0) == 1 ? 0 : k.strides(0), k.strides(1), k.strides(2),
                v.shape(0) == 1 ? 0 : v.strides(0), v.strides(1), v.strides(2), cap};
      run_problem(p);
#else
      throw std::runtime_error("cpu_attention: x86-64 only");
#endif
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("cpu_attention: CPU only");
  }

  const char* name() const override { return "AttentionShareCpu"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return static_cast<const AttentionShareCpu&>(other).cap_ == cap_;
  }

 private:
  float cap_;
};

}  // namespace

bool cpu_attention_supported(int head_dim, int value_dim) {
  return cpu_has_avx2_fma() && head_dim % 8 == 0 && value_dim % 8 == 0;
}

std::vector<mx::array> cpu_attention_share(const mx::array& q, const mx::array& k, const mx::array& v,
                                           const mx::array& bounds, float logit_cap) {
  auto cpu = mx::Device(mx::Device::cpu);
  const int B = q.shape(0), H = q.shape(1), M = q.shape(2), Dv = v.shape(3);
  if (k.ndim() != 4 || v.ndim() != 4 || k.shape(1) != H || v.shape(1) != H || k.shape(3) != q.shape(3) ||
      k.shape(2) != v.shape(2) || (k.shape(0) != B && k.shape(0) != 1) || v.shape(0) != k.shape(0)) {
    throw std::invalid_argument("cpu_attention_share: query, key and value shapes do not agree");
  }
  auto qc = mx::contiguous(mx::astype(q, mx::float32, cpu), false, cpu);
  auto bc = mx::contiguous(mx::broadcast_to(mx::astype(bounds, mx::int32, cpu), {B, M, 2}, cpu), false, cpu);
  return mx::array::make_arrays({{B, H, M, 1}, {B, H, M, 1}, {B, H, M, Dv}}, {mx::float32, mx::float32, mx::float32},
                                std::make_shared<AttentionShareCpu>(mx::default_stream(cpu), logit_cap),
                                {qc, mx::astype(k, mx::float32, cpu), mx::astype(v, mx::float32, cpu), bc});
}

}  // namespace mlxb
