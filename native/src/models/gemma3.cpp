// Gemma 3 (text): the Gemma 2 decoder with q/k RMSNorm, no soft-capping, and
// local (sliding-window) layers with their own RoPE base between the global
// ones (load_attention reads both from the spec). The embedding scale is
// rounded through bfloat16 as the reference implementations do.
#include "model.h"

namespace mlxb {

std::unique_ptr<Model> build_gemma3(const ModelSpec& spec, const WeightStore& w) {
  auto scale = mx::astype(mx::array(std::sqrt(static_cast<float>(spec.hidden_size))), mx::bfloat16);
  return build_gemma_decoder(spec, w, /*qk_norm=*/true, mx::astype(scale, mx::float32).item<float>());
}

}  // namespace mlxb
