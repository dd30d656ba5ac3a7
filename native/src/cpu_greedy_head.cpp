#include "cpu_greedy_head.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <stdexcept>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_argmax.h"
#include "cpu_dispatch.h"
#include "cpu_worker_pool.h"
#include "mlx/primitives.h"
#include "sampling.h"

namespace mlxb {
namespace {

constexpr int LANES = CpuQuantWeight::COLUMN_GROUP;
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

// x is rounded to whole multiples of max|x| / X_LEVELS. A row's hidden state
// has a few outlying dimensions (about 17x its RMS on the default model), so
// 8 bits a row left thousands of columns in the shortlist; 15 bits leave a
// median of 2 and at most 81 over 400 positions of a real prompt (per-column
// 8-bit weights). The digits: x = 256 hi + lo, hi in -64..64, lo in -128..127.
constexpr float X_LEVELS = 16383.0f;
// The bound's terms, below, widened for float rounding in the approximation
// and the kernel's own error against exact arithmetic (x rounded to 22 bits a
// block, float sums): both far under these margins.
constexpr float X_TERM = 1.0f / (2.0f * X_LEVELS) + 1.0f / 65536.0f;
constexpr float SLACK = 1.002f;
// Rows whose largest |x| is below this are computed exactly: the bound's
// products could underflow (a hidden state after the final norm is of order 1).
constexpr float MIN_PEAK = 1e-20f;
// x rows per tile: two sums each, 20 of the 32 vector registers.
constexpr int TILE_ROWS = 10;
// Beyond this share of the column groups in its shortlist, a row computes all
// of them exactly: the approximation has not narrowed it enough to pay.
constexpr int FULL_ROW_DIVISOR = 4;

struct RowDigits {
  float scale = 0;     // of the digits: x ~ scale * (256 hi + lo)
  float peak = 0;      // max |x|
  float l1 = 0;        // sum |rounded x|
  int32_t hi_sum = 0;  // sums of the digits: the codes are offset by 128
  int32_t lo_sum = 0;
  bool exact_only = false;  // inf or NaN in x, or its peak under MIN_PEAK: every logit is computed exactly
};

void round_row(const float* x, int K, int8_t* hi, int8_t* lo, RowDigits& d) {
  float peak = 0;
  for (int k = 0; k < K; ++k) {
    if (!std::isfinite(x[k])) {
      d.exact_only = true;
      return;
    }
    peak = std::max(peak, std::abs(x[k]));
  }
  if (peak > 0 && peak < MIN_PEAK) {
    d.exact_only = true;
    return;
  }
  d.peak = peak;
  d.scale = peak / X_LEVELS;
  const float inv = peak > 0 ? X_LEVELS / peak : 0.0f;
  double l1 = 0;
  for (int k = 0; k < K; ++k) {
    const int v = std::clamp(static_cast<int>(std::nearbyint(x[k] * inv)), -static_cast<int>(X_LEVELS), static_cast<int>(X_LEVELS));
    const int low = ((v + 128) & 255) - 128;
    hi[k] = static_cast<int8_t>((v - low) / 256);
    lo[k] = static_cast<int8_t>(low);
    d.hi_sum += hi[k];
    d.lo_sum += lo[k];
    l1 += std::abs(v);
  }
  d.l1 = static_cast<float>(l1) * d.scale;
}

struct Step {
  int B = 0, K = 0, N = 0, groups = 0;
  const uint8_t* codes = nullptr;     // GreedyHead::codes_
  const float* col_scale = nullptr;   // per column
  const float* col_l1 = nullptr;      // per column
  const int8_t* digits = nullptr;     // (B, 2, K): hi then lo
  const RowDigits* rows = nullptr;
  const std::vector<std::vector<int32_t>>* masks = nullptr;
  float* upper = nullptr;  // (B, groups * 16): each logit's upper bound, -inf where not allowed
};

#if defined(__x86_64__)
inline __mmask16 allowed_lanes(const Step& s, int r, int c) {
  const int first = c * LANES;
  __mmask16 lanes = first + LANES <= s.N ? 0xFFFF : static_cast<__mmask16>((1u << (s.N - first)) - 1);
  const auto& mask = (*s.masks)[r];
  if (mask.empty()) return lanes;
  const size_t word = static_cast<size_t>(first) >> 5;
  const uint32_t bits = word < mask.size() ? static_cast<uint32_t>(mask[word]) >> (first & 31) : 0u;
  return lanes & static_cast<__mmask16>(bits);
}

// Column group c for TM rows from m0: the approximate logits' upper bounds
// into s.upper, and each row's largest lower bounds so far, lane by lane, into lower (B, 16).
template <int TM>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void approx_tile(const Step& s, int m0, int c, float* lower) {
  const int quads = s.K / 4;
  __m512i hi[TM], lo[TM];
#pragma GCC unroll 10
  for (int m = 0; m < TM; ++m) hi[m] = lo[m] = _mm512_setzero_si512();
  const uint8_t* w = s.codes + static_cast<size_t>(c) * quads * 64;
  for (int q = 0; q < quads; ++q) {
    _mm_prefetch(reinterpret_cast<const char*>(w + q * 64 + 1024), _MM_HINT_T0);
    const __m512i codes = _mm512_loadu_si512(w + q * 64);
#pragma GCC unroll 10
    for (int m = 0; m < TM; ++m) {
      const int8_t* x = s.digits + static_cast<size_t>(m0 + m) * 2 * s.K + 4 * q;
      // As in cpu_qmatmul.cpp: unsigned codes by 4 signed digits broadcast from memory.
      asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(hi[m]) : "v"(codes), "m"(*reinterpret_cast<const int32_t*>(x)));
      asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(lo[m]) : "v"(codes), "m"(*reinterpret_cast<const int32_t*>(x + s.K)));
    }
  }
  const __m512 scale = _mm512_loadu_ps(s.col_scale + c * LANES);
  const __m512 l1 = _mm512_loadu_ps(s.col_l1 + c * LANES);
  const __m512 neg_inf = _mm512_set1_ps(NEG_INF);
#pragma GCC unroll 10
  for (int m = 0; m < TM; ++m) {
    const int r = m0 + m;
    const RowDigits& d = s.rows[r];
    // sum(code * digit) = sum(w * digit) + 128 sum(digit).
    const __m512i h = _mm512_sub_epi32(hi[m], _mm512_set1_epi32(128 * d.hi_sum));
    const __m512i l = _mm512_sub_epi32(lo[m], _mm512_set1_epi32(128 * d.lo_sum));
    const __m512 dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(h), _mm512_set1_ps(256.0f), _mm512_cvtepi32_ps(l));
    const __m512 approx = _mm512_mul_ps(dot, _mm512_mul_ps(scale, _mm512_set1_ps(d.scale)));
    // |exact - approx| <= scale / 2 * sum|rounded x| + max|x| / (2 X_LEVELS) * sum|w|.
    const __m512 bound = _mm512_fmadd_ps(scale, _mm512_set1_ps(SLACK * 0.5f * d.l1), _mm512_mul_ps(l1, _mm512_set1_ps(SLACK * X_TERM * d.peak)));
    const __mmask16 lanes = allowed_lanes(s, r, c);
    _mm512_storeu_ps(s.upper + static_cast<size_t>(r) * s.groups * LANES + c * LANES,
                     _mm512_mask_blend_ps(lanes, neg_inf, _mm512_add_ps(approx, bound)));
    float* row_lower = lower + static_cast<size_t>(r) * LANES;
    _mm512_storeu_ps(row_lower, _mm512_max_ps(_mm512_loadu_ps(row_lower), _mm512_mask_blend_ps(lanes, neg_inf, _mm512_sub_ps(approx, bound))));
  }
}

