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
// Shapes: q (B, H, M, D) float32; k (B, H, S, D) and v (B, H, S, Dv)
// float32, views of a cache allowed; bounds (B, M, 2) int32: query m of row b
// sees key columns [begin, end) in every head. A query that sees no column
// gets zeros. `logit_cap` > 0 soft-caps the scores (Gemma 2).

// A prefix block that some rows of the batch read: keys and values
// (1, H, length, .), which of its columns each query of those rows sees
// (n, M, 2) int32, and the rows (batch indices).
struct CpuPrefixGroup {
  mx::array keys, values, bounds;
  std::vector<int> rows;
};

// Normalized attention of q (B, H, M, D), unscaled, over each row's own
// columns k, v (bounds as above) and, for the rows of a group, its block too:
// one softmax over both. Returns (B, H, M, Dv) float32.
mx::array cpu_grouped_attention(const mx::array& q, float scale, const mx::array& k, const mx::array& v,
                                const mx::array& bounds, const std::vector<CpuPrefixGroup>& groups, float logit_cap);

// Bounds (n, L, 2) of L queries -> (n, G * L, 2) int32 for queries laid out
// (G, L): the G query heads that share a kv head see the same columns.
mx::array cpu_attention_bounds(const mx::array& bounds, int heads_per_kv);

// Where the kernel runs: x86-64 with AVX2 and FMA, head sizes a multiple of 8.
bool cpu_attention_supported(int head_dim, int value_dim);

}  // namespace mlxb
