#pragma once
#include <functional>
#include <memory>
#include <string>

#include "../cache.h"
#include "../layers.h"
#include "../model_spec.h"
#include "../weights.h"

namespace mlxb {

// A decoder-only language model over a batch KV cache.
class Model {
 public:
  virtual ~Model() = default;
  // tokens (B, L) int32, appended after what `cache` holds ->
  // logits (B, vocab) of each row's last new position. Advances the cache.
  mx::array forward(const mx::array& tokens, KvCache& cache) { return logits(forward_hidden(tokens, cache)); }
  // The same up to the output projection: (B, hidden), after the final norm.
  virtual mx::array forward_hidden(const mx::array& tokens, KvCache& cache) = 0;
  // (B, hidden) from forward_hidden -> logits (B, vocab).
  virtual mx::array logits(const mx::array& hidden) const = 0;
  // The output projection where the logits are its output and nothing more
  // (no soft-cap), so that greedy picks can skip most of it; else null.
  virtual const Linear* plain_output_projection() const = 0;
  virtual int num_layers() const = 0;
};

using ModelFactory = std::unique_ptr<Model> (*)(const ModelSpec&, const WeightStore&);

// model_type / general.architecture (normalized by the TS side) -> factory.
std::unique_ptr<Model> build_model(const ModelSpec& spec, const WeightStore& weights);

std::unique_ptr<Model> build_llama(const ModelSpec&, const WeightStore&);
// The Llama decoder, shared by the Qwen and Phi-3 files: with or without q/k
// RMSNorm, or with a block loader of their own.
struct LlamaBlock {
  mx::array input_norm, post_attention_norm;
  Attention attn;
  GatedMlp mlp;
};
using LlamaBlockLoader = std::function<LlamaBlock(int layer)>;
std::unique_ptr<Model> build_llama_decoder(const ModelSpec&, const WeightStore&, bool qk_norm);
std::unique_ptr<Model> build_llama_decoder(const ModelSpec&, const WeightStore&, const LlamaBlockLoader& load_block);
// The Gemma decoder, shared by the Gemma 2 and Gemma 3 files.
std::unique_ptr<Model> build_gemma_decoder(const ModelSpec&, const WeightStore&, bool qk_norm, float embed_scale);
std::unique_ptr<Model> build_qwen2(const ModelSpec&, const WeightStore&);
std::unique_ptr<Model> build_qwen3(const ModelSpec&, const WeightStore&);
std::unique_ptr<Model> build_gemma2(const ModelSpec&, const WeightStore&);
std::unique_ptr<Model> build_gemma3(const ModelSpec&, const WeightStore&);
std::unique_ptr<Model> build_phi3(const ModelSpec&, const WeightStore&);

// Pieces every architecture here assembles the same way.
std::string layer_prefix(int i);
Attention load_attention(const ModelSpec& spec, const WeightStore& w, int layer, bool qk_norm);
// Heads, scale, RoPE, sliding window and soft-cap of layer `layer`, as the spec
// says; and, once the projections are set, their stack for the CPU kernel.
void configure_attention(const ModelSpec& spec, int layer, Attention& a);
GatedMlp load_mlp(const ModelSpec& spec, const WeightStore& w, int layer);
// Refuses an MLP whose projections do not chain: gate and up (out, in) alike, down (in, out) of them.
void check_mlp_shapes(const ModelSpec& spec, const std::string& prefix, const GatedMlp& mlp);
// The last position of each row after the final norm: (B, L, hidden) -> (B, hidden).
mx::array last_normed(const mx::array& h, const mx::array& norm_weight, float eps);
// The output projection: lm_head, or the embedding table where tied.
inline const Linear& output_projection(const Embedding& embed, const std::optional<Linear>& lm_head) {
  return lm_head ? *lm_head : embed.table;
}
// hidden (B, hidden) -> logits (B, vocab) through `out`, as (B, 1, hidden):
// on the GPU, MLX then takes its matrix-vector kernels, as before the split.
mx::array project_rows(const Linear& out, const mx::array& hidden);

}  // namespace mlxb
