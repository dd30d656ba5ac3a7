#include <unordered_map>

#include "model.h"

namespace mlxb {

std::unique_ptr<Model> build_model(const ModelSpec& spec, const WeightStore& weights) {
  static const std::unordered_map<std::string, ModelFactory> factories = {
      {"llama", build_llama},   {"qwen2", build_qwen2},   {"qwen3", build_qwen3},
      {"gemma2", build_gemma2}, {"gemma3", build_gemma3}, {"phi3", build_phi3},
  };
  auto it = factories.find(spec.architecture);
  if (it == factories.end()) {
    throw std::runtime_error("[model] " + spec.path + ": unsupported architecture '" + spec.architecture + "'");
  }
  return it->second(spec, weights);
}

std::string layer_prefix(int i) { return "model.layers." + std::to_string(i); }

Attention load_attention(const ModelSpec& spec, const WeightStore& w, int layer, bool qk_norm) {
  const auto p = layer_prefix(layer) + ".self_attn";
  Attention a{
      .q_proj = w.linear(p + ".q_proj", spec.attention_bias),
      .k_proj = w.linear(p + ".k_proj", spec.attention_bias),
      .v_proj = w.linear(p + ".v_proj", spec.attention_bias),
      .o_proj = w.linear(p + ".o_proj"),
  };
  if (qk_norm) {
    a.q_norm = w.norm(p + ".q_norm.weight");
    a.k_norm = w.norm(p + ".k_norm.weight");
  }
  configure_attention(spec, layer, a);
  return a;
}

void configure_attention(const ModelSpec& spec, int layer, Attention& a) {
  a.norm_eps = spec.rms_norm_eps;
  a.n_heads = spec.num_heads;
  a.n_kv_heads = spec.num_kv_heads;
  a.head_dim = spec.head_dim;
  a.scale = 1.0f / std::sqrt(spec.query_pre_attn_scalar.value_or(static_cast<float>(spec.head_dim)));
  a.sliding = spec.layer_is_sliding(layer);
  a.rope = make_rope(spec, /*local=*/a.sliding && spec.rope_local_theta.has_value());
  a.logit_softcap = spec.attn_logit_softcapping;
  a.qkv = StackedProjections::stack({&a.q_proj, &a.k_proj, &a.v_proj});
}

GatedMlp load_mlp(const ModelSpec& spec, const WeightStore& w, int layer) {
  const auto p = layer_prefix(layer) + ".mlp";
  GatedMlp mlp{w.linear(p + ".gate_proj"), w.linear(p + ".up_proj"), w.linear(p + ".down_proj"),
               spec.hidden_act == "gelu_tanh"};
  check_mlp_shapes(spec, p, mlp);
  mlp.gate_up = StackedProjections::stack({&mlp.gate_proj, &mlp.up_proj});
  return mlp;
}

void check_mlp_shapes(const ModelSpec& spec, const std::string& prefix, const GatedMlp& mlp) {
  auto dims = [](const Linear& l) { return "(" + std::to_string(l.out_features()) + ", " + std::to_string(l.in_features()) + ")"; };
  const auto& g = mlp.gate_proj;
  const auto& u = mlp.up_proj;
  const auto& d = mlp.down_proj;
  // The CPU kernels read these products as they are: a mismatch would read past a buffer.
  if (u.out_features() != g.out_features() || u.in_features() != g.in_features() || d.in_features() != g.out_features() ||
      d.out_features() != g.in_features()) {
    throw std::runtime_error("[weights] " + spec.path + ": '" + prefix + "' projections do not fit together: gate_proj " + dims(g) +
                             ", up_proj " + dims(u) + ", down_proj " + dims(d) +
                             " (out, in); gate_proj and up_proj must match, and down_proj must map their output back to their input");
  }
}

mx::array project_rows(const Linear& out, const mx::array& hidden) {
  const int B = hidden.shape(0);
  return mx::reshape(out(mx::reshape(hidden, {B, 1, hidden.shape(1)})), {B, -1});
}

mx::array last_normed(const mx::array& h, const mx::array& norm_weight, float eps) {
  const int B = h.shape(0), L = h.shape(1), D = h.shape(2);
  auto last = mx::slice(h, {0, L - 1, 0}, {B, L, D});  // (B, 1, hidden)
  return mx::reshape(rms_norm(last, norm_weight, eps), {B, D});
}

}  // namespace mlxb