// Row r's pick from its upper bounds and the best lower bound: the exact
// logits of its shortlisted column groups, or of all of them.
int pick_row(const Step& s, const CpuQuantWeight& weight, const float* x, int r, float best_lower) {
  thread_local std::vector<float> exact;
  thread_local std::vector<int> shortlist;
  exact.resize(static_cast<size_t>(s.groups) * LANES);
  const auto& mask = (*s.masks)[r];
  const auto all_exact = [&] {
    shortlist.resize(s.groups);
    for (int c = 0; c < s.groups; ++c) shortlist[c] = c;
    cpu_quantized_matmul_groups(x, r, s.B, weight, shortlist, exact.data());
    std::span<float> logits(exact.data(), s.N);
    apply_allowed_mask(logits, mask);
    return first_max_index(logits.data(), s.N);
  };
  if (s.rows[r].exact_only) return all_exact();
  // No token allowed: every logit is -inf to the full path, which picks the first.
  if (best_lower == NEG_INF) return 0;
  shortlist.clear();
  const float* upper = s.upper + static_cast<size_t>(r) * s.groups * LANES;
  for (int c = 0; c < s.groups; ++c) {
    for (int j = 0; j < LANES; ++j) {
      if (upper[c * LANES + j] >= best_lower) {
        shortlist.push_back(c);
        break;
      }
    }
  }
  if (static_cast<int>(shortlist.size()) * FULL_ROW_DIVISOR > s.groups) return all_exact();
  cpu_quantized_matmul_groups(x, r, s.B, weight, shortlist, exact.data());
  int pick = -1;
  float best = NEG_INF;
  for (int c : shortlist) {
    for (int n = c * LANES; n < std::min(s.N, (c + 1) * LANES); ++n) {
      if (mask_allows(mask, n) && exact[n] > best) {
        best = exact[n];
        pick = n;
      }
    }
  }
  // Nothing above -inf in the shortlist (NaN or infinite bounds, from NaN or
  // overflowing values): every logit exactly, as the full path picks.
  return pick >= 0 ? pick : all_exact();
}
#endif

