#pragma once
#include <bit>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mlxb {

// 2^f's Taylor coefficients, highest power first.
inline constexpr float EXP2_TAYLOR[8] = {1.52527338e-05f, 0.000154035304f, 0.00133335581f, 0.00961812911f,
                                         0.0555041087f,   0.240226507f,    0.693147181f,   1.0f};

// exp(x) for x <= 0 as 2^n * 2^f, n = trunc(x log2 e) in [-127, 0] and
// f in (-1, 0], 2^f by its Taylor series (relative error under 2e-7). n = -127
// gives the bit pattern of 0.0f, so exp(-inf) and anything under about -88 is
// exactly 0, as in float32. Inlined into loops the compiler vectorizes
// (MLX's CPU exp is a scalar libm call per element).
inline float exp_nonpositive(float x) {
  float t = x * 1.44269504f;
  t = t < -127.0f ? -127.0f : t;
  const int whole = static_cast<int>(t);
  const float f = t - static_cast<float>(whole);
  float p = EXP2_TAYLOR[0];
  p = p * f + EXP2_TAYLOR[1];
  p = p * f + EXP2_TAYLOR[2];
  p = p * f + EXP2_TAYLOR[3];
  p = p * f + EXP2_TAYLOR[4];
  p = p * f + EXP2_TAYLOR[5];
  p = p * f + EXP2_TAYLOR[6];
  p = p * f + EXP2_TAYLOR[7];
  return p * std::bit_cast<float>((whole + 127) << 23);
}

#if defined(__x86_64__)
// exp_nonpositive on 16 lanes, for kernels that hold their values in vectors.
__attribute__((target("avx512f"))) inline __m512 exp_nonpositive512(__m512 x) {
  const __m512 t = _mm512_max_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _mm512_set1_ps(-127.0f));
  const __m512i whole = _mm512_cvttps_epi32(t);
  const __m512 f = _mm512_sub_ps(t, _mm512_cvtepi32_ps(whole));
  __m512 p = _mm512_set1_ps(EXP2_TAYLOR[0]);
  for (int i = 1; i < 8; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_TAYLOR[i]));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(whole, _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}
#endif

}  // namespace mlxb
