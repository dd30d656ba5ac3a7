#include "weights.h"

#include "cpu_dispatch.h"

#include <algorithm>
#include <filesystem>
#include <regex>

#include "ggml_types.h"
#include "gguf_arrays.h"

namespace mlxb {

WeightMode parse_weight_mode(const std::string& name, bool gpu) {
  if (name == "auto") return gpu ? WeightMode::Quantized : WeightMode::Float32;
  if (name == "float32") return WeightMode::Float32;
  if (name == "float16") return WeightMode::Float16;
  if (name == "bfloat16") return WeightMode::BFloat16;
  if (name == "quantized") return WeightMode::Quantized;
  throw std::invalid_argument("unknown weights mode '" + name + "' (auto, float32, float16, bfloat16, quantized)");
}

std::string describe(WeightMode mode, int bits) {
  switch (mode) {
    case WeightMode::Float32: return "float32";
    case WeightMode::Float16: return "float16";
    case WeightMode::BFloat16: return "bfloat16";
    case WeightMode::Quantized: return bits ? "quantized-" + std::to_string(bits) + "bit" : "as-stored";
  }
  return "?";
}

namespace {

// GGUF tensor names -> Hugging Face names. Gemma GGUFs call the pre-MLP norm
// ffn_norm, Llama-family ones call their only MLP norm that; Phi-3's ffn_up is
// the fused gate_up projection.
std::string hf_name_from_gguf(const std::string& name, const std::string& arch) {
  static const std::regex block(R"(^blk\.(\d+)\.([a-z_]+)\.(\w+)$)");
  static const std::regex top(R"(^([a-z_]+)\.(\w+)$)");
  const bool gemma = arch == "gemma2" || arch == "gemma3";
  std::smatch m;
  if (std::regex_match(name, m, block)) {
    static const std::unordered_map<std::string, std::string> common = {
        {"attn_q", "self_attn.q_proj"},       {"attn_k", "self_attn.k_proj"},
        {"attn_v", "self_attn.v_proj"},       {"attn_output", "self_attn.o_proj"},
        {"attn_qkv", "self_attn.qkv_proj"},   {"attn_q_norm", "self_attn.q_norm"},
        {"attn_k_norm", "self_attn.k_norm"},  {"attn_norm", "input_layernorm"},
        {"ffn_gate", "mlp.gate_proj"},        {"ffn_down", "mlp.down_proj"},
        {"post_attention_norm", "post_attention_layernorm"},
        {"post_ffw_norm", "post_feedforward_layernorm"},
    };
    std::string part = m[2];
    std::string mapped;
    if (part == "ffn_norm") mapped = gemma ? "pre_feedforward_layernorm" : "post_attention_layernorm";
    else if (part == "ffn_up") mapped = arch == "phi3" ? "mlp.gate_up_proj" : "mlp.up_proj";
    else if (auto it = common.find(part); it != common.end()) mapped = it->second;
    else return name;  // unknown parts keep their name; a missing tensor is reported later
    return "model.layers." + m[1].str() + "." + mapped + "." + m[3].str();
  }
  if (std::regex_match(name, m, top)) {
    const std::string part = m[1];
    if (part == "token_embd") return "model.embed_tokens." + m[2].str();
    if (part == "output_norm") return "model.norm." + m[2].str();
    if (part == "output") return "lm_head." + m[2].str();
  }
  return name;
}

std::unordered_map<std::string, mx::array> read_safetensors(const ModelSpec& spec) {
  std::unordered_map<std::string, mx::array> all;
  for (const auto& file : spec.weight_files) {
    if (!std::filesystem::exists(file)) throw std::runtime_error("[weights] " + file + ": file not found");
    try {
      auto [tensors, meta] = mx::load_safetensors(file, mx::Device::cpu);
      for (auto& [name, a] : tensors) all.insert_or_assign(name, a);
    } catch (const std::exception& e) {
      throw std::runtime_error("[safetensors] " + file + ": " + e.what());
    }
  }
  return all;
}

// Scales kept in the activations' half type only where it holds them exactly
// (Q4_0/Q4_1/Q5_x/Q8_0 always; K-quants' d * sc products often not).
mx::array in_dtype_if_exact(const mx::array& a, mx::Dtype dtype) {
  auto cast = mx::astype(a, dtype);
  return mx::all(mx::equal(mx::astype(cast, mx::float32), a)).item<bool>() ? cast : a;
}

}  // namespace

WeightStore::WeightStore(const ModelSpec& spec, WeightMode mode, bool quantized_decode)
    : spec_(spec), mode_(mode), quantized_decode_(quantized_decode) {
  bool has_bf16 = false;
  if (spec.format == "gguf") {
    gguf_ = std::make_unique<GgufFile>(spec.weight_files.at(0), spec.gguf);
    for (const auto& t : gguf_->tensors()) {
      gguf_names_.insert_or_assign(hf_name_from_gguf(t.name, spec.architecture), &t);
      has_bf16 = has_bf16 || t.type == GGML_BF16;
    }
  } else {
    tensors_ = read_safetensors(spec);
  }
  switch (mode) {
    case WeightMode::Float16: compute_dtype_ = mx::float16; break;
    case WeightMode::BFloat16: compute_dtype_ = mx::bfloat16; break;
    case WeightMode::Float32: compute_dtype_ = mx::float32; break;
    case WeightMode::Quantized: {
      // Activations follow the checkpoint's own half type when it has one;
      // GGUF's quantized blocks carry float16 scales.
      compute_dtype_ = gguf_ ? (has_bf16 ? mx::bfloat16 : mx::float16) : mx::float32;
      for (auto& [name, a] : tensors_) {
        if (a.dtype() == mx::float16 || a.dtype() == mx::bfloat16) {
          compute_dtype_ = a.dtype();
          break;
        }
      }
      break;
    }
  }
}

const GgufTensorInfo& WeightStore::gguf_info(const std::string& name) const {
  auto it = gguf_names_.find(name);
  if (it == gguf_names_.end()) {
    throw std::runtime_error("[weights] " + spec_.path + ": missing tensor '" + name + "' for architecture " +
                             spec_.architecture);
  }
  return *it->second;
}

mx::array WeightStore::raw(const std::string& name) const {
  if (gguf_) {
    const auto& t = gguf_info(name);
    auto a = gguf_float32(*gguf_, t);
    gguf_->release_pages(t);
    return a;
  }
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    throw std::runtime_error("[weights] " + spec_.path + ": missing tensor '" + name + "' for architecture " +
                             spec_.architecture);
  }
  return it->second;
}

