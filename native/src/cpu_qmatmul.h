#pragma once
#include <optional>

#include "mlx/mlx.h"

namespace mlxb {
namespace mx = mlx::core;

// A weight kept in MLX's affine quantization (uint32-packed 4- or 8-bit
// values, one float32 scale and bias per group along the input dimension),
// for the CPU decode kernel below.
struct CpuQuantWeight {
  mx::array packed;  // (N, K * bits / 32) uint32
  mx::array scales;  // (N, K / group_size) float32
  mx::array biases;  // (N, K / group_size) float32
  int group_size = 0;
  int bits = 0;
};

// True where the kernel can run: x86-64 with AVX2 and FMA.
bool cpu_qmatmul_supported();
// The weight layouts the kernel reads.
bool cpu_qmatmul_accepts(int group_size, int bits);

// y (..., N) = x (..., K) W^T in float32, reading W quantized. At decode, where
// a step multiplies a few rows by every weight, the step is bound by reading
// the weights: 4-bit weights are an eighth of float32's bytes, and OpenBLAS
// reads float32 at under half this machine's memory bandwidth at few rows.
// The result equals x times the dequantized W up to float32 summation order.
mx::array cpu_quantized_matmul(const mx::array& x, const CpuQuantWeight& w);

}  // namespace mlxb
