#pragma once
#include <optional>
#include <vector>

#include "cache.h"
#include "cpu_qmatmul.h"
#include "model_spec.h"

namespace mlxb {

// y = x W^T (+ b). Dense, or MLX affine-quantized (weight packed in uint32,
// per-group scales and biases along the input dimension).
struct Linear {
  mx::array weight;
  std::optional<mx::array> bias;
  std::optional<mx::array> scales, biases;
  int group_size = 0;
  int bits = 0;
  // On the CPU, a dense weight that was stored quantized keeps that copy too:
  // decode steps read it (an eighth of the bytes), and with AVX-512 prefill
  // chunks too (256-token chunks of a 3,000-token prompt 431 -> 592-653 tok/s
  // against OpenBLAS on the float32 weight).
  std::optional<CpuQuantWeight> cpu_quant;
  // False where only cpu_quant was kept (every step takes it): `weight` is
  // then a zero-stride (N, K) stand-in that gives the shape and holds no data.
  bool dense = true;

  bool quantized() const { return scales.has_value(); }
  void drop_dense(int out_features, int in_features);
  mx::array operator()(const mx::array& x) const;
  // Whether x with this many rows goes through cpu_quant rather than BLAS.
  bool uses_cpu_quant(size_t rows) const;
  // y plus the bias, if any.
  mx::array with_bias(const mx::array& y) const;
  // Rows [start, stop) of the output dimension, for splitting fused projections.
  Linear rows(int start, int stop) const;
  int out_features() const { return weight.shape(0); }
  // K: the dense weight's (or stand-in's) width, or the groups' span of a quantized one.
  int in_features() const { return quantized() ? scales->shape(-1) * group_size : weight.shape(-1); }
};

// Projections of one input (q, k, v; gate, up) stacked by output columns for
// the CPU quantized kernel: one call, split once over the cores, instead of several
// small ones (k and v have a third of q's rows). The parts' own cpu_quant
// become column views of the stack, so the weights are held once.
struct StackedProjections {
  CpuQuantWeight stacked;
  std::vector<int> widths;  // output features of each part, in order

  // None unless every part keeps a cpu_quant copy of the same layout.
  static std::optional<StackedProjections> stack(const std::vector<Linear*>& parts);
  // x times the stack: the parts' outputs side by side, without biases.
  mx::array operator()(const mx::array& x) const { return cpu_quantized_matmul(x, stacked); }
  // Each part's output for x, biases added.
  std::vector<mx::array> split(const mx::array& x, const std::vector<const Linear*>& parts) const;
};

// Token embedding table; also serves as the output projection when tied.
struct Embedding {
  Linear table;  // (vocab, hidden)
  mx::Dtype dtype = mx::float32;  // of the looked-up rows (quantized tables may keep float32 scales)
  mx::array operator()(const mx::array& ids) const;
  mx::array as_linear(const mx::array& x) const { return table(x); }
};

struct Rope {
  int dims = 0;
  bool traditional = false;
  std::optional<float> base;
  float scale = 1.0f;
  std::optional<mx::array> freqs;
  float input_scale = 1.0f;  // LongRoPE's attention factor on q and k
  // (B, H, L, D) with each row starting at its own position.
  mx::array operator()(const mx::array& x, const StepContext& ctx) const;
};

// RoPE as the spec configures it; `local` picks Gemma 3's sliding-layer base.
Rope make_rope(const ModelSpec& spec, bool local = false);

mx::array rms_norm(const mx::array& x, const mx::array& weight, float eps);

// Attention on the CPU uses kernels of its own (cpu_softmax.h, per-row causal
// limits); elsewhere, and on this thread after use_generic_attention(true),
// it uses device-independent MLX ops: what the GPU runs. Tests set it to check
// the GPU's attention path against the reference on a CPU-only machine.
void use_generic_attention(bool generic);

// Greedy picks of (B, V) logits: each row's first maximum as int32 (B,),
// through the CPU kernel (cpu_argmax.h) where the CPU kernels run.
mx::array greedy_picks(const mx::array& logits);

// softmax(q k^T * scale [softcapped]) v with grouped-query heads.
// q (B, Hq, L, D), k/v (B, Hkv, S, D) -> (B, Hq, L, D)
mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                    const AttentionMask& mask, std::optional<float> softcap = std::nullopt);

// The same over rows that read shared prefix blocks (ctx.groups) besides their
// own columns k/v: each group's block is read once for all its rows, and the
// two parts are merged exactly through their softmax normalizers.
mx::array grouped_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                            const AttentionMask& mask, std::optional<float> softcap, const StepContext& ctx,
                            int layer, bool sliding);

mx::array softcap(const mx::array& x, float cap);
mx::array gelu_tanh(const mx::array& x);
mx::array silu(const mx::array& x);

// The attention block shared by every architecture here: projections, optional
// q/k RMSNorm (Qwen 3, Gemma 3), RoPE, cache update, attention, output.
struct Attention {
  Linear q_proj, k_proj, v_proj, o_proj;
  std::optional<mx::array> q_norm, k_norm;
  float norm_eps = 1e-6f;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 1.0f;
  Rope rope;
  std::optional<float> logit_softcap;
  bool sliding = false;
  std::optional<StackedProjections> qkv;  // q_proj, k_proj, v_proj for the CPU kernel

  // x (B, L, hidden) -> (B, L, hidden)
  mx::array operator()(const mx::array& x, KvCache& cache, int layer, const StepContext& ctx) const;
};

// down(act(gate(x)) * up(x))
struct GatedMlp {
  Linear gate_proj, up_proj, down_proj;
  bool gelu = false;
  std::optional<StackedProjections> gate_up;  // for the CPU kernel
  mx::array operator()(const mx::array& x) const;
};

}  // namespace mlxb
