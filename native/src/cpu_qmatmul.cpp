#include "cpu_qmatmul.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_dispatch.h"
#include "cpu_worker_pool.h"
#include "mlx/primitives.h"

namespace mlxb {
namespace {

constexpr int LANES = CpuQuantWeight::COLUMN_GROUP;

// x rows per tile at most: 10 with 512-bit vectors (20 accumulators of 2
// column groups; 20 rows go in two tiles that each dequantize the weights, not
// three: the step's matmuls, alternating in one process with 8-row tiles,
// 0.93 of the time at 20 rows, 0.89 at 10), 4 with 256-bit ones (8 of 16
// registers). The dispatch below and tile_rows() both read these.
constexpr int TILE_ROWS_512 = 10;
constexpr int TILE_ROWS_256 = 4;

// x rounded for the integer-dot kernel: per row, per 32-wide block of k, the
// block's scale and float sum, and its 32 values as XPIECES signed bytes each.
constexpr int XPIECES = 3;
struct RoundedX {
  const int8_t* pieces;  // (M, K / 32, XPIECES, 32)
  const float* scale;    // (M, K / 32)
  const float* sum;      // (M, K / 32)
};

struct Problem {
  const float* x;  // (M, K), rows contiguous
  const uint8_t* packed;
  float* y;  // (M, N)
  int M, K, N, groups, group_size, bits;
  bool int_dot = false;
  RoundedX rx{};
};

// A column group is one run of bytes, read front to back: per group of k,
// the 16 columns' scales and biases (float32), then their values.
constexpr size_t HEADER_BYTES = 2 * LANES * sizeof(float);
size_t kgroup_bytes(int group_size, int bits) { return HEADER_BYTES + static_cast<size_t>(group_size) * LANES * bits / 8; }
size_t column_group_bytes(const Problem& p) { return p.groups * kgroup_bytes(p.group_size, p.bits); }
// The group of k holding 32-wide block blk of column group c, and the block's values.
const uint8_t* kgroup_at(const Problem& p, int c, int blk) {
  return p.packed + c * column_group_bytes(p) + static_cast<size_t>(blk * 32 / p.group_size) * kgroup_bytes(p.group_size, p.bits);
}
const uint8_t* block_at(const Problem& p, const uint8_t* kgroup, int blk) {
  return kgroup + HEADER_BYTES + static_cast<size_t>(blk % (p.group_size / 32)) * 32 * LANES * p.bits / 8;
}

#if defined(__x86_64__)
// Asks for a block's worth of a column group's bytes 1 KiB ahead of where the
// kernel reads; the hardware prefetcher alone left steps waiting on memory. A
// step's 30 layers of matmuls (distinct weights, 2 threads), alternating in
// one process with the previous kernel: without it 1.02-1.06 of that kernel's
// time at 1 row, 0.93-0.98 at 16; with it 0.79 and 0.71-0.73 (512 to 4096 bytes ahead tried).
constexpr int PREFETCH_BYTES = 1024;
inline void prefetch_block(const Problem& p, const uint8_t* at) {
  const int lines = static_cast<int>((kgroup_bytes(p.group_size, p.bits) * 32 / p.group_size + 63) / 64);
  for (int i = 0; i < lines; ++i) _mm_prefetch(reinterpret_cast<const char*>(at) + PREFETCH_BYTES + 64 * i, _MM_HINT_T0);
}
#endif

#if defined(__x86_64__)
// Row m of y, column group c (masked to N in the last group): stored, or added to it.
__attribute__((target("avx512f"), always_inline)) inline void store_column512(const Problem& p, int m, int c, __m512 v, bool add) {
  const int col = c * LANES;
  float* y = p.y + static_cast<size_t>(m) * p.N + col;
  const __mmask16 mask = col + LANES <= p.N ? 0xFFFF : static_cast<__mmask16>((1u << (p.N - col)) - 1);
  _mm512_mask_storeu_ps(y, mask, add ? _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, y)) : v);
}

// Output columns of column groups [c, c + TC) for TM rows of x from m0, over
// k in 32-wide blocks [b0, b1). Each block's 16 x TC weights are dequantized
// once (scale * q + bias, as MLX does) in registers and multiplied into all
// TM rows: TM * TC accumulators, each x value one broadcast for TC FMAs.
template <int BITS, int TM, int TC>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void tile512(const Problem& p, int m0, int c, int b0, int b1) {
  __m512 acc[TM][TC];
#pragma GCC unroll 10
  for (int m = 0; m < TM; ++m)
#pragma GCC unroll 4
    for (int t = 0; t < TC; ++t) acc[m][t] = _mm512_setzero_ps();
  const __m512i low4 = _mm512_set1_epi32(0x0F);
  for (int blk = b0; blk < b1; ++blk) {
    __m512 s[TC], b[TC];
    const uint8_t* q[TC];
#pragma GCC unroll 4
    for (int t = 0; t < TC; ++t) {
      const uint8_t* kgroup = kgroup_at(p, c + t, blk);
      s[t] = _mm512_loadu_ps(reinterpret_cast<const float*>(kgroup));
      b[t] = _mm512_loadu_ps(reinterpret_cast<const float*>(kgroup) + LANES);
      q[t] = block_at(p, kgroup, blk);
      prefetch_block(p, q[t]);
    }
    const float* x = p.x + static_cast<size_t>(m0) * p.K + blk * 32;
    if constexpr (BITS == 4) {
      // Byte j of a k pair: column j's value at k (low nibble) and k + 1 (high).
#pragma GCC unroll 2
      for (int kp = 0; kp < 16; ++kp) {
        __m512 w0[TC], w1[TC];
#pragma GCC unroll 4
        for (int t = 0; t < TC; ++t) {
          const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q[t] + kp * LANES)));
          w0[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, low4)), s[t], b[t]);
          w1[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), s[t], b[t]);
        }
