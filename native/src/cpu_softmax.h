#pragma once
#include <optional>
#include <vector>

#include "mlx/mlx.h"

namespace mlxb {
namespace mx = mlx::core;

// For scores (..., S) in float32, on the CPU: {exp(scores - max), max, sum},
// max and sum shaped (..., 1). Rows of -inf (nothing visible) give zeros and
// max = -inf. One pass for the max and one for exp and sum per row, with a
// vectorized polynomial exp: MLX's CPU exp is a scalar libm call per element,
// and attention takes one per score, which made it most of a step's time.
// `limits`, int32 broadcastable to (..., 1), keeps only the first limits[r]
// columns of row r (rows reading different lengths of one shared prefix)
// without a masking pass.
std::vector<mx::array> cpu_softmax_parts(const mx::array& scores, const std::optional<mx::array>& limits = std::nullopt);

// gate * sigmoid(gate) * up in float32 on the CPU, with the same vectorized
// exp: MLX's sigmoid takes a scalar exp per element, which was about a tenth
// of a 16-row decode step on the default model.
mx::array cpu_silu_mul(const mx::array& gate, const mx::array& up);
// The same where each row of gate_up (..., 2N) holds gate then up: -> (..., N).
mx::array cpu_silu_mul_stacked(const mx::array& gate_up);

}  // namespace mlxb