mx::array WeightStore::tensor(const std::string& name) const {
  auto a = mx::astype(raw(name), compute_dtype_);
  mx::eval(a);
  return a;
}

mx::array WeightStore::norm(const std::string& name) const {
  auto w = mx::astype(raw(name), mx::float32);
  if (spec_.norm_weight_offset != 0.0f) w = mx::add(w, mx::array(spec_.norm_weight_offset));
  w = mx::astype(w, compute_dtype_);
  mx::eval(w);
  return w;
}

bool WeightStore::copy_only(bool keep_dense) const { return !keep_dense && cpu_has_avx512(); }

Linear WeightStore::linear(const std::string& prefix, bool with_bias, bool keep_dense) const {
  if (gguf_) return gguf_linear(prefix, with_bias, keep_dense);
  auto w = raw(prefix + ".weight");
  Linear out{w, std::nullopt, std::nullopt, std::nullopt, 0, 0, std::nullopt};
  if (with_bias || has(prefix + ".bias")) out.bias = tensor(prefix + ".bias");
  if (has(prefix + ".scales")) {
    auto scales = raw(prefix + ".scales");
    std::optional<mx::array> biases;
    if (has(prefix + ".biases")) biases = raw(prefix + ".biases");
    const int group = spec_.quant_group_size.value_or(64);
    const int in_features = scales.shape(-1) * group;
    // A zero or odd group size or scales shape would divide by zero or read past the packed rows.
    if (group <= 0 || in_features <= 0 || (w.shape(-1) * 32) % in_features != 0) {
      throw std::runtime_error("[weights] " + spec_.path + ": '" + prefix + "' has " + std::to_string(w.shape(-1)) +
                               " packed words per row and " + std::to_string(scales.shape(-1)) + " scales per row, which group size " +
                               std::to_string(group) + " does not fit");
    }
    const int bits = w.shape(-1) * 32 / in_features;
    // One row of scales (and biases) per packed row: the CPU decode copy and
    // quantized embedding lookups read them by the packed rows' index.
    if (w.ndim() != 2 || scales.ndim() != 2 || scales.shape(0) != w.shape(0) || (biases && biases->shape() != scales.shape())) {
      throw std::runtime_error("[weights] " + spec_.path + ": '" + prefix + "' has packed weight " + shape_string(w) + ", scales " +
                               shape_string(scales) + (biases ? " and biases " + shape_string(*biases) : std::string()) +
                               ": a quantized matrix has one row of scales and biases per row of weight");
    }
    if (mode_ == WeightMode::Quantized) {
      out.scales = scales;
      out.biases = biases;
      out.group_size = group;
      out.bits = bits;
      quant_bits_ = bits;
    } else {
      auto scales32 = mx::astype(scales, mx::float32);
      auto biases32 = biases ? mx::astype(*biases, mx::float32) : mx::zeros_like(scales32);
      if (quantized_decode_ && compute_dtype_ == mx::float32 && cpu_qmatmul_supported() && cpu_qmatmul_accepts(group, bits)) {
        out.cpu_quant = CpuQuantWeight::from_affine(w, scales32, biases32, group, bits);
      }
      if (out.cpu_quant && copy_only(keep_dense)) {
        out.drop_dense(w.shape(0), in_features);
      } else {
        out.weight = mx::astype(mx::dequantize(w, scales32, biases32, group, bits), compute_dtype_);
      }
    }
  } else if (mode_ != WeightMode::Quantized || w.dtype() == mx::float32) {
    out.weight = mx::astype(w, compute_dtype_);
  }
  mx::eval(out.weight);
  return out;
}