#pragma GCC unroll 10
        for (int m = 0; m < TM; ++m) {
          const __m512 x0 = _mm512_set1_ps(x[static_cast<size_t>(m) * p.K + 2 * kp]);
          const __m512 x1 = _mm512_set1_ps(x[static_cast<size_t>(m) * p.K + 2 * kp + 1]);
#pragma GCC unroll 4
          for (int t = 0; t < TC; ++t) acc[m][t] = _mm512_fmadd_ps(w1[t], x1, _mm512_fmadd_ps(w0[t], x0, acc[m][t]));
        }
      }
    } else {
#pragma GCC unroll 2
      for (int k = 0; k < 32; ++k) {
        __m512 w[TC];
#pragma GCC unroll 4
        for (int t = 0; t < TC; ++t) {
          const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q[t] + k * LANES));
          w[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)), s[t], b[t]);
        }
#pragma GCC unroll 10
        for (int m = 0; m < TM; ++m) {
          const __m512 xm = _mm512_set1_ps(x[static_cast<size_t>(m) * p.K + k]);
#pragma GCC unroll 4
          for (int t = 0; t < TC; ++t) acc[m][t] = _mm512_fmadd_ps(w[t], xm, acc[m][t]);
        }
      }
    }
  }
#pragma GCC unroll 10
  for (int m = 0; m < TM; ++m)
#pragma GCC unroll 4
    for (int t = 0; t < TC; ++t) store_column512(p, m0 + m, c + t, acc[m][t], b0 > 0);
}

// The integer-dot kernels (AVX-512 VNNI), 4-bit weights first. A weight block is
// scale * q + bias with q in 0..15, so a column's block sum is
// scale * sum(q * x) + bias * sum(x). x is rounded per 32-wide block to
// integers of 22 bits, x ~ s * (a * 2^16 + b * 2^8 + c) with a, b, c signed
// bytes; vpdpbusd multiplies 4 unsigned q by 4 signed bytes and adds them
// into each 32-bit lane, 64 multiply-adds per instruction where an FMA does
// 16. One instruction per piece: three for 4 k, not four FMAs; and q needs
// no conversion to float. |sum(q * x)| <= 32 * 15 * 2^21 < 2^31: no overflow.
constexpr float XROUND_MAX = 2097152.0f;  // 2^21

__attribute__((target("avx512f,avx512bw,avx512vl"))) void round_x(const float* x, int M, int K, int8_t* pieces, float* scale,
                                                                   float* sum) {
  const int blocks = K / 32;
  const __m512i half = _mm512_set1_epi32(128), byte = _mm512_set1_epi32(255);
  for (int m = 0; m < M; ++m) {
    for (int blk = 0; blk < blocks; ++blk) {
      const size_t at = static_cast<size_t>(m) * blocks + blk;
      const float* src = x + static_cast<size_t>(m) * K + blk * 32;
      const __m512 v[2] = {_mm512_loadu_ps(src), _mm512_loadu_ps(src + 16)};
      const float peak = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
      sum[at] = _mm512_reduce_add_ps(_mm512_add_ps(v[0], v[1]));
      // A block of zeros has scale 0; inf or NaN in x gives a NaN scale, and NaN outputs.
      scale[at] = peak > 0 ? peak / XROUND_MAX : peak == 0 ? 0.0f : std::numeric_limits<float>::quiet_NaN();
      const __m512 inv = _mm512_set1_ps(peak > 0 && peak <= std::numeric_limits<float>::max() ? XROUND_MAX / peak : 0.0f);
      int8_t* out = pieces + at * XPIECES * 32;
      for (int h = 0; h < 2; ++h) {
        // Balanced base-256 digits: each in -128..127, the top one in -32..32.
        const __m512i xi = _mm512_cvtps_epi32(_mm512_mul_ps(v[h], inv));
        const __m512i c = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(xi, half), byte), half);
        const __m512i r = _mm512_srai_epi32(_mm512_sub_epi32(xi, c), 8);
        const __m512i b = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(r, half), byte), half);
        const __m512i a = _mm512_srai_epi32(_mm512_sub_epi32(r, b), 8);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + h * 16), _mm512_cvtepi32_epi8(a));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 32 + h * 16), _mm512_cvtepi32_epi8(b));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 64 + h * 16), _mm512_cvtepi32_epi8(c));
      }
    }
  }
}

