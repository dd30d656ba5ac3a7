#pragma once
#include "mlx/mlx.h"

namespace mlxb {
namespace mx = mlx::core;

// MLX has no CPU kernels for fast::rms_norm and fast::rope: on the CPU each
// call is composed of ops (rms_norm 7, rope about 15, sin and cos included),
// about 75 and 180 microseconds a call whatever the batch, which made them
// about 15 ms of every decode step on the default model (61 norms and 60
// ropes). These are one op each, and compute what MLX's composition computes,
// operation for operation in float32, so results are bit-identical on Linux.

// rms_norm(x, weight, eps) for float32 x (..., D) and weight (D,).
mx::array cpu_rms_norm(const mx::array& x, const mx::array& weight, float eps);

// RoPE on float32 x (B, H, L, D) (any strides with contiguous rows) from
// tables cos and sin (B, L, dims / 2), any strides with contiguous rows, as
// rope_tables makes them.
// The output is contiguous.
mx::array cpu_rope(const mx::array& x, const mx::array& cos, const mx::array& sin, int dims, bool traditional);

// cos and sin of each row's positions [offsets[b], offsets[b] + L) times the
// inverse frequencies, (B, L, dims / 2), made by the ops MLX's rope makes them
// with. One pair serves every layer of a step.
std::pair<mx::array, mx::array> rope_tables(const mx::array& offsets, int B, int L, int dims, std::optional<float> base,
                                            float scale, const std::optional<mx::array>& freqs);

}  // namespace mlxb
