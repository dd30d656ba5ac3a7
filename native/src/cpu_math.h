#pragma once
#include <bit>

namespace mlxb {

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
  float p = 1.52527338e-05f;
  p = p * f + 0.000154035304f;
  p = p * f + 0.00133335581f;
  p = p * f + 0.00961812911f;
  p = p * f + 0.0555041087f;
  p = p * f + 0.240226507f;
  p = p * f + 0.693147181f;
  p = p * f + 1.0f;
  return p * std::bit_cast<float>((whole + 127) << 23);
}

}  // namespace mlxb