// Column group c for TM rows of x from m0, over 32-wide blocks [b0, b1). Per
// block: 8 registers of q (4 k each), then per piece every row's 8 dot
// products, the rows' running sums shifted a byte between pieces. Few rows
// keep two sums each, so consecutive dot products do not wait on each other.
template <int TM>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void tile_int_dot(const Problem& p, int m0, int c, int b0, int b1) {
  constexpr int CHAINS = TM <= 4 ? 2 : 1;
  const int blocks = p.K / 32;
  __m512 acc[TM];
#pragma GCC unroll 10
  for (int m = 0; m < TM; ++m) acc[m] = _mm512_setzero_ps();
  const __m512i nibbles = _mm512_set1_epi32(0x0F0F0F0F);
  for (int blk = b0; blk < b1; ++blk) {
    const uint8_t* kgroup = kgroup_at(p, c, blk);
    const uint8_t* q = block_at(p, kgroup, blk);
    prefetch_block(p, q);
    __m512i w[8];
#pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) {
      // Lane j's 16 bits: q[k] | q[k+2] << 4 | q[k+1] << 8 | q[k+3] << 12 -> bytes q[k], q[k+1], q[k+2], q[k+3].
      const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + g * 32)));
      w[g] = _mm512_ternarylogic_epi32(v, _mm512_slli_epi32(v, 12), nibbles, 0xA8);  // (v | v << 12) & nibbles
    }
    __m512i dot[CHAINS][TM];
#pragma GCC unroll 3
    for (int piece = 0; piece < XPIECES; ++piece) {
#pragma GCC unroll 10
      for (int m = 0; m < TM; ++m)
#pragma GCC unroll 2
        for (int ch = 0; ch < CHAINS; ++ch) dot[ch][m] = piece == 0 ? _mm512_setzero_si512() : _mm512_slli_epi32(dot[ch][m], 8);
#pragma GCC unroll 8
      for (int g = 0; g < 8; ++g)
#pragma GCC unroll 10
        for (int m = 0; m < TM; ++m) {
          const int8_t* xp = p.rx.pieces + ((static_cast<size_t>(m0 + m) * blocks + blk) * XPIECES + piece) * 32 + 4 * g;
          // The 4 bytes broadcast from memory inside the instruction: GCC
          // would load them with a separate vpbroadcastd.
          asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(dot[g % CHAINS][m]) : "v"(w[g]), "m"(*reinterpret_cast<const int32_t*>(xp)));
        }
    }
    const __m512 s = _mm512_loadu_ps(reinterpret_cast<const float*>(kgroup));
    const __m512 bias = _mm512_loadu_ps(reinterpret_cast<const float*>(kgroup) + LANES);
#pragma GCC unroll 10
    for (int m = 0; m < TM; ++m) {
      const size_t at = static_cast<size_t>(m0 + m) * blocks + blk;
      __m512i d = dot[0][m];
      if constexpr (CHAINS == 2) d = _mm512_add_epi32(d, dot[1][m]);
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(s, _mm512_set1_ps(p.rx.scale[at])), acc[m]);
      acc[m] = _mm512_fmadd_ps(bias, _mm512_set1_ps(p.rx.sum[at]), acc[m]);
    }
  }
#pragma GCC unroll 10
  for (int m = 0; m < TM; ++m) store_column512(p, m0 + m, c, acc[m], b0 > 0);
}

// 8-bit weights (q in 0..255): a column's 4 k are 4 bytes of a lane as
// stored, so nothing is unpacked. A 22-bit x would overflow the sum, so each
// piece keeps its own (|sum| <= 32 * 255 * 128), joined in float at the end of
// the block: at most 7 rows of 3 sums and a float sum fit the 32 registers.
constexpr int INT_DOT8_ROWS = 7;
template <int TM>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void tile_int_dot8(const Problem& p, int m0, int c, int b0, int b1) {
  const int blocks = p.K / 32;
  __m512 acc[TM];
#pragma GCC unroll 7
  for (int m = 0; m < TM; ++m) acc[m] = _mm512_setzero_ps();
  for (int blk = b0; blk < b1; ++blk) {
    const uint8_t* kgroup = kgroup_at(p, c, blk);
    const uint8_t* q = block_at(p, kgroup, blk);
    prefetch_block(p, q);
    __m512i dot[XPIECES][TM];
#pragma GCC unroll 7
    for (int m = 0; m < TM; ++m)
#pragma GCC unroll 3
      for (int piece = 0; piece < XPIECES; ++piece) dot[piece][m] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) {
      const __m512i w = _mm512_loadu_si512(q + g * 64);
#pragma GCC unroll 7
      for (int m = 0; m < TM; ++m) {
        const int8_t* xp = p.rx.pieces + (static_cast<size_t>(m0 + m) * blocks + blk) * XPIECES * 32 + 4 * g;
#pragma GCC unroll 3
        for (int piece = 0; piece < XPIECES; ++piece)
          asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(dot[piece][m]) : "v"(w), "m"(*reinterpret_cast<const int32_t*>(xp + 32 * piece)));
      }
    }
    const __m512 s = _mm512_loadu_ps(reinterpret_cast<const float*>(kgroup));
    const __m512 bias = _mm512_loadu_ps(reinterpret_cast<const float*>(kgroup) + LANES);
