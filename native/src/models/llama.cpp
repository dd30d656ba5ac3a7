// Llama family: Llama 2/3.x, SmolLM2, Mistral. Pre-norm blocks, SwiGLU MLP,
// grouped-query attention, optional RoPE scaling (linear, llama3).
// Qwen 2 (q/k/v biases), Qwen 3 (q/k RMSNorm) and Phi-3 (fused projections,
// split at load) are this same decoder with their own block loaders.
#include "model.h"

namespace mlxb {
namespace {

class Llama : public Model {
 public:
  Llama(const ModelSpec& spec, const WeightStore& w, const LlamaBlockLoader& load_block)
      : eps_(spec.rms_norm_eps), embed_(w.embedding("model.embed_tokens")), norm_(w.norm("model.norm.weight")) {
    bool any_sliding = false;
    for (int i = 0; i < spec.num_layers; ++i) {
      blocks_.push_back(load_block(i));
      any_sliding |= blocks_.back().attn.sliding;
    }
    if (any_sliding) sliding_window_ = spec.sliding_window;
    if (!spec.tie_word_embeddings) lm_head_ = w.linear("lm_head");
  }

  mx::array forward_hidden(const mx::array& tokens, KvCache& cache) override {
    const int L = tokens.shape(1);
    auto ctx = cache.prepare(L, sliding_window_);
    auto h = embed_(tokens);  // (B, L, hidden)
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const auto& b = blocks_[i];
      h = mx::add(h, b.attn(rms_norm(h, b.input_norm, eps_), cache, static_cast<int>(i), ctx));
      h = mx::add(h, b.mlp(rms_norm(h, b.post_attention_norm, eps_)));
    }
    cache.advance(L);
    return last_normed(h, norm_, eps_);
  }

  mx::array logits(const mx::array& hidden) const override { return project_rows(output_projection(embed_, lm_head_), hidden); }

  const Linear* plain_output_projection() const override { return &output_projection(embed_, lm_head_); }

  int num_layers() const override { return static_cast<int>(blocks_.size()); }

 private:
  float eps_;
  Embedding embed_;
  mx::array norm_;
  std::vector<LlamaBlock> blocks_;
  std::optional<int> sliding_window_;
  std::optional<Linear> lm_head_;
};

}  // namespace

std::unique_ptr<Model> build_llama_decoder(const ModelSpec& spec, const WeightStore& w, const LlamaBlockLoader& load_block) {
  return std::make_unique<Llama>(spec, w, load_block);
}

std::unique_ptr<Model> build_llama_decoder(const ModelSpec& spec, const WeightStore& w, bool qk_norm) {
  return build_llama_decoder(spec, w, [&](int i) {
    const auto p = layer_prefix(i);
    return LlamaBlock{w.norm(p + ".input_layernorm.weight"), w.norm(p + ".post_attention_layernorm.weight"),
                      load_attention(spec, w, i, qk_norm), load_mlp(spec, w, i)};
  });
}

std::unique_ptr<Model> build_llama(const ModelSpec& spec, const WeightStore& w) {
  return build_llama_decoder(spec, w, /*qk_norm=*/false);
}

}  // namespace mlxb
