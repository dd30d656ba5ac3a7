#include "cpu_qmatmul.h"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_dispatch.h"
#include "cpu_worker_pool.h"
#include "mlx/primitives.h"

namespace mlxb {
namespace {

// A float buffer on cache-line boundaries: vector loads that straddle two
// lines cost two, and x rows and dequantized weights are read many times.
class AlignedFloats {
 public:
  void resize(size_t n) {
    if (n <= capacity_) {
      size_ = n;
      return;
    }
    data_.reset(static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64)));
    if (!data_) throw std::bad_alloc();
    capacity_ = size_ = n;
  }
  float* data() { return data_.get(); }
  size_t size() const { return size_; }
  float& operator[](size_t i) { return data_[i]; }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float[], Free> data_;
  size_t capacity_ = 0, size_ = 0;
};

struct Problem {
  const float* x;  // (M, K); for 4-bit tiles each 32-block reordered evens then odds
  const uint8_t* packed;
  const float* scales;
  const float* biases;
  float* y;  // (M, N)
  int M, K, N, groups, group_size, bits;
};

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) inline __m256 widen(__m128i bytes) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
}

// One 32-column block of a weight row as 4 vectors of scale * q + bias (as MLX
// dequantizes). 4-bit byte i holds columns 2i (low nibble) and 2i + 1 (high
// nibble): COLUMN_ORDER interleaves them back; otherwise the block comes out
// evens then odds, and the tile kernel's x is reordered to match.
template <int BITS, bool COLUMN_ORDER>
__attribute__((target("avx2,fma"))) inline void dequantize_block(const uint8_t* w, __m256 s, __m256 b, __m256 v[4]) {
  if constexpr (BITS == 4) {
    const __m128i low4 = _mm_set1_epi8(0x0F);
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
    __m128i lo = _mm_and_si128(bytes, low4);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4);
    if constexpr (COLUMN_ORDER) {
      const __m128i first = _mm_unpacklo_epi8(lo, hi);
      hi = _mm_unpackhi_epi8(lo, hi);
      lo = first;
    }
    v[0] = widen(lo);
    v[1] = widen(_mm_srli_si128(lo, 8));
    v[2] = widen(hi);
    v[3] = widen(_mm_srli_si128(hi, 8));
  } else {
    for (int i = 0; i < 4; ++i) v[i] = widen(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + 8 * i)));
  }
  for (int i = 0; i < 4; ++i) v[i] = _mm256_fmadd_ps(v[i], s, b);
}

// Rows [n0, n1) of the output for TM rows of x starting at m0. Each 32-wide
// block of a weight row is dequantized once (scale * q + bias, as MLX does)
// and multiplied into all TM rows, kept in registers. Each x row
// has ACC accumulators: one FMA chain would wait on the FMA's latency, and
// few rows need several chains in flight to keep both FMA units busy.
template <int BITS, int TM>
__attribute__((target("avx2,fma"))) void rows_avx2(const Problem& p, int m0, int n0, int n1, int g0, int g1) {
  constexpr int block_bytes = 32 * BITS / 8;
  const int row_bytes = p.K * BITS / 8;
  const int blocks_per_group = p.group_size / 32;
  for (int n = n0; n < n1; ++n) {
    const uint8_t* w = p.packed + static_cast<size_t>(n) * row_bytes + static_cast<size_t>(g0) * p.group_size * BITS / 8;
    const float* scale = p.scales + static_cast<size_t>(n) * p.groups;
    const float* bias = p.biases + static_cast<size_t>(n) * p.groups;
    const float* x = p.x + static_cast<size_t>(m0) * p.K + static_cast<size_t>(g0) * p.group_size;
    constexpr int ACC = TM <= 2 ? 4 : TM <= 4 ? 2 : 1;
    __m256 acc[TM][ACC];
#pragma GCC unroll 8
    for (int m = 0; m < TM; ++m)
#pragma GCC unroll 4
      for (int a = 0; a < ACC; ++a) acc[m][a] = _mm256_setzero_ps();
    for (int g = g0; g < g1; ++g) {
      const __m256 s = _mm256_set1_ps(scale[g]);
      const __m256 b = _mm256_set1_ps(bias[g]);
      for (int j = 0; j < blocks_per_group; ++j, w += block_bytes, x += 32) {
        __m256 v[4];
        dequantize_block<BITS, false>(w, s, b, v);
#pragma GCC unroll 8
        for (int m = 0; m < TM; ++m) {
          const float* xm = x + static_cast<size_t>(m) * p.K;
          acc[m][0] = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(xm), acc[m][0]);
          acc[m][1 % ACC] = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xm + 8), acc[m][1 % ACC]);
          acc[m][2 % ACC] = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xm + 16), acc[m][2 % ACC]);
          acc[m][3 % ACC] = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xm + 24), acc[m][3 % ACC]);
        }
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < TM; ++m) {
      __m256 total = acc[m][0];
      for (int a = 1; a < ACC; ++a) total = _mm256_add_ps(total, acc[m][a]);
      float& y = p.y[static_cast<size_t>(m0 + m) * p.N + n];
      y = g0 == 0 ? hsum(total) : y + hsum(total);
    }
  }
}