#pragma GCC unroll 7
    for (int m = 0; m < TM; ++m) {
      const size_t at = static_cast<size_t>(m0 + m) * blocks + blk;
      const __m512 d = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[0][m]), _mm512_set1_ps(65536.0f),
                                       _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[1][m]), _mm512_set1_ps(256.0f), _mm512_cvtepi32_ps(dot[2][m])));
      acc[m] = _mm512_fmadd_ps(d, _mm512_mul_ps(s, _mm512_set1_ps(p.rx.scale[at])), acc[m]);
      acc[m] = _mm512_fmadd_ps(bias, _mm512_set1_ps(p.rx.sum[at]), acc[m]);
    }
  }
#pragma GCC unroll 7
  for (int m = 0; m < TM; ++m) store_column512(p, m0 + m, c, acc[m], b0 > 0);
}

void tiles_int_dot(const Problem& p, int m0, int tm, int c0, int c1, int b0, int b1) {
  if (p.bits == 8) {
    return with_tile_rows<INT_DOT8_ROWS>(tm, [&]<int TM>() {
      for (int c = c0; c < c1; ++c) tile_int_dot8<TM>(p, m0, c, b0, b1);
    });
  }
  with_tile_rows<TILE_ROWS_512>(tm, [&]<int TM>() {
    for (int c = c0; c < c1; ++c) tile_int_dot<TM>(p, m0, c, b0, b1);
  });
}

// Row m of y, column group c, from two 8-lane halves: stored, or added to it.
// (Accumulators indexed only by constants, in unrolled loops, stay in
// registers; otherwise GCC keeps them in memory and stores them every step.)
__attribute__((target("avx2,fma"))) inline void store_group256(const Problem& p, int m, int c, __m256 lo, __m256 hi, bool add) {
  float* y = p.y + static_cast<size_t>(m) * p.N + c * LANES;
  if (c * LANES + LANES <= p.N) {
    _mm256_storeu_ps(y, add ? _mm256_add_ps(_mm256_loadu_ps(y), lo) : lo);
    _mm256_storeu_ps(y + 8, add ? _mm256_add_ps(_mm256_loadu_ps(y + 8), hi) : hi);
    return;
  }
  alignas(32) float out[LANES];
  _mm256_store_ps(out, lo);
  _mm256_store_ps(out + 8, hi);
  for (int j = 0; j < std::min(LANES, p.N - c * LANES); ++j) y[j] = add ? y[j] + out[j] : out[j];
}

// The same with 256-bit vectors, for few rows: a column group is two halves of 8 lanes.
template <int BITS, int TM>
__attribute__((target("avx2,fma"))) void tile256(const Problem& p, int m0, int c, int b0, int b1) {
  __m256 acc[TM][2];
#pragma GCC unroll 4
  for (int m = 0; m < TM; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  const __m256i low4 = _mm256_set1_epi32(0x0F);
  for (int blk = b0; blk < b1; ++blk) {
    const uint8_t* kgroup = kgroup_at(p, c, blk);
    const uint8_t* q = block_at(p, kgroup, blk);
    prefetch_block(p, q);
    const float* x = p.x + static_cast<size_t>(m0) * p.K + blk * 32;
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m256 s = _mm256_loadu_ps(reinterpret_cast<const float*>(kgroup) + 8 * h);
      const __m256 b = _mm256_loadu_ps(reinterpret_cast<const float*>(kgroup) + LANES + 8 * h);
      if constexpr (BITS == 4) {
        for (int kp = 0; kp < 16; ++kp) {
          const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + kp * LANES + 8 * h)));
          const __m256 w0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, low4)), s, b);
          const __m256 w1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), s, b);
#pragma GCC unroll 4
          for (int m = 0; m < TM; ++m) {
            const float* xm = x + static_cast<size_t>(m) * p.K + 2 * kp;
            acc[m][h] = _mm256_fmadd_ps(w1, _mm256_broadcast_ss(xm + 1), _mm256_fmadd_ps(w0, _mm256_broadcast_ss(xm), acc[m][h]));
          }
        }
      } else {
        for (int k = 0; k < 32; ++k) {
          const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + k * LANES + 8 * h)));
          const __m256 w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), s, b);
#pragma GCC unroll 4
          for (int m = 0; m < TM; ++m) acc[m][h] = _mm256_fmadd_ps(w, _mm256_broadcast_ss(x + static_cast<size_t>(m) * p.K + k), acc[m][h]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < TM; ++m) store_group256(p, m0 + m, c, acc[m][0], acc[m][1], b0 > 0);
}

