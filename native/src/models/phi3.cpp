// Phi-3: the Llama block shape with fused projections: qkv_proj holds q, k and
// v stacked by rows, gate_up_proj holds gate then up. They are split once at
// load so the forward pass is the shared one.
#include "model.h"

namespace mlxb {
namespace {

struct Block {
  mx::array input_norm, post_attention_norm;
  Attention attn;
  GatedMlp mlp;
};

Attention load_fused_attention(const ModelSpec& spec, const WeightStore& w, int layer) {
  const auto p = layer_prefix(layer) + ".self_attn";
  const auto qkv = w.linear(p + ".qkv_proj");
  const int q_rows = spec.num_heads * spec.head_dim;
  const int kv_rows = spec.num_kv_heads * spec.head_dim;
  Attention a{
      .q_proj = qkv.rows(0, q_rows),
      .k_proj = qkv.rows(q_rows, q_rows + kv_rows),
      .v_proj = qkv.rows(q_rows + kv_rows, q_rows + 2 * kv_rows),
      .o_proj = w.linear(p + ".o_proj"),
  };
  a.n_heads = spec.num_heads;
  a.n_kv_heads = spec.num_kv_heads;
  a.head_dim = spec.head_dim;
  a.scale = 1.0f / std::sqrt(static_cast<float>(spec.head_dim));
  a.sliding = spec.layer_is_sliding(layer);
  a.rope = make_rope(spec);
  return a;
}

GatedMlp load_fused_mlp(const ModelSpec& spec, const WeightStore& w, int layer) {
  const auto p = layer_prefix(layer) + ".mlp";
  const auto gate_up = w.linear(p + ".gate_up_proj");
  const int half = gate_up.out_features() / 2;
  return GatedMlp{gate_up.rows(0, half), gate_up.rows(half, 2 * half), w.linear(p + ".down_proj"), false};
}

class Phi3 : public Model {
 public:
  Phi3(const ModelSpec& spec, const WeightStore& w)
      : eps_(spec.rms_norm_eps), sliding_window_(spec.sliding_window),
        embed_(w.embedding("model.embed_tokens")), norm_(w.norm("model.norm.weight")) {
    for (int i = 0; i < spec.num_layers; ++i) {
      const auto p = layer_prefix(i);
      blocks_.push_back(Block{w.norm(p + ".input_layernorm.weight"), w.norm(p + ".post_attention_layernorm.weight"),
                              load_fused_attention(spec, w, i), load_fused_mlp(spec, w, i)});
    }
    if (!spec.tie_word_embeddings) lm_head_ = w.linear("lm_head");
  }

  mx::array forward(const mx::array& tokens, KvCache& cache) override {
    const int L = tokens.shape(1);
    auto ctx = cache.prepare(L, sliding_window_);
    auto h = embed_(tokens);
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
  std::optional<int> sliding_window_;
  Embedding embed_;
  mx::array norm_;
  std::vector<Block> blocks_;
  std::optional<Linear> lm_head_;
};

}  // namespace

std::unique_ptr<Model> build_phi3(const ModelSpec& spec, const WeightStore& w) {
  return std::make_unique<Phi3>(spec, w);
}

}  // namespace mlxb