Embedding WeightStore::embedding(const std::string& prefix) const {
  Embedding e{linear(prefix, false, /*keep_dense=*/true), compute_dtype_};  // lookups read it
  embedding_rows_ = e.table.weight.ndim() >= 1 ? static_cast<int>(e.table.weight.shape(0)) : 0;
  return e;
}

// GGUF matrices: kept in MLX's affine form where their type maps onto it
// exactly and the mode keeps weights quantized; otherwise dequantized exactly
// to float32 (then cast to the compute dtype), and on the CPU also kept
// affine for the decode kernel where it reads that layout.
Linear WeightStore::gguf_linear(const std::string& prefix, bool with_bias, bool keep_dense) const {
  const auto& t = gguf_info(prefix + ".weight");
  Linear out{mx::array(0.0f), std::nullopt, std::nullopt, std::nullopt, 0, 0, std::nullopt};
  if (with_bias || has(prefix + ".bias")) out.bias = tensor(prefix + ".bias");
  const int bits = t.shape.size() == 2 ? ggml_affine_bits(t.type) : 0;
  const std::string type = ggml_type_name(t.type);
  if (mode_ == WeightMode::Quantized && bits) {
    auto q = gguf_affine(*gguf_, t);
    out.weight = q.packed;
    out.scales = in_dtype_if_exact(q.scales, compute_dtype_);
    out.biases = in_dtype_if_exact(q.biases, compute_dtype_);
    out.group_size = 32;
    out.bits = bits;
    quant_bits_ = std::max(quant_bits_, bits);
    ++kept_quantized_[type + " " + std::to_string(bits) + "-bit"];
    mx::eval(out.weight, *out.scales, *out.biases);
  } else {
    // BF16 stays bfloat16 where weights stay as stored; everything else takes the compute dtype.
    const auto dtype = mode_ == WeightMode::Quantized && t.type == GGML_BF16 ? mx::bfloat16 : compute_dtype_;
    if (bits && quantized_decode_ && compute_dtype_ == mx::float32 && cpu_qmatmul_supported() &&
        cpu_qmatmul_accepts(32, bits)) {
      auto q = gguf_affine(*gguf_, t);
      out.cpu_quant = CpuQuantWeight::from_affine(q.packed, q.scales, q.biases, 32, bits);
      ++kept_quantized_[type + " " + std::to_string(bits) + "-bit (CPU decode copy)"];
    }
    if (out.cpu_quant && copy_only(keep_dense)) {
      out.drop_dense(static_cast<int>(t.shape[1]), static_cast<int>(t.shape[0]));  // ggml order: (K, N)
    } else {
      out.weight = mx::astype(gguf_float32(*gguf_, t), dtype);
      ++made_dense_[type + " -> " + std::string(dtype == mx::float32 ? "float32" : dtype == mx::float16 ? "float16" : "bfloat16")];
    }
    mx::eval(out.weight);
  }
  gguf_->release_pages(t);
  return out;
}

std::string WeightStore::load_note() const {
  if (kept_quantized_.empty() && made_dense_.empty()) return "";
  auto list = [](const std::map<std::string, int>& m) {
    int total = 0;
    std::string parts;
    for (const auto& [what, n] : m) {
      total += n;
      parts += (parts.empty() ? "" : ", ") + what + " x" + std::to_string(n);
    }
    return std::to_string(total) + (parts.empty() ? "" : " (" + parts + ")");
  };
  return "GGUF matrices: " + list(kept_quantized_) + " kept quantized, " + list(made_dense_) + " dense";
}

}  // namespace mlxb
