// Gemma 2: embeddings scaled by sqrt(hidden), four RMSNorms per block (with
// Gemma's 1 + w, folded in at load), GeGLU MLP, soft-capped attention and
// output logits (as the spec gives them), and sliding-window attention on the
// layers the spec marks. Gemma 3 is this decoder with q/k RMSNorm.
#include "model.h"

namespace mlxb {
namespace {

struct Block {
  mx::array input_norm, post_attention_norm, pre_feedforward_norm, post_feedforward_norm;
  Attention attn;
  GatedMlp mlp;
};

class Gemma : public Model {
 public:
  Gemma(const ModelSpec& spec, const WeightStore& w, bool qk_norm, float embed_scale)
      : eps_(spec.rms_norm_eps),
        embed_scale_(spec.scale_embeddings ? std::optional<float>(embed_scale) : std::nullopt),
        final_softcap_(spec.final_logit_softcapping),
        sliding_window_(spec.sliding_window),
        embed_(w.embedding("model.embed_tokens")),
        norm_(w.norm("model.norm.weight")) {
    for (int i = 0; i < spec.num_layers; ++i) {
      const auto p = layer_prefix(i);
      blocks_.push_back(Block{w.norm(p + ".input_layernorm.weight"), w.norm(p + ".post_attention_layernorm.weight"),
                              w.norm(p + ".pre_feedforward_layernorm.weight"),
                              w.norm(p + ".post_feedforward_layernorm.weight"),
                              load_attention(spec, w, i, qk_norm), load_mlp(spec, w, i)});
    }
    if (!spec.tie_word_embeddings) lm_head_ = w.linear("lm_head");
  }

  mx::array forward_hidden(const mx::array& tokens, KvCache& cache) override {
    const int L = tokens.shape(1);
    auto ctx = cache.prepare(L, sliding_window_);
    auto h = embed_(tokens);
    if (embed_scale_) h = mx::multiply(h, mx::array(*embed_scale_, h.dtype()));
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const auto& b = blocks_[i];
      auto r = b.attn(rms_norm(h, b.input_norm, eps_), cache, static_cast<int>(i), ctx);
      h = mx::add(h, rms_norm(r, b.post_attention_norm, eps_));
      r = b.mlp(rms_norm(h, b.pre_feedforward_norm, eps_));
      h = mx::add(h, rms_norm(r, b.post_feedforward_norm, eps_));
    }
    cache.advance(L);
    return last_normed(h, norm_, eps_);
  }

  mx::array logits(const mx::array& hidden) const override {
    auto logits = project_rows(output_projection(embed_, lm_head_), hidden);
    return final_softcap_ ? softcap(logits, *final_softcap_) : logits;
  }

  // A soft-cap can round distinct logits to one value, which the first-index
  // tie-break then resolves by position: greedy picks need every logit.
  const Linear* plain_output_projection() const override {
    return final_softcap_ ? nullptr : &output_projection(embed_, lm_head_);
  }

  int num_layers() const override { return static_cast<int>(blocks_.size()); }

 private:
  float eps_;
  std::optional<float> embed_scale_;
  std::optional<float> final_softcap_;
  std::optional<int> sliding_window_;
  Embedding embed_;
  mx::array norm_;
  std::vector<Block> blocks_;
  std::optional<Linear> lm_head_;
};

}  // namespace

std::unique_ptr<Model> build_gemma_decoder(const ModelSpec& spec, const WeightStore& w, bool qk_norm, float embed_scale) {
  return std::make_unique<Gemma>(spec, w, qk_norm, embed_scale);
}

std::unique_ptr<Model> build_gemma2(const ModelSpec& spec, const WeightStore& w) {
  return build_gemma_decoder(spec, w, /*qk_norm=*/false, std::sqrt(static_cast<float>(spec.hidden_size)));
}

}  // namespace mlxb
