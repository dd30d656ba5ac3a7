// Qwen 2 / 2.5: the Llama decoder with biases on the q, k and v projections
// (spec.attention_bias, read by load_attention) and usually tied embeddings.
#include "model.h"

namespace mlxb {

std::unique_ptr<Model> build_qwen2(const ModelSpec& spec, const WeightStore& w) {
  return build_llama_decoder(spec, w, /*qk_norm=*/false);
}

}  // namespace mlxb
