// Qwen 3 (dense): the Llama decoder with an RMSNorm over each query and key
// head before RoPE, no projection biases, and an explicit head_dim.
#include "model.h"

namespace mlxb {

std::unique_ptr<Model> build_qwen3(const ModelSpec& spec, const WeightStore& w) {
  return build_llama_decoder(spec, w, /*qk_norm=*/true);
}

}  // namespace mlxb
