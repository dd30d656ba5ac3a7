// Llama family: Llama 2/3.x, SmolLM2, Mistral. Pre-norm blocks, SwiGLU MLP,
// grouped-query attention, optional RoPE scaling (linear, llama3).
// Qwen 2 (q/k/v biases) and Qwen 3 (q/k RMSNorm) are this same decoder.
#include "model.h"

namespace mlxb {
namespace {

struct Block {
  mx::array input_norm, post_attention_norm;
  Attention attn;
  GatedMlp mlp;
};

class Llama : public Model {
 public:
  Llama(const ModelSpec& spec, const WeightStore& w, bool qk_norm)
      : eps_(spec.rms_norm_eps), embed_(w.embedding("model.embed_tokens")), norm_(w.norm("model.norm.weight")) {
    for (int i = 0; i < spec.num_layers; ++i) {
      const auto p = layer_prefix(i);
      blocks_.push_back(Block{w.norm(p + ".input_layernorm.weight"), w.norm(p + ".post_attention_layernorm.weight"),
                              load_attention(spec, w, i, qk_norm), load_mlp(spec, w, i)});
    }
    if (!spec.tie_word_embeddings) lm_head_ = w.linear("lm_head");
  }

  mx::array forward(const mx::array& tokens, KvCache& cache) override {
    const int L = tokens.shape(1);
    auto ctx = cache.prepare(L, std::nullopt);
    auto h = embed_(tokens);  // (B, L, hidden)
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const auto& b = blocks_[i];
      h = mx::add(h, b.attn(rms_norm(h, b.input_norm, eps_), cache, static_cast<int>(i), ctx));
      h = mx::add(h, b.mlp(rms_norm(h, b.post_attention_norm, eps_)));
    }
    cache.advance(L);
    return project_last(h, norm_, eps_, embed_, lm_head_);
  }

  int num_layers() const override { return static_cast<int>(blocks_.size()); }

 private:
  float eps_;
  Embedding embed_;
  mx::array norm_;
  std::vector<Block> blocks_;
  std::optional<Linear> lm_head_;
};

}  // namespace

std::unique_ptr<Model> build_llama_decoder(const ModelSpec& spec, const WeightStore& w, bool qk_norm) {
  return std::make_unique<Llama>(spec, w, qk_norm);
}

std::unique_ptr<Model> build_llama(const ModelSpec& spec, const WeightStore& w) {
  return build_llama_decoder(spec, w, /*qk_norm=*/false);
}

}  // namespace mlxb