template <int BITS, int TM>
void tiles512(const Problem& p, int m0, int c0, int c1, int b0, int b1) {
  // Up to 20 accumulators: 4 column groups for few rows, 2 for more.
  constexpr int TC = TM <= 4 ? 4 : 2;
  int c = c0;
  for (; c + TC <= c1; c += TC) tile512<BITS, TM, TC>(p, m0, c, b0, b1);
  for (; c + 2 <= c1; c += 2) tile512<BITS, TM, 2>(p, m0, c, b0, b1);
  for (; c < c1; ++c) tile512<BITS, TM, 1>(p, m0, c, b0, b1);
}

constexpr int PANEL_TILE_ROWS = 6;  // x rows per tile reading a panel (below)

// Without AVX-512, 16 registers hold too few accumulators to dequantize in
// registers for many rows: from PANEL_MIN_ROWS_256 rows, a column group's
// weights are dequantized 4 blocks (128 k) at a time into an L1 panel,
// [k][16 columns] floats, which tiles of up to 6 x rows then read.
template <int BITS>
__attribute__((target("avx2,fma"))) void dequantize_panel256(const Problem& p, int c, int blk0, int blk1, float* panel) {
  const __m256i low4 = _mm256_set1_epi32(0x0F);
  for (int blk = blk0; blk < blk1; ++blk) {
    const uint8_t* kgroup = kgroup_at(p, c, blk);
    const uint8_t* q = block_at(p, kgroup, blk);
    prefetch_block(p, q);
    const float* sb = reinterpret_cast<const float*>(kgroup);
    const __m256 s[2] = {_mm256_loadu_ps(sb), _mm256_loadu_ps(sb + 8)};
    const __m256 b[2] = {_mm256_loadu_ps(sb + LANES), _mm256_loadu_ps(sb + LANES + 8)};
    float* out = panel + static_cast<size_t>(blk - blk0) * 32 * LANES;
    for (int h = 0; h < 2; ++h) {
      if constexpr (BITS == 4) {
        for (int kp = 0; kp < 16; ++kp) {
          const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + kp * LANES + 8 * h)));
          _mm256_store_ps(out + 2 * kp * LANES + 8 * h, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, low4)), s[h], b[h]));
          _mm256_store_ps(out + (2 * kp + 1) * LANES + 8 * h, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), s[h], b[h]));
        }
      } else {
        for (int k = 0; k < 32; ++k) {
          const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + k * LANES + 8 * h)));
          _mm256_store_ps(out + k * LANES + 8 * h, _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), s[h], b[h]));
        }
      }
    }
  }
}

