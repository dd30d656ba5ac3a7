#pragma once
#include <optional>
#include <string>
#include <vector>

#include "gguf_reader.h"

namespace mlxb {

// Mirror of src/engine/model-spec.ts: the TypeScript side reads config.json or
// GGUF metadata and hands over this normalized description.
struct RopeScaling {
  std::string type;  // linear | llama3 | longrope
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 0;
  std::vector<float> short_factor, long_factor;
};

struct ModelSpec {
  std::string path;
  std::string format;  // gguf | safetensors
  std::vector<std::string> weight_files;
  GgufTable gguf;  // format gguf: the tensor table the TypeScript side read from weight_files[0]
  std::string architecture;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  bool rope_traditional = false;
  std::optional<RopeScaling> rope_scaling;
  int context_length = 0;
  bool tie_word_embeddings = false;
  float norm_weight_offset = 0.0f;
  std::string hidden_act = "silu";
  bool scale_embeddings = false;
  std::optional<float> query_pre_attn_scalar;
  std::optional<float> attn_logit_softcapping;
  std::optional<float> final_logit_softcapping;
  std::optional<int> sliding_window;
  std::vector<std::string> layer_types;  // per layer: full | sliding; empty = all full
  std::optional<float> rope_local_theta;
  bool attention_bias = false;
  std::optional<int> quant_group_size;
  std::optional<int> quant_bits;

  bool layer_is_sliding(int layer) const {
    return sliding_window && layer < static_cast<int>(layer_types.size()) && layer_types[layer] == "sliding";
  }
};

}  // namespace mlxb