template <int BITS>
void rows_tile(const Problem& p, int m0, int tm, int n0, int n1, int g0, int g1) {
  switch (tm) {
    case 1: return rows_avx2<BITS, 1>(p, m0, n0, n1, g0, g1);
    case 2: return rows_avx2<BITS, 2>(p, m0, n0, n1, g0, g1);
    case 3: return rows_avx2<BITS, 3>(p, m0, n0, n1, g0, g1);
    case 4: return rows_avx2<BITS, 4>(p, m0, n0, n1, g0, g1);
    case 5: return rows_avx2<BITS, 5>(p, m0, n0, n1, g0, g1);
    case 6: return rows_avx2<BITS, 6>(p, m0, n0, n1, g0, g1);
    case 7: return rows_avx2<BITS, 7>(p, m0, n0, n1, g0, g1);
    default: return rows_avx2<BITS, 8>(p, m0, n0, n1, g0, g1);
  }
}

// Weight row n, groups [g0, g1), dequantized in column order into out.
template <int BITS>
__attribute__((target("avx2,fma"))) void dequantize_row(const Problem& p, int n, int g0, int g1, float* out) {
  constexpr int block_bytes = 32 * BITS / 8;
  const int blocks_per_group = p.group_size / 32;
  const uint8_t* w = p.packed + static_cast<size_t>(n) * p.K * BITS / 8 + static_cast<size_t>(g0) * p.group_size * BITS / 8;
  const float* scale = p.scales + static_cast<size_t>(n) * p.groups;
  const float* bias = p.biases + static_cast<size_t>(n) * p.groups;
  for (int g = g0; g < g1; ++g) {
    const __m256 s = _mm256_set1_ps(scale[g]);
    const __m256 b = _mm256_set1_ps(bias[g]);
    for (int j = 0; j < blocks_per_group; ++j, w += block_bytes, out += 32) {
      __m256 v[4];
      dequantize_block<BITS, true>(w, s, b, v);
      for (int i = 0; i < 4; ++i) _mm256_store_ps(out + 8 * i, v[i]);
    }
  }
}

// dequantize_row with 512-bit vectors: the same values (scale * q + bias as one
// FMA per column), 16 columns per instruction.
template <int BITS>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void dequantize_row512(const Problem& p, int n, int g0, int g1, float* out) {
  constexpr int block_bytes = 32 * BITS / 8;
  const int blocks_per_group = p.group_size / 32;
  const uint8_t* w = p.packed + static_cast<size_t>(n) * p.K * BITS / 8 + static_cast<size_t>(g0) * p.group_size * BITS / 8;
  const float* scale = p.scales + static_cast<size_t>(n) * p.groups;
  const float* bias = p.biases + static_cast<size_t>(n) * p.groups;
  for (int g = g0; g < g1; ++g) {
    const __m512 s = _mm512_set1_ps(scale[g]);
    const __m512 b = _mm512_set1_ps(bias[g]);
    for (int j = 0; j < blocks_per_group; ++j, w += block_bytes, out += 32) {
      __m128i first, second;
      if constexpr (BITS == 4) {
        const __m128i low4 = _mm_set1_epi8(0x0F);
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
        const __m128i lo = _mm_and_si128(bytes, low4), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4);
        first = _mm_unpacklo_epi8(lo, hi);
        second = _mm_unpackhi_epi8(lo, hi);
      } else {
        first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
        second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16));
      }
      _mm512_store_ps(out, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(first)), s, b));
      _mm512_store_ps(out + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(second)), s, b));
    }
  }
}

