#pragma once
#include <vector>

#include "mlx/mlx.h"

namespace mlxb {
namespace mx = mlx::core;

// Softmax attention for a few queries per row on the CPU, without BLAS. At
// decode every row multiplies one query per head by its own keys; OpenBLAS
// spent more time packing those small matrices than multiplying them (a
// quarter of a 16-row step on the default model).
//
// q (B, H, M, D) float32, already scaled; k (B, H, S, D) and v (B, H, S, Dv)
// float32, views of a cache allowed; bounds (B, M, 2) int32: query m of row b
// sees key columns [begin, end) in every head. Returns the unnormalized share
// {max, sum, out} of attention_share in layers.cpp: (B, H, M, 1) twice and
// (B, H, M, Dv), so shares over disjoint key sets merge exactly. A query that
// sees no column gets max = -inf, sum = 0, out = 0. `logit_cap` > 0 soft-caps
// the scores (Gemma 2).
std::vector<mx::array> cpu_attention_share(const mx::array& q, const mx::array& k, const mx::array& v,
                                           const mx::array& bounds, float logit_cap);

// Where the kernel runs: x86-64 with AVX2 and FMA, head sizes a multiple of 8.
bool cpu_attention_supported(int head_dim, int value_dim);

}  // namespace mlxb
