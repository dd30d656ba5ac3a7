#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace mlxb {

// The ggml tensor types this addon reads (ids as GGUF stores them), their
// block geometry, float32 dequantization and the exact MLX-affine repack.
// Layouts follow ggml's block structs; the `gguf` Python package's
// quants.py is the reference the tests compare against, value for value.
enum GgmlType : uint32_t {
  GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q5_0 = 6, GGML_Q5_1 = 7, GGML_Q8_0 = 8,
  GGML_Q2_K = 10, GGML_Q3_K = 11, GGML_Q4_K = 12, GGML_Q5_K = 13, GGML_Q6_K = 14, GGML_IQ4_NL = 20,
  GGML_IQ4_XS = 23, GGML_BF16 = 30,
};

struct GgmlBlock {
  int64_t elements = 0;  // values per block
  int64_t bytes = 0;     // bytes per block
};

// Block geometry of a supported type; nullopt for any other id.
std::optional<GgmlBlock> ggml_block(uint32_t type);
// "Q4_K", or "99 (unknown)" for ids without a name.
std::string ggml_type_name(uint32_t type);

// `count` values (a whole number of blocks) of `type` at `src` -> `dst`, in
// float32 arithmetic with the same operation order as the reference.
void ggml_dequantize(uint32_t type, const uint8_t* src, int64_t count, float* dst);

// Bits of the MLX affine form (group size 32) a type maps onto exactly, or 0.
// Q4_0/Q4_1/Q4_K -> 4, Q5_0/Q5_1/Q5_K -> 5, Q8_0 -> 8.
int ggml_affine_bits(uint32_t type);

// MLX affine layout of one (rows, cols) tensor: w = scale * q + bias per 32
// values of a row; q packed as a little-endian bit stream in uint32 words.
struct AffineOut {
  uint32_t* packed;  // (rows, cols * bits / 32), every word written
  float* scales;     // (rows, cols / 32)
  float* biases;     // (rows, cols / 32)
};

// Repacks `rows` rows of `cols` values (a whole number of blocks) of an affine-exact type.
void ggml_affine_repack(uint32_t type, const uint8_t* src, int64_t rows, int64_t cols, AffineOut out);

}  // namespace mlxb
