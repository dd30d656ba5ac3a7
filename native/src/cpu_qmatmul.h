#pragma once
#include <optional>
#include <span>

#include "mlx/mlx.h"

namespace mlxb {
namespace mx = mlx::core;

// A weight kept quantized for the CPU decode kernel, in its own layout:
// output columns in groups of 16, one per vector lane, so a step broadcasts
// each x value into 16 multiply-adds and needs no horizontal sums. Values and
// (scale, bias) per group along the input dimension are MLX's affine ones.
struct CpuQuantWeight {
  static constexpr int COLUMN_GROUP = 16;  // output columns per group (one per lane)
  // (ceil(N / 16), bytes) uint8. Per group of 16 columns, per group of k: 16
  // float32 scales, 16 biases, then per k (4 bits: per k pair) 16 values.
  mx::array packed;
  int group_size = 0;
  int bits = 0;
  int out_features = 0;  // N; the last column group is zero-padded
  // Values ordered for integer dot products (cpu_qmatmul.cpp), per 4 k: a
  // column's 4 bytes (8-bit), or its 16 bits holding k, k + 2 (low byte) and
  // k + 1, k + 3 (high) (4-bit).
  bool int_dot = false;

  // From MLX's affine layout: packed (N, K * bits / 32) uint32, scales and biases (N, K / group_size).
  static CpuQuantWeight from_affine(const mx::array& packed, const mx::array& scales, const mx::array& biases, int group_size,
                                    int bits);
  // K
  int in_features() const;
  // Output columns [start, stop) as views; both on 16-column boundaries (stop may be N).
  std::optional<CpuQuantWeight> columns(int start, int stop) const;
};

// True where the kernel can run: x86-64 with AVX2 and FMA.
bool cpu_qmatmul_supported();
// The weight layouts the kernel reads.
bool cpu_qmatmul_accepts(int group_size, int bits);

// y (..., N) = x (..., K) W^T in float32, reading W quantized. At decode, where
// a step multiplies a few rows by every weight, the step is bound by reading
// the weights: 4-bit weights are an eighth of float32's bytes. In prefill,
// each weight dequantized once in registers serves up to 32 rows per pass,
// faster than OpenBLAS on the float32 weight (which packs it on every call).
// The result equals x times the dequantized W up to float32 summation order;
// with int_dot, x is first rounded per 32-wide block of k to a multiple of
// the block's largest |x| / 2^21 (the default model's logits then stay within
// 3.2e-4 of the float32 path's, against 7e-5 for the float32 kernel).
mx::array cpu_quantized_matmul(const mx::array& x, const CpuQuantWeight& w);

// Column group c of an integer-dot weight as float32, (16, K): output column
// 16c + j is out[j * K, (j + 1) * K), zeros past N.
void cpu_dequantize_column_group(const CpuQuantWeight& w, int c, float* out);

// Of cpu_quantized_matmul(x, w) with x of `rows` rows, row `row` over the
// column groups `groups` only, into y (N floats; the other columns are left
// as they are): bit for bit what the whole product gives those columns.
// x_row is that row's K floats; w is in the integer-dot layout.
void cpu_quantized_matmul_groups(const float* x_row, int row, int rows, const CpuQuantWeight& w, std::span<const int> groups, float* y);

}  // namespace mlxb
