// Phi-3: the Llama decoder with fused projections: qkv_proj holds q, k and v
// stacked by rows, gate_up_proj holds gate then up. They are split once at
// load so the forward pass is the shared one.
#include "model.h"

namespace mlxb {
namespace {

Attention load_fused_attention(const ModelSpec& spec, const WeightStore& w, int layer) {
  const auto p = layer_prefix(layer) + ".self_attn";
  const auto qkv = w.linear(p + ".qkv_proj", false, /*keep_dense=*/true);
  const int q_rows = spec.num_heads * spec.head_dim;
  const int kv_rows = spec.num_kv_heads * spec.head_dim;
  Attention a{
      .q_proj = qkv.rows(0, q_rows),
      .k_proj = qkv.rows(q_rows, q_rows + kv_rows),
      .v_proj = qkv.rows(q_rows + kv_rows, q_rows + 2 * kv_rows),
      .o_proj = w.linear(p + ".o_proj"),
  };
  configure_attention(spec, layer, a);
  return a;
}

GatedMlp load_fused_mlp(const ModelSpec& spec, const WeightStore& w, int layer) {
  const auto p = layer_prefix(layer) + ".mlp";
  const auto gate_up = w.linear(p + ".gate_up_proj", false, /*keep_dense=*/true);
  const int half = gate_up.out_features() / 2;
  GatedMlp mlp{gate_up.rows(0, half), gate_up.rows(half, 2 * half), w.linear(p + ".down_proj"), false};
  check_mlp_shapes(spec, p, mlp);
  mlp.gate_up = StackedProjections::stack({&mlp.gate_proj, &mlp.up_proj});
  return mlp;
}

}  // namespace

std::unique_ptr<Model> build_phi3(const ModelSpec& spec, const WeightStore& w) {
  return build_llama_decoder(spec, w, [&](int i) {
    const auto p = layer_prefix(i);
    return LlamaBlock{w.norm(p + ".input_layernorm.weight"), w.norm(p + ".post_attention_layernorm.weight"),
                      load_fused_attention(spec, w, i), load_fused_mlp(spec, w, i)};
  });
}

}  // namespace mlxb