// TM x rows from m0 times a panel of len k from k0, into column group c of y.
template <int TM>
__attribute__((target("avx2,fma"))) void panel_tile256(const Problem& p, const float* panel, int len, int m0, int c, int k0) {
  __m256 acc[TM][2];
#pragma GCC unroll 6
  for (int m = 0; m < TM; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  const float* x = p.x + static_cast<size_t>(m0) * p.K + k0;
  for (int k = 0; k < len; ++k) {
    const __m256 w0 = _mm256_load_ps(panel + k * LANES), w1 = _mm256_load_ps(panel + k * LANES + 8);
#pragma GCC unroll 6
    for (int m = 0; m < TM; ++m) {
      const __m256 xm = _mm256_broadcast_ss(x + static_cast<size_t>(m) * p.K + k);
      acc[m][0] = _mm256_fmadd_ps(w0, xm, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(w1, xm, acc[m][1]);
    }
  }
#pragma GCC unroll 6
  for (int m = 0; m < TM; ++m) store_group256(p, m0 + m, c, acc[m][0], acc[m][1], k0 > 0);
}

void panel_rows256(const Problem& p, const float* panel, int len, int m0, int tm, int c, int k0) {
  with_tile_rows<PANEL_TILE_ROWS>(tm, [&]<int TM>() { panel_tile256<TM>(p, panel, len, m0, c, k0); });
}

template <int BITS, int TM>
void tiles256(const Problem& p, int m0, int c0, int c1, int b0, int b1) {
  for (int c = c0; c < c1; ++c) tile256<BITS, TM>(p, m0, c, b0, b1);
}

template <int BITS>
void tiles(const Problem& p, int m0, int tm, int c0, int c1, int b0, int b1) {
  if (cpu_has_avx512()) return with_tile_rows<TILE_ROWS_512>(tm, [&]<int TM>() { tiles512<BITS, TM>(p, m0, c0, c1, b0, b1); });
  with_tile_rows<TILE_ROWS_256>(tm, [&]<int TM>() { tiles256<BITS, TM>(p, m0, c0, c1, b0, b1); });
}
#endif

// x rows per tile of this problem's kernel.
int tile_rows(const Problem& p) { return p.int_dot && p.bits == 8 ? INT_DOT8_ROWS : cpu_has_avx512() ? TILE_ROWS_512 : TILE_ROWS_256; }
// Floats of x one pass over the weights reads (40 KiB of Zen 5's 48 KiB L1):
// longer rows (the MLP's down projection) go a slice of k at a time.
constexpr int X_SLICE_FLOATS = 10240;
// 32-wide blocks of k per slice for a pass of `rows` rows. Every path to a
// product's columns takes the same slices, so their sums round alike.
int slice_blocks(int rows, int blocks) { return std::clamp(X_SLICE_FLOATS / (rows * 32), 1, blocks); }

// Without AVX-512, from this many rows (see dequantize_panel256).
constexpr int PANEL_MIN_ROWS_256 = 5;
constexpr int PANEL_BLOCKS = 4;

void panel_task256(const Problem& p, int c0, int c1) {
#if defined(__x86_64__)
  alignas(64) thread_local float panel[PANEL_BLOCKS * 32 * LANES];
  const int blocks = p.K / 32;
  const int slice = slice_blocks(p.M, blocks);
  const int row_tiles = (p.M + PANEL_TILE_ROWS - 1) / PANEL_TILE_ROWS;
  for (int s0 = 0; s0 < blocks; s0 += slice) {
    const int s1 = std::min(blocks, s0 + slice);
    for (int c = c0; c < c1; ++c) {
      for (int b0 = s0; b0 < s1; b0 += PANEL_BLOCKS) {
        const int b1 = std::min(s1, b0 + PANEL_BLOCKS);
        p.bits == 4 ? dequantize_panel256<4>(p, c, b0, b1, panel) : dequantize_panel256<8>(p, c, b0, b1, panel);
        for (int i = 0, m0 = 0; i < row_tiles; ++i) {
          const int tm = (p.M - m0) / (row_tiles - i);
          panel_rows256(p, panel, (b1 - b0) * 32, m0, tm, c, b0 * 32);
          m0 += tm;
        }
      }
    }
  }
#endif
}

// Column groups [c0, c1) for every x row: per slice of k, per run of column
// groups, every tile of x rows, so a tile's weights are still in L1 for the next.
void column_task(const Problem& p, int c0, int c1) {
#if defined(__x86_64__)
  if (!cpu_has_avx512() && p.M >= PANEL_MIN_ROWS_256) return panel_task256(p, c0, c1);
  const int blocks = p.K / 32;
  const int slice = slice_blocks(p.M, blocks);
  constexpr int RUN = 4;
  const int row_tiles = (p.M + tile_rows(p) - 1) / tile_rows(p);
  for (int b0 = 0; b0 < blocks; b0 += slice) {
    const int b1 = std::min(blocks, b0 + slice);
    for (int c = c0; c < c1; c += RUN) {
      // Tiles as even as they can be (20 rows: 6, 7, 7; 10 rows: 5, 5).
      for (int i = 0, m0 = 0; i < row_tiles; ++i) {
        const int tm = (p.M - m0) / (row_tiles - i);
        if (p.int_dot) tiles_int_dot(p, m0, tm, c, std::min(c1, c + RUN), b0, b1);
        else if (p.bits == 4) tiles<4>(p, m0, tm, c, std::min(c1, c + RUN), b0, b1);
        else tiles<8>(p, m0, tm, c, std::min(c1, c + RUN), b0, b1);
        m0 += tm;
      }
    }
  }
#endif
}

// Rows of x per pass over the weights (prefill chunks take several passes):
// more would shrink the slices of k that stay in L1.
constexpr int PASS_ROWS = 32;

void run_problem(Problem whole) {
#if defined(__x86_64__)
  auto& pool = WorkerPool::instance();
  const size_t blocks = whole.K / 32;
  thread_local std::vector<int8_t> pieces;
  thread_local std::vector<float> scale_sum;
  if (whole.int_dot) {
    pieces.resize(whole.M * blocks * XPIECES * 32);
    scale_sum.resize(2 * whole.M * blocks);
    round_x(whole.x, whole.M, whole.K, pieces.data(), scale_sum.data(), scale_sum.data() + whole.M * blocks);
    whole.rx = {pieces.data(), scale_sum.data(), scale_sum.data() + whole.M * blocks};
  }
  for (int r0 = 0; r0 < whole.M; r0 += PASS_ROWS) {
    Problem p = whole;
    p.M = std::min(PASS_ROWS, whole.M - r0);
    p.x += static_cast<size_t>(r0) * p.K;
    p.y += static_cast<size_t>(r0) * p.N;
    if (p.int_dot) p.rx = {whole.rx.pieces + r0 * blocks * XPIECES * 32, whole.rx.scale + r0 * blocks, whole.rx.sum + r0 * blocks};
    const int groups = (p.N + LANES - 1) / LANES;
    // A few tasks per thread evens out uneven progress; whole runs of 4 groups.
    const int tasks = std::clamp(groups / 4, 1, pool.threads() * 4);
    const int per_task = ((groups + tasks - 1) / tasks + 3) / 4 * 4;
    pool.run((groups + per_task - 1) / per_task, [&](int t) { column_task(p, t * per_task, std::min(groups, (t + 1) * per_task)); });
  }
#else
  throw std::runtime_error("cpu_quantized_matmul: x86-64 only");
#endif
}

class QuantizedMatmulCpu : public CpuKernel {
 public:
  QuantizedMatmulCpu(mx::Stream stream, int group_size, int bits, bool int_dot)
      : CpuKernel(stream), group_size_(group_size), bits_(bits), int_dot_(int_dot) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    dispatch_on_cpu(stream(), inputs, outputs, [x = inputs[0], packed = inputs[1], y = outputs[0],
                      group_size = group_size_, bits = bits_, int_dot = int_dot_]() mutable {
      const int K = x.shape(-1), N = y.shape(-1);
      const int M = K > 0 ? static_cast<int>(x.size() / K) : 0;
      run_problem(Problem{x.data<float>(), packed.data<uint8_t>(), y.data<float>(), M, K, N, K / group_size, group_size, bits, int_dot});
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("cpu_quantized_matmul: CPU only");
  }

  const char* name() const override { return "QuantizedMatmulCpu"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const QuantizedMatmulCpu&>(other);
    return o.group_size_ == group_size_ && o.bits_ == bits_ && o.int_dot_ == int_dot_;
  }

 private:
  int group_size_, bits_;
  bool int_dot_;
};

}  // namespace

bool cpu_qmatmul_supported() { return cpu_has_avx2_fma(); }

bool cpu_qmatmul_accepts(int group_size, int bits) {
  return (bits == 4 || bits == 8) && group_size >= 32 && group_size % 32 == 0;
}

CpuQuantWeight CpuQuantWeight::from_affine(const mx::array& packed, const mx::array& scales, const mx::array& biases, int group_size,
                                           int bits) {
  auto cpu = mx::Device(mx::Device::cpu);
  // Every one of the N rows reads its scales and biases: fewer rows of them would be read past their end.
  if (packed.ndim() != 2 || scales.ndim() != 2 || biases.shape() != scales.shape() || scales.shape(0) != packed.shape(0) ||
      group_size <= 0 || (bits != 4 && bits != 8) ||
      static_cast<int64_t>(packed.shape(1)) * 32 != static_cast<int64_t>(scales.shape(1)) * group_size * bits) {
    throw std::invalid_argument("CpuQuantWeight::from_affine: packed " + shape_string(packed) + ", scales " + shape_string(scales) +
                                " and biases " + shape_string(biases) + " do not make a " + std::to_string(bits) +
                                "-bit weight of group size " + std::to_string(group_size));
  }
  auto q = mx::contiguous(mx::view(packed, mx::uint8), false, cpu);
  auto s = mx::contiguous(mx::astype(scales, mx::float32, cpu), false, cpu);
  auto b = mx::contiguous(mx::astype(biases, mx::float32, cpu), false, cpu);
  mx::eval(q, s, b);
  const int N = q.shape(0), row_bytes = q.shape(1), groups = s.shape(1);
  const int C = (N + LANES - 1) / LANES;
  // MLX's 4-bit byte i of a row holds its columns 2i (low nibble) and 2i + 1
  // (high), which is this layout's byte for that k pair: the repacking moves
  // whole bytes, 16 rows' byte i side by side (zeros past N).
  const size_t kgroup = kgroup_bytes(group_size, bits), value_bytes = kgroup - HEADER_BYTES;
  const size_t row_group_bytes = value_bytes / LANES;  // one row's bytes in a group of k
  std::vector<uint8_t> out(static_cast<size_t>(C) * groups * kgroup, 0);
  const uint8_t* qin = q.data<uint8_t>();
  const float *sin = s.data<float>(), *bin = b.data<float>();
  const bool int_dot = cpu_uses_vnni();
  for (int n = 0; n < N; ++n) {
    const int c = n / LANES, j = n % LANES;
    for (int g = 0; g < groups; ++g) {
      uint8_t* at = out.data() + (static_cast<size_t>(c) * groups + g) * kgroup;
      reinterpret_cast<float*>(at)[j] = sin[static_cast<size_t>(n) * groups + g];
      reinterpret_cast<float*>(at)[LANES + j] = bin[static_cast<size_t>(n) * groups + g];
      const uint8_t* src = qin + static_cast<size_t>(n) * row_bytes + g * row_group_bytes;
      if (int_dot && bits == 8) {
        // Per 4 k, a column's 4 bytes side by side.
        for (size_t i = 0; i < row_group_bytes; ++i) at[HEADER_BYTES + (i / 4) * 4 * LANES + 4 * j + i % 4] = src[i];
      } else if (int_dot) {
        // Per 4 k: src bytes (k, k+1) and (k+2, k+3) become (k, k+2) and (k+1, k+3).
        for (size_t i = 0; i + 1 < row_group_bytes; i += 2) {
          uint8_t* quad = at + HEADER_BYTES + i * LANES + 2 * j;
          quad[0] = static_cast<uint8_t>((src[i] & 0x0F) | (src[i + 1] << 4));
          quad[1] = static_cast<uint8_t>((src[i] >> 4) | (src[i + 1] & 0xF0));
        }
      } else {
        for (size_t i = 0; i < row_group_bytes; ++i) at[HEADER_BYTES + i * LANES + j] = src[i];
      }
    }
  }
  CpuQuantWeight w{mx::array(out.data(), {C, static_cast<int>(groups * kgroup)}, mx::uint8), group_size, bits, N, int_dot};
  mx::eval(w.packed);
  return w;
}

void cpu_dequantize_column_group(const CpuQuantWeight& w, int c, float* out) {
  if (!w.int_dot) throw std::logic_error("cpu_dequantize_column_group: integer-dot layouts only");
  const int K = w.in_features();
  const size_t kgroup = kgroup_bytes(w.group_size, w.bits);
  const uint8_t* column_group = w.packed.data<uint8_t>() + static_cast<size_t>(c) * w.packed.shape(1);
  for (int g = 0; g < K / w.group_size; ++g) {
    const uint8_t* at = column_group + g * kgroup;
    const float* scale = reinterpret_cast<const float*>(at);
    const float* bias = scale + LANES;
    const uint8_t* values = at + HEADER_BYTES;
    for (int j = 0; j < LANES; ++j) {
      for (int i = 0; i < w.group_size; ++i) {
        // The layouts from_affine writes (per 4 k).
        const uint8_t* quad = values + (i / 4) * 4 * LANES * w.bits / 8;
        const int q = w.bits == 8 ? quad[4 * j + i % 4]
                                  : (quad[2 * j + (i % 4) % 2] >> (4 * ((i % 4) / 2))) & 0x0F;
        out[static_cast<size_t>(j) * K + g * w.group_size + i] = scale[j] * static_cast<float>(q) + bias[j];
      }
    }
  }
}

void cpu_quantized_matmul_groups(const float* x_row, int row, int rows, const CpuQuantWeight& w, std::span<const int> groups, float* y) {
#if defined(__x86_64__)
  if (!w.int_dot) throw std::logic_error("cpu_quantized_matmul_groups: integer-dot layouts only");
  const int K = w.in_features();
  const int blocks = K / 32;
  thread_local std::vector<int8_t> pieces;
  thread_local std::vector<float> scale_sum;
  pieces.resize(static_cast<size_t>(blocks) * XPIECES * 32);
  scale_sum.resize(2 * blocks);
  round_x(x_row, 1, K, pieces.data(), scale_sum.data(), scale_sum.data() + blocks);
  Problem p{x_row, w.packed.data<uint8_t>(), y, 1, K, w.out_features, K / w.group_size, w.group_size, w.bits, true,
            {pieces.data(), scale_sum.data(), scale_sum.data() + blocks}};
  // The slices of k that run_problem's pass holding this row takes.
  const int pass_rows = std::min(PASS_ROWS, rows - row / PASS_ROWS * PASS_ROWS);
  const int slice = slice_blocks(pass_rows, blocks);
  for (int c : groups) {
    for (int b0 = 0; b0 < blocks; b0 += slice) tiles_int_dot(p, 0, 1, c, c + 1, b0, std::min(blocks, b0 + slice));
  }
#else
  throw std::runtime_error("cpu_quantized_matmul_groups: x86-64 only");
#endif
}

int CpuQuantWeight::in_features() const {
  return static_cast<int>(packed.shape(1) / kgroup_bytes(group_size, bits)) * group_size;
}

std::optional<CpuQuantWeight> CpuQuantWeight::columns(int start, int stop) const {
  if (start % LANES != 0 || (stop % LANES != 0 && stop != out_features) || start >= stop || stop > out_features) return std::nullopt;
  return CpuQuantWeight{mx::slice(packed, {start / LANES, 0}, {(stop + LANES - 1) / LANES, packed.shape(1)}), group_size, bits,
                        stop - start, int_dot};
}

mx::array cpu_quantized_matmul(const mx::array& x, const CpuQuantWeight& w) {
  auto cpu = mx::Device(mx::Device::cpu);
  const int K = x.shape(-1);
  if (K % w.group_size != 0 || static_cast<size_t>(w.packed.shape(-1)) != K / w.group_size * kgroup_bytes(w.group_size, w.bits)) {
    throw std::invalid_argument("cpu_quantized_matmul: input width " + std::to_string(K) + " does not match the weight");
  }
  auto xc = row_contiguous(mx::astype(x, mx::float32, cpu));
  auto shape = x.shape();
  shape.back() = w.out_features;
  return mx::array(shape, mx::float32, std::make_shared<QuantizedMatmulCpu>(mx::default_stream(cpu), w.group_size, w.bits, w.int_dot),
                   {xc, w.packed});
}

}  // namespace mlxb