class GreedyPicksCpu : public CpuKernel {
 public:
  GreedyPicksCpu(mx::Stream stream, CpuQuantWeight weight, std::vector<std::vector<int32_t>> masks, int limit)
      : CpuKernel(stream), weight_(std::move(weight)), masks_(std::move(masks)), limit_(limit) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    dispatch_on_cpu(stream(), inputs, outputs, [hidden = inputs[0], codes = inputs[2], columns = inputs[3], out = outputs[0],
                                                weight = weight_, masks = masks_, limit = limit_]() mutable {
#if defined(__x86_64__)
      Step s;
      s.B = hidden.shape(0);
      s.K = hidden.shape(1);
      // Only the columns below the limit are candidates: the column groups past it are not read.
      s.N = std::min(weight.out_features, limit);
      s.groups = std::min(static_cast<int>(columns.shape(1)) / LANES, (s.N + LANES - 1) / LANES);
      s.codes = codes.data<uint8_t>();
      s.col_scale = columns.data<float>();
      s.col_l1 = columns.data<float>() + columns.shape(1);
      s.masks = &masks;
      thread_local std::vector<int8_t> digits;
      thread_local std::vector<RowDigits> rows;
      thread_local std::vector<float> upper;
      digits.assign(static_cast<size_t>(s.B) * 2 * s.K, 0);
      rows.assign(s.B, RowDigits{});
      upper.resize(static_cast<size_t>(s.B) * s.groups * LANES);
      const float* x = hidden.data<float>();
      for (int r = 0; r < s.B; ++r) {
        int8_t* hi = digits.data() + static_cast<size_t>(r) * 2 * s.K;
        round_row(x + static_cast<size_t>(r) * s.K, s.K, hi, hi + s.K, rows[r]);
      }
      s.digits = digits.data();
      s.rows = rows.data();
      s.upper = upper.data();

      auto& pool = WorkerPool::instance();
      const int tasks = std::clamp(s.groups / 4, 1, pool.threads() * 4);
      const int per_task = (s.groups + tasks - 1) / tasks;
      std::vector<float> lower(static_cast<size_t>(tasks) * s.B * LANES, NEG_INF);
      const int row_tiles = (s.B + TILE_ROWS - 1) / TILE_ROWS;
      pool.run(tasks, [&](int t) {
        float* task_lower = lower.data() + static_cast<size_t>(t) * s.B * LANES;
        for (int c = t * per_task; c < std::min(s.groups, (t + 1) * per_task); ++c) {
          // Tiles as even as they can be, as in cpu_qmatmul.cpp.
          for (int i = 0, m0 = 0; i < row_tiles; ++i) {
            const int tm = (s.B - m0) / (row_tiles - i);
            with_tile_rows<TILE_ROWS>(tm, [&]<int TM>() { approx_tile<TM>(s, m0, c, task_lower); });
            m0 += tm;
          }
        }
      });
      int32_t* picks = out.data<int32_t>();
      pool.run(s.B, [&](int r) {
        float best_lower = NEG_INF;
        for (int t = 0; t < tasks; ++t) {
          const float* v = lower.data() + (static_cast<size_t>(t) * s.B + r) * LANES;
          best_lower = std::max(best_lower, *std::max_element(v, v + LANES));
        }
        picks[r] = pick_row(s, weight, x + static_cast<size_t>(r) * s.K, r, best_lower);
      });
#else
      throw std::runtime_error("greedy head: x86-64 only");
#endif
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("greedy head: CPU only");
  }
  const char* name() const override { return "GreedyPicksCpu"; }
  bool is_equivalent(const mx::Primitive&) const override { return false; }

 private:
  CpuQuantWeight weight_;
  std::vector<std::vector<int32_t>> masks_;
  int limit_;
};

}  // namespace

