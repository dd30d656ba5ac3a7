#pragma once
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

#include "gguf_reader.h"
#include "layers.h"
#include "model_spec.h"

namespace mlxb {

// What the weights become at load. On CPU, MLX's half-precision and quantized
// matmuls are scalar loops, so float32 through BLAS is the fast path; on a GPU
// quantized weights are.
enum class WeightMode { Float32, Float16, BFloat16, Quantized };

WeightMode parse_weight_mode(const std::string& name, bool gpu);
std::string describe(WeightMode mode, int bits);

// Every tensor of a model under Hugging Face names, converted per WeightMode.
// GGUF names (blk.3.attn_q.weight) are translated on load.
class WeightStore {
 public:
  // `quantized_decode`: on the CPU in float32, a weight stored quantized also
  // keeps that copy for steps of few rows (Linear::cpu_quant).
  WeightStore(const ModelSpec& spec, WeightMode mode, bool quantized_decode = false);

  bool has(const std::string& name) const { return tensors_.count(name) > 0 || gguf_names_.count(name) > 0; }
  // A dense tensor (norm weights, biases) in the compute dtype.
  mx::array tensor(const std::string& name) const;
  // An RMSNorm weight with the spec's offset folded in (Gemma's 1 + w).
  mx::array norm(const std::string& name) const;
  // `prefix`.weight (+ .bias, + .scales/.biases when quantized). Where every
  // step reads the CPU decode copy (AVX-512), the dense float32 weight is not
  // made (the default model's projections are 420 MB of it) unless
  // `keep_dense`: the caller reads it beyond Linear's own products (an
  // embedding's lookups; rows cut from a fused projection, which off the
  // copy's column groups take the dense weight).
  Linear linear(const std::string& prefix, bool with_bias = false, bool keep_dense = false) const;
  Embedding embedding(const std::string& prefix) const;

  mx::Dtype compute_dtype() const { return compute_dtype_; }
  WeightMode mode() const { return mode_; }
  int quant_bits() const { return quant_bits_; }
  // Rows of the token embedding (0 before embedding() is read): ids past them have no row to look up.
  int embedding_rows() const { return embedding_rows_; }
  size_t nbytes() const;
  // GGUF: how many matrices stayed quantized and how many became dense, by type.
  std::string load_note() const;
  // Drops the source tensors (and unmaps a GGUF) once the model holds what it needs.
  void release() {
    tensors_.clear();
    gguf_names_.clear();
    gguf_.reset();
  }

 private:
  mx::array raw(const std::string& name) const;
  const GgufTensorInfo& gguf_info(const std::string& name) const;
  Linear gguf_linear(const std::string& prefix, bool with_bias, bool keep_dense) const;
  // Whether a Linear with a CPU decode copy goes without its dense weight.
  bool copy_only(bool keep_dense) const;

  const ModelSpec& spec_;
  WeightMode mode_;
  bool quantized_decode_ = false;
  mx::Dtype compute_dtype_ = mx::float32;
  mutable int quant_bits_ = 0;  // seen while building quantized Linears
  mutable int embedding_rows_ = 0;
  std::unordered_map<std::string, mx::array> tensors_;
  // GGUF weights are converted one tensor at a time from the mapped file.
  std::unique_ptr<GgufFile> gguf_;
  std::unordered_map<std::string, const GgufTensorInfo*> gguf_names_;  // HF name -> table row
  mutable std::map<std::string, int> kept_quantized_, made_dense_;     // "Q4_K 4-bit" -> matrices
};

}  // namespace mlxb