// TM x rows times TN dequantized weight rows (panel, len floats each) over
// columns [k0, k0 + len): TM * TN accumulators, each x load serving TN FMAs.
// At 4 x 3 that is 12 accumulators, 3 weights and 1 x: all 16 registers.
template <int TM, int TN>
__attribute__((target("avx2,fma"))) void panel_tile(const Problem& p, const float* panel, int len, int m0, int n, int k0) {
  __m256 acc[TM][TN];
#pragma GCC unroll 4
  for (int m = 0; m < TM; ++m)
#pragma GCC unroll 3
    for (int t = 0; t < TN; ++t) acc[m][t] = _mm256_setzero_ps();
  const float* x = p.x + static_cast<size_t>(m0) * p.K + k0;
  for (int c = 0; c < len; c += 8) {
    __m256 w[TN];
#pragma GCC unroll 3
    for (int t = 0; t < TN; ++t) w[t] = _mm256_load_ps(panel + t * len + c);
#pragma GCC unroll 4
    for (int m = 0; m < TM; ++m) {
      __m256 xm = _mm256_loadu_ps(x + static_cast<size_t>(m) * p.K + c);
      // Kept in a register: GCC would otherwise fold the load into each FMA,
      // and loads, not FMAs, would bound the loop (36 against 46 GMAC/s).
      asm("" : "+x"(xm));
#pragma GCC unroll 3
      for (int t = 0; t < TN; ++t) acc[m][t] = _mm256_fmadd_ps(xm, w[t], acc[m][t]);
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < TM; ++m)
#pragma GCC unroll 3
    for (int t = 0; t < TN; ++t) {
      float& y = p.y[static_cast<size_t>(m0 + m) * p.N + n + t];
      y = k0 == 0 ? hsum(acc[m][t]) : y + hsum(acc[m][t]);
    }
}

// The same with 512-bit vectors: 32 registers hold 8 x 3 accumulators, 3
// weights and 1 x, so each x load serves 3 FMAs of twice the width.
template <int TM, int TN>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void panel_tile512(const Problem& p, const float* panel, int len, int m0,
                                                                           int n, int k0) {
  __m512 acc[TM][TN];
#pragma GCC unroll 8
  for (int m = 0; m < TM; ++m)
#pragma GCC unroll 3
    for (int t = 0; t < TN; ++t) acc[m][t] = _mm512_setzero_ps();
  const float* x = p.x + static_cast<size_t>(m0) * p.K + k0;
  for (int c = 0; c < len; c += 16) {
    __m512 w[TN];
#pragma GCC unroll 3
    for (int t = 0; t < TN; ++t) w[t] = _mm512_load_ps(panel + t * len + c);
#pragma GCC unroll 8
    for (int m = 0; m < TM; ++m) {
      __m512 xm = _mm512_loadu_ps(x + static_cast<size_t>(m) * p.K + c);
      asm("" : "+v"(xm));
#pragma GCC unroll 3
      for (int t = 0; t < TN; ++t) acc[m][t] = _mm512_fmadd_ps(xm, w[t], acc[m][t]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < TM; ++m)
#pragma GCC unroll 3
    for (int t = 0; t < TN; ++t) {
      float& y = p.y[static_cast<size_t>(m0 + m) * p.N + n + t];
      const float sum = _mm512_reduce_add_ps(acc[m][t]);
      y = k0 == 0 ? sum : y + sum;
    }
}

template <int TN>
void panel_rows(const Problem& p, const float* panel, int len, int m0, int tm, int n, int k0) {
  switch (tm) {
    case 1: return panel_tile<1, TN>(p, panel, len, m0, n, k0);
    case 2: return panel_tile<2, TN>(p, panel, len, m0, n, k0);
    case 3: return panel_tile<3, TN>(p, panel, len, m0, n, k0);
    default: return panel_tile<4, TN>(p, panel, len, m0, n, k0);
  }
}

template <int TN>
void panel_rows512(const Problem& p, const float* panel, int len, int m0, int tm, int n, int k0) {
  switch (tm) {
    case 1: return panel_tile512<1, TN>(p, panel, len, m0, n, k0);
    case 2: return panel_tile512<2, TN>(p, panel, len, m0, n, k0);
    case 3: return panel_tile512<3, TN>(p, panel, len, m0, n, k0);
    case 4: return panel_tile512<4, TN>(p, panel, len, m0, n, k0);
    case 5: return panel_tile512<5, TN>(p, panel, len, m0, n, k0);
    case 6: return panel_tile512<6, TN>(p, panel, len, m0, n, k0);
    case 7: return panel_tile512<7, TN>(p, panel, len, m0, n, k0);
    default: return panel_tile512<8, TN>(p, panel, len, m0, n, k0);
  }
}
#endif

// From this many x rows, weight rows are dequantized once into a panel that
// serves every x row (panel_task); below it, dequantizing in registers for
// one tile of x rows at a time (tile_task) is faster. On the default model's
// shapes, one thread: at 8 rows the two tie; at 9 to 32 rows panels are
// 1.12-1.26x faster.
constexpr int PANEL_MIN_ROWS = 9;
// With 512-bit panels, from 4 rows (decode, 3 alternating runs each: 4 rows
// 199 -> 250 tok/s, 6 rows 275 -> 295, 8 rows a tie; 3 rows stay faster in tiles).
constexpr int PANEL_MIN_ROWS_512 = 4;
constexpr int PANEL_ROWS = 3;       // weight rows per panel
constexpr int PANEL_TILE_ROWS = 4;  // x rows per panel_tile
constexpr int PANEL_TILE_ROWS_512 = 8;  // x rows per panel_tile512
// Floats of x one pass over a panel reads (64 KiB): the MLP's down projection
// at 20 rows runs about 5% faster in slices of this than whole.
constexpr int PANEL_X_SLICE_FLOATS = 16384;
constexpr int TILE_ROWS = 8;
// Floats of x a tile reads per pass over its weight rows (18 KiB of a 32 KiB
// L1): 8 rows of the default model's hidden size fit whole; the down
// projection's 8 x 1536 did not, and ran about 20% slower for it.
constexpr int X_SLICE_FLOATS = 4608;

#if defined(__x86_64__)
// Weight rows [n0, n1) for every x row (x in column order), a panel at a time.
void panel_task(const Problem& p, int n0, int n1) {
  thread_local AlignedFloats panel;
  const int slice = std::clamp(PANEL_X_SLICE_FLOATS / (p.M * p.group_size), 1, p.groups);
  const bool wide = cpu_has_avx512();
  const int tile_rows = wide ? PANEL_TILE_ROWS_512 : PANEL_TILE_ROWS;
  const int tiles = (p.M + tile_rows - 1) / tile_rows;
  panel.resize(static_cast<size_t>(PANEL_ROWS) * slice * p.group_size);
  for (int g0 = 0; g0 < p.groups; g0 += slice) {
    const int g1 = std::min(p.groups, g0 + slice);
    const int len = (g1 - g0) * p.group_size, k0 = g0 * p.group_size;
    for (int n = n0; n < n1; n += PANEL_ROWS) {
      const int tn = std::min(PANEL_ROWS, n1 - n);
      for (int t = 0; t < tn; ++t) {
        float* out = panel.data() + static_cast<size_t>(t) * len;
        if (wide) p.bits == 4 ? dequantize_row512<4>(p, n + t, g0, g1, out) : dequantize_row512<8>(p, n + t, g0, g1, out);
        else p.bits == 4 ? dequantize_row<4>(p, n + t, g0, g1, out) : dequantize_row<8>(p, n + t, g0, g1, out);
      }
      // Tiles as even as they can be (20 rows: 4, 4, 4, 4, 4; 10 rows: 3, 3, 4).
      for (int i = 0, m0 = 0; i < tiles; ++i) {
        const int tm = (p.M - m0) / (tiles - i);
        if (wide) {
          if (tn == 3) panel_rows512<3>(p, panel.data(), len, m0, tm, n, k0);
          else if (tn == 2) panel_rows512<2>(p, panel.data(), len, m0, tm, n, k0);
          else panel_rows512<1>(p, panel.data(), len, m0, tm, n, k0);
        } else if (tn == 3) {
          panel_rows<3>(p, panel.data(), len, m0, tm, n, k0);
        } else if (tn == 2) {
          panel_rows<2>(p, panel.data(), len, m0, tm, n, k0);
        } else {
          panel_rows<1>(p, panel.data(), len, m0, tm, n, k0);
        }
        m0 += tm;
      }
    }
  }
}

// Weight rows [n0, n1) for x rows (for 4 bits, each 32-block reordered evens
// then odds) in tiles of TILE_ROWS, dequantized per tile.
void tile_task(const Problem& p, int n0, int n1) {
  for (int m0 = 0; m0 < p.M; m0 += TILE_ROWS) {
    const int tm = std::min(TILE_ROWS, p.M - m0);
    // A tile's x rows stay in L1 while every weight row of the task passes:
    // long rows (the MLP's down projection) go a slice of columns at a time.
    const int slice = std::max(1, X_SLICE_FLOATS / (tm * p.group_size));
    for (int g0 = 0; g0 < p.groups; g0 += slice) {
      const int g1 = std::min(p.groups, g0 + slice);
      p.bits == 4 ? rows_tile<4>(p, m0, tm, n0, n1, g0, g1) : rows_tile<8>(p, m0, tm, n0, n1, g0, g1);
    }
  }
}
#endif

bool uses_panels(int rows) { return rows >= (cpu_has_avx512() ? PANEL_MIN_ROWS_512 : PANEL_MIN_ROWS); }

void run_problem(Problem p) {
#if defined(__x86_64__)
  auto& pool = WorkerPool::instance();
  const bool panels = uses_panels(p.M);
  // A few tasks per thread evens out uneven progress; each keeps >= 16 rows,
  // and whole panels.
  const int tasks = std::clamp(p.N / 16, 1, pool.threads() * 4);
  int per_task = (p.N + tasks - 1) / tasks;
  if (panels) per_task = (per_task + PANEL_ROWS - 1) / PANEL_ROWS * PANEL_ROWS;
  pool.run((p.N + per_task - 1) / per_task, [&](int t) {
    const int n0 = t * per_task, n1 = std::min(p.N, n0 + per_task);
    panels ? panel_task(p, n0, n1) : tile_task(p, n0, n1);
  });
#else
  throw std::runtime_error("cpu_quantized_matmul: x86-64 only");
#endif
}

class QuantizedMatmulCpu : public mx::Primitive {
 public:
  QuantizedMatmulCpu(mx::Stream stream, int group_size, int bits)
      : mx::Primitive(stream), group_size_(group_size), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    dispatch_on_cpu(stream(), inputs, outputs, [x = inputs[0], packed = inputs[1], scales = inputs[2], biases = inputs[3], y = outputs[0],
                      group_size = group_size_, bits = bits_]() mutable {
      const int K = x.shape(-1), N = y.shape(-1);
      const int M = K > 0 ? static_cast<int>(x.size() / K) : 0;
      const int groups = K / group_size;
      // Panels read x in place (a load that straddles two cache lines costs
      // nothing measurable there). Tiles read a copy on cache-line
      // boundaries, for 4 bits reordered so a block's low nibbles (even
      // columns) and high nibbles (odd columns) each meet contiguous floats.
      const float* xin = x.data<float>();
      thread_local AlignedFloats xr;
      if (!uses_panels(M)) {
        xr.resize(static_cast<size_t>(M) * K);
        if (bits == 4) {
          for (size_t block = 0; block < xr.size() / 32; ++block) {
            for (int j = 0; j < 16; ++j) {
              xr[block * 32 + j] = xin[block * 32 + 2 * j];
              xr[block * 32 + 16 + j] = xin[block * 32 + 2 * j + 1];
            }
          }
        } else {
          std::copy(xin, xin + xr.size(), xr.data());
        }
        xin = xr.data();
      }
      run_problem(Problem{xin, reinterpret_cast<const uint8_t*>(packed.data<uint32_t>()),
                          scales.data<float>(), biases.data<float>(), y.data<float>(), M, K, N, groups, group_size, bits});
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("cpu_quantized_matmul: CPU only");
  }

  const char* name() const override { return "QuantizedMatmulCpu"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const QuantizedMatmulCpu&>(other);
    return o.group_size_ == group_size_ && o.bits_ == bits_;
  }

 private:
  int group_size_, bits_;
};

}  // namespace

bool cpu_qmatmul_supported() { return cpu_has_avx2_fma(); }

bool cpu_qmatmul_accepts(int group_size, int bits) {
  return (bits == 4 || bits == 8) && group_size >= 32 && group_size % 32 == 0;
}

mx::array cpu_quantized_matmul(const mx::array& x, const CpuQuantWeight& w) {
  auto cpu = mx::Device(mx::Device::cpu);
  const int K = x.shape(-1);
  if (K % w.group_size != 0 || w.packed.shape(-1) * 32 / w.bits != K) {
    throw std::invalid_argument("cpu_quantized_matmul: input width " + std::to_string(K) + " does not match the weight");
  }
  auto xc = mx::contiguous(mx::astype(x, mx::float32, cpu), false, cpu);
  auto shape = x.shape();
  shape.back() = w.packed.shape(0);
  return mx::array(shape, mx::float32, std::make_shared<QuantizedMatmulCpu>(mx::default_stream(cpu), w.group_size, w.bits),
                   {xc, w.packed, w.scales, w.biases});
}

}  // namespace mlxb