std::optional<GreedyHead> GreedyHead::build(const CpuQuantWeight& w) {
  if (!w.int_dot || !cpu_has_avx512()) return std::nullopt;
  const int K = w.in_features(), groups = w.packed.shape(0), quads = K / 4;
  std::vector<uint8_t> codes(static_cast<size_t>(groups) * quads * 64);
  std::vector<float> columns(2 * static_cast<size_t>(groups) * LANES, 0.0f);
  WorkerPool::instance().run(groups, [&](int c) {
    thread_local std::vector<float> values;
    values.resize(static_cast<size_t>(LANES) * K);
    cpu_dequantize_column_group(w, c, values.data());
    for (int j = 0; j < LANES; ++j) {
      const float* v = values.data() + static_cast<size_t>(j) * K;
      float peak = 0;
      double l1 = 0;
      for (int k = 0; k < K; ++k) {
        peak = std::max(peak, std::abs(v[k]));
        l1 += std::abs(v[k]);
      }
      const float scale = peak / 127.0f;
      columns[c * LANES + j] = scale;
      columns[static_cast<size_t>(groups) * LANES + c * LANES + j] = static_cast<float>(l1);
      uint8_t* out = codes.data() + static_cast<size_t>(c) * quads * 64;
      for (int k = 0; k < K; ++k) {
        const int q = scale > 0 ? std::clamp(static_cast<int>(std::nearbyint(v[k] / scale)), -127, 127) : 0;
        out[(k / 4) * 64 + 4 * j + k % 4] = static_cast<uint8_t>(q + 128);
      }
    }
  });
  GreedyHead head(w, mx::array(codes.data(), {groups, quads * 64}, mx::uint8),
                  mx::array(columns.data(), {2, groups * LANES}, mx::float32));
  mx::eval(head.codes_, head.columns_);
  return head;
}

mx::array GreedyHead::picks(const mx::array& hidden, std::vector<std::vector<int32_t>> masks, int limit) const {
  auto cpu = mx::Device(mx::Device::cpu);
  if (hidden.ndim() != 2 || hidden.shape(1) != weight_.in_features()) {
    throw std::invalid_argument("greedy head: (B, " + std::to_string(weight_.in_features()) + ") hidden states expected");
  }
  if (static_cast<int>(masks.size()) != hidden.shape(0)) throw std::invalid_argument("greedy head: one mask per row expected");
  if (limit <= 0) throw std::invalid_argument("greedy head: the token limit must be positive");
  auto x = row_contiguous(mx::astype(hidden, mx::float32, cpu));
  return mx::array({hidden.shape(0)}, mx::int32,
                   std::make_shared<GreedyPicksCpu>(mx::default_stream(cpu), weight_, std::move(masks), limit),
                   {x, weight_.packed, codes_, columns_});
}

}  // namespace mlxb
