#pragma once
#include "gguf_reader.h"
#include "mlx/mlx.h"

namespace mlxb {
namespace mx = mlx::core;

// A GGUF tensor as MLX arrays on the host, converted from the mapped file.
// Shapes are MLX order (slowest dimension first): a ggml (K, N) matrix is (N, K).

// Exact float32 values.
mx::array gguf_float32(const GgufFile& file, const GgufTensorInfo& t);

// MLX affine form (group size 32) of a matrix whose type maps onto it exactly.
struct GgufAffine {
  mx::array packed;  // (N, K * bits / 32) uint32
  mx::array scales;  // (N, K / 32) float32
  mx::array biases;  // (N, K / 32) float32
  int bits = 0;
};
GgufAffine gguf_affine(const GgufFile& file, const GgufTensorInfo& t);

}  // namespace mlxb
