#include "layers.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "cpu_argmax.h"
#include "cpu_attention.h"
#include "cpu_dispatch.h"
#include "cpu_norm_rope.h"
#include "cpu_softmax.h"

namespace mlxb {

namespace {
size_t rows_of(const mx::array& x) { return x.shape(-1) > 0 ? x.size() / x.shape(-1) : 0; }
// Without AVX-512, above this many rows (prefill chunks) OpenBLAS's float32
// matmul is faster than the quantized kernel's panels (a 3,000-token prompt in
// 256-token chunks, AVX2 kernels on the Zen 5: 346-399 against 317-370 tok/s).
constexpr size_t AVX2_MAX_ROWS = 32;
}  // namespace

bool Linear::uses_cpu_quant(size_t rows) const {
  return !quantized() && cpu_quant && (rows <= AVX2_MAX_ROWS || cpu_has_avx512());
}

mx::array Linear::with_bias(const mx::array& y) const { return bias ? mx::add(y, *bias) : y; }

void Linear::drop_dense(int out_features, int in_features) {
  weight = mx::broadcast_to(mx::array(0.0f), {out_features, in_features});
  dense = false;
}

mx::array Linear::operator()(const mx::array& x) const {
  const bool copy = !quantized() && uses_cpu_quant(rows_of(x));
  if (!quantized() && !copy && !dense) throw std::logic_error("a projection loaded without its dense weight was asked for it");
  auto y = quantized() ? mx::quantized_matmul(x, weight, *scales, biases, true, group_size, bits)
           : copy      ? cpu_quantized_matmul(x, *cpu_quant)
                       : mx::matmul(x, mx::transpose(weight));
  // GGUF K-quant scales may stay float32 under half activations.
  if (quantized() && y.dtype() != x.dtype()) y = mx::astype(y, x.dtype());
  return with_bias(y);
}

std::optional<StackedProjections> StackedProjections::stack(const std::vector<Linear*>& parts) {
  const auto& first = parts.front()->cpu_quant;
  for (const Linear* part : parts) {
    const auto& q = part->cpu_quant;
    // Parts meet on whole column groups: every part but the last fills its own.
    if (part->quantized() || !q || !first || q->group_size != first->group_size || q->bits != first->bits || q->int_dot != first->int_dot ||
        q->packed.shape(1) != first->packed.shape(1) || (part != parts.back() && q->out_features % CpuQuantWeight::COLUMN_GROUP != 0)) {
      return std::nullopt;
    }
  }
  std::vector<mx::array> packed;
  StackedProjections out{CpuQuantWeight{mx::array(0), first->group_size, first->bits, 0, first->int_dot}, {}};
  for (const Linear* part : parts) {
    packed.push_back(part->cpu_quant->packed);
    out.widths.push_back(part->cpu_quant->out_features);
    out.stacked.out_features += part->cpu_quant->out_features;
  }
  out.stacked.packed = mx::concatenate(packed, 0);
  mx::eval(out.stacked.packed);
  // The parts keep working alone (BLAS-sized steps without AVX-512, tests) on views of the stack.
  int start = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    parts[i]->cpu_quant = out.stacked.columns(start, start + out.widths[i]);
    start += out.widths[i];
  }
  return out;
}

std::vector<mx::array> StackedProjections::split(const mx::array& x, const std::vector<const Linear*>& parts) const {
  auto y = (*this)(x);
  std::vector<mx::array> outs;
  auto lo = mx::Shape(y.ndim(), 0);
  auto hi = y.shape();
  for (size_t i = 0; i < parts.size(); ++i) {
    hi.back() = lo.back() + widths[i];
    outs.push_back(parts[i]->with_bias(mx::slice(y, lo, hi)));
    lo.back() = hi.back();
  }
  return outs;
}

Linear Linear::rows(int start, int stop) const {
  auto cut = [&](const mx::array& a) {
    auto lo = mx::Shape(a.ndim(), 0);
    auto hi = a.shape();
    lo[0] = start;
    hi[0] = stop;
    return mx::slice(a, lo, hi);
  };
  Linear part{cut(weight), std::nullopt, std::nullopt, std::nullopt, group_size, bits, std::nullopt, dense};
  // Off column-group boundaries the part has no quantized copy and takes the dense path.
  if (cpu_quant) part.cpu_quant = cpu_quant->columns(start, stop);
  if (!dense && !part.cpu_quant) throw std::logic_error("rows of a projection loaded without its dense weight, off its column groups");
  if (bias) part.bias = cut(*bias);
  if (scales) part.scales = cut(*scales);
  if (biases) part.biases = cut(*biases);
  return part;
}

mx::array Embedding::operator()(const mx::array& ids) const {
  if (!table.quantized()) return mx::take(table.weight, ids, 0);
  // Gather the packed rows first, so only the looked-up rows are dequantized.
  auto w = mx::take(table.weight, ids, 0);
  auto s = mx::take(*table.scales, ids, 0);
  std::optional<mx::array> b;
  if (table.biases) b = mx::take(*table.biases, ids, 0);
  return mx::astype(mx::dequantize(w, s, b, table.group_size, table.bits), dtype);
}

namespace {
bool on_cpu() { return mx::default_device() == mx::Device::cpu; }
}  // namespace

mx::array Rope::operator()(const mx::array& x, const StepContext& ctx) const {
  auto in = input_scale == 1.0f ? x : mx::multiply(x, mx::array(input_scale, x.dtype()));
  if (!on_cpu() || in.dtype() != mx::float32) return mx::fast::rope(in, dims, traditional, base, scale, ctx.rope_offsets, freqs);
  const int L = in.shape(2);
  const auto config = std::make_tuple(L, dims, base.value_or(0.0f), scale, freqs ? freqs->id() : std::uintptr_t{0});
  auto it = std::find_if(ctx.rope_tables.begin(), ctx.rope_tables.end(), [&](const auto& t) { return t.config == config; });
  if (it == ctx.rope_tables.end()) {
    auto [cos, sin] = rope_tables(ctx.rope_offsets, in.shape(0), L, dims, base, scale, freqs);
    it = ctx.rope_tables.insert(ctx.rope_tables.end(), StepContext::RopeTables{config, cos, sin});
  }
  return cpu_rope(in, it->cos, it->sin, dims, traditional);
}

Rope make_rope(const ModelSpec& spec, bool local) {
  Rope rope;
  rope.dims = spec.head_dim;
  rope.traditional = spec.rope_traditional;
  if (local) {
    rope.base = spec.rope_local_theta.value_or(spec.rope_theta);
    return rope;
  }
  rope.base = spec.rope_theta;
  if (!spec.rope_scaling) return rope;
  const auto& s = *spec.rope_scaling;
  const int half = rope.dims / 2;
  if (s.type == "linear") {
    rope.scale = 1.0f / s.factor;
  } else if (s.type == "llama3") {
    // Llama 3.1: long wavelengths are stretched by `factor`, short ones kept,
    // and the band between blends the two.
    const float old_context = s.original_max_position_embeddings > 0 ? s.original_max_position_embeddings : 8192;
    const float low_wavelen = old_context / s.low_freq_factor;
    const float high_wavelen = old_context / s.high_freq_factor;
    std::vector<float> freqs(half);
    for (int i = 0; i < half; ++i) {
      float f = std::pow(spec.rope_theta, (2.0f * i) / rope.dims);
      const float wavelen = 2.0f * std::numbers::pi_v<float> * f;
      if (wavelen > low_wavelen) f *= s.factor;
      if (wavelen > high_wavelen && wavelen < low_wavelen) {
        const float smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = f / ((1.0f - smooth) / s.factor + smooth);
      }
      freqs[i] = f;
    }
    rope.freqs = mx::array(freqs.data(), {half}, mx::float32);
    rope.base = std::nullopt;
  } else if (s.type == "longrope") {
    std::vector<float> freqs(half);
    for (int i = 0; i < half; ++i) {
      const float factor = i < static_cast<int>(s.long_factor.size()) ? s.long_factor[i] : 1.0f;
      freqs[i] = factor * std::pow(spec.rope_theta, (2.0f * i) / rope.dims);
    }
    rope.freqs = mx::array(freqs.data(), {half}, mx::float32);
    rope.base = std::nullopt;
    // factor = max / original context; sqrt(1 + ln(factor) / ln(original)).
    if (s.factor > 1.0f && s.original_max_position_embeddings > 0) {
      rope.input_scale = std::sqrt(1.0f + std::log(s.factor) / std::log(float(s.original_max_position_embeddings)));
    }
  } else {
    throw std::runtime_error("[model] " + spec.path + ": unsupported rope scaling '" + s.type + "'");
  }
  return rope;
}

mx::array rms_norm(const mx::array& x, const mx::array& weight, float eps) {
  if (on_cpu() && x.dtype() == mx::float32 && weight.dtype() == mx::float32) return cpu_rms_norm(x, weight, eps);
  return mx::fast::rms_norm(x, weight, eps);
}

mx::array softcap(const mx::array& x, float cap) {
  return mx::multiply(mx::tanh(mx::divide(x, mx::array(cap, x.dtype()))), mx::array(cap, x.dtype()));
}

mx::array gelu_tanh(const mx::array& x) {
  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  const auto dt = x.dtype();
  auto inner = mx::multiply(mx::array(std::sqrt(2.0f / std::numbers::pi_v<float>), dt),
                            mx::add(x, mx::multiply(mx::array(0.044715f, dt), mx::power(x, mx::array(3.0f, dt)))));
  return mx::multiply(mx::multiply(mx::array(0.5f, dt), x), mx::add(mx::array(1.0f, dt), mx::tanh(inner)));
}

mx::array silu(const mx::array& x) { return mx::multiply(x, mx::sigmoid(x)); }

namespace {

thread_local bool generic_attention = false;

bool cpu_kernels() { return !generic_attention && mx::default_device() == mx::Device::cpu; }

// One key set's share of softmax attention, unnormalized so shares over
// disjoint key sets merge exactly: the row max of the scores, the sum of
// exp(score - max), and those weights times the values. Float32 sums.
struct AttentionShare {
  mx::array max, sum, out;
};

AttentionShare attention_share(const mx::array& q, const mx::array& k, const mx::array& v,
                               const std::optional<mx::array>& keep, std::optional<float> logit_cap,
                               const std::optional<mx::array>& limits = std::nullopt) {
  auto scores = mx::astype(mx::matmul(q, mx::swapaxes(k, -1, -2)), mx::float32);
  if (logit_cap) scores = softcap(scores, *logit_cap);
  if (keep) scores = mx::where(*keep, scores, mx::array(-std::numeric_limits<float>::infinity(), mx::float32));
  if (cpu_kernels()) {
    auto parts = cpu_softmax_parts(scores, limits);
    return {parts[1], parts[2], mx::matmul(parts[0], mx::astype(v, mx::float32))};
  }
  // `limits` are a CPU-only shortcut: callers pass a mask on the GPU.
  auto max = mx::max(scores, -1, /*keepdims=*/true);
  // A query that sees none of these keys (a window past the prefix) keeps
  // max = -inf, which the merge weighs as zero; subtract 0 to avoid inf - inf.
  auto shift = mx::where(mx::isneginf(max), mx::array(0.0f), max);
  auto weights = mx::exp(mx::subtract(scores, shift));
  auto out = mx::astype(mx::matmul(mx::astype(weights, v.dtype()), v), mx::float32);
  return {max, mx::sum(weights, -1, /*keepdims=*/true), out};
}

// Decode steps and prefill chunks alike take the CPU attention kernel. For a
// chunk it is faster than BLAS products over materialized scores (a 2,000-token
// prompt in 256-token chunks: 5.1-5.9 s -> 3.8-3.9 s warm) and allocates no
// (heads x chunk x context) score arrays: a fresh engine's first long prompt
// had spent over a second faulting those pages in.
bool attention_kernel_fits(const mx::array& q, const mx::array& k, const mx::array& v) {
  return cpu_kernels() && q.dtype() == mx::float32 && k.dtype() == mx::float32 &&
         v.dtype() == mx::float32 && cpu_attention_supported(k.shape(-1), v.shape(-1));
}

// Attention through the CPU kernel: q (B, Hq, L, D) unscaled, folded into the
// kv heads its heads share; bounds (B, L, 2), and each group's (n, L, 2).
mx::array kernel_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale, const mx::array& bounds,
                           const std::vector<CpuPrefixGroup>& groups, std::optional<float> logit_cap) {
  const int B = q.shape(0), Hq = q.shape(1), L = q.shape(2), D = q.shape(3), Hkv = k.shape(1);
  const int G = Hq / Hkv;
  auto out = cpu_grouped_attention(mx::reshape(q, {B, Hkv, G * L, D}), scale, k, v, cpu_attention_bounds(bounds, G), groups,
                                   logit_cap.value_or(0.0f));
  return mx::reshape(out, {B, Hq, L, v.shape(3)});
}

mx::array causal_keep(int L, int S) {
  auto cols = mx::reshape(mx::arange(S, mx::int32), {1, S});
  auto rows = mx::reshape(mx::arange(S - L, S, 1, mx::int32), {L, 1});
  return mx::less_equal(cols, rows);
}

// The mask of (B, Hkv, G, L, S) scores: a boolean array, or for plain causal
// attention on the CPU per-row limits (query l sees the first S - L + l + 1
// columns), which skip the masking pass and the masked columns' exps.
std::pair<std::optional<mx::array>, std::optional<mx::array>> score_mask(const AttentionMask& mask, int L, int S, bool cpu) {
  if (mask.array) {
    auto keep = *mask.array;
    return {keep.ndim() == 4 ? mx::expand_dims(keep, 2) : keep, std::nullopt};  // (B, 1, 1, L, S)
  }
  if (mask.mode != "causal") return {std::nullopt, std::nullopt};
  if (!cpu) return {causal_keep(L, S), std::nullopt};
  return {std::nullopt, mx::reshape(mx::arange(S - L + 1, S + 1, 1, mx::int32), {1, 1, 1, L, 1})};
}

}  // namespace

void use_generic_attention(bool generic) { generic_attention = generic; }

mx::array greedy_picks(const mx::array& logits) {
  if (cpu_kernels() && logits.dtype() == mx::float32 && logits.ndim() == 2) return cpu_argmax_rows(logits);
  return mx::astype(mx::argmax(logits, -1), mx::int32);
}

mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                    const AttentionMask& mask, std::optional<float> logit_cap) {
  const bool cpu = cpu_kernels();
  if (!logit_cap && !cpu) return mx::fast::scaled_dot_product_attention(q, k, v, scale, mask.mode, mask.array);

  // Spelled out: soft-capped logits (Gemma 2) are not in the fused kernel, and
  // on the CPU the fused kernel falls back to ops with a scalar exp (see
  // cpu_softmax.h). Query heads fold into groups that share one kv head.
  const int B = q.shape(0), Hq = q.shape(1), L = q.shape(2), D = q.shape(3);
  const int Hkv = k.shape(1), S = k.shape(2), Dv = v.shape(3);
  const int group = Hq / Hkv;
  // The grouped kernel with no groups scales q and normalizes in its own
  // pass: no multiply, divide and broadcast nodes in every layer.
  if (mask.bounds && attention_kernel_fits(q, k, v)) return kernel_attention(q, k, v, scale, *mask.bounds, {}, logit_cap);
  auto qg = mx::reshape(mx::multiply(q, mx::array(scale, q.dtype())), {B, Hkv, group, L, D});
  auto [keep, limits] = score_mask(mask, L, S, cpu);
  auto share = attention_share(qg, mx::expand_dims(k, 2), mx::expand_dims(v, 2), keep, logit_cap, limits);
  return mx::reshape(mx::astype(mx::divide(share.out, share.sum), q.dtype()), {B, Hq, L, Dv});
}

mx::array grouped_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                            const AttentionMask& mask, std::optional<float> logit_cap, const StepContext& ctx,
                            int layer, bool sliding) {
  const int B = q.shape(0), Hq = q.shape(1), L = q.shape(2), D = q.shape(3);
  const int Hkv = k.shape(1), S = k.shape(2), Dv = v.shape(3);
  const int G = Hq / Hkv;
  // (1, Hkv, length, .) views of a group's block: no copy per step.
  auto block_view = [&](const PrefixGroup& g) {
    const auto& [bk, bv] = g.block->layers[layer];
    return std::pair{g.length == bk.shape(2) ? bk : mx::slice(bk, {0, 0, 0, 0}, {1, Hkv, g.length, D}),
                     g.length == bv.shape(2) ? bv : mx::slice(bv, {0, 0, 0, 0}, {1, Hkv, g.length, Dv})};
  };
  if (mask.bounds && attention_kernel_fits(q, k, v)) {
    // One kernel call: the suffixes, every group's block, and the merge.
    std::vector<CpuPrefixGroup> groups;
    for (const auto& g : ctx.groups) {
      auto [pk, pv] = block_view(g);
      groups.push_back({pk, pv, cpu_attention_bounds(sliding ? g.sliding_bounds : g.full_bounds, G), g.rows});
    }
    return kernel_attention(q, k, v, scale, *mask.bounds, groups, logit_cap);
  }
  auto qs = mx::reshape(mx::multiply(q, mx::array(scale, q.dtype())), {B, Hkv, G, L, D});

  // The rows' own suffix columns: (B, Hkv, G, L, .)
  auto own = [&] {
    auto [keep, limits] = score_mask(mask, L, S, cpu_kernels());
    return attention_share(qs, mx::expand_dims(k, 2), mx::expand_dims(v, 2), keep, logit_cap, limits);
  }();

  // Each group's prefix: all its query rows against the block in one product.
  std::vector<mx::array> maxes, sums, outs;
  for (const auto& g : ctx.groups) {
    const int n = static_cast<int>(g.rows.size());
    const int M = n * G * L;
    auto qg = mx::reshape(mx::transpose(mx::take(qs, g.row_index, 0), {1, 0, 2, 3, 4}), {1, Hkv, M, D});
    auto [pk, pv] = block_view(g);
    auto back = [&](const mx::array& a) {
      return mx::transpose(mx::reshape(a, {Hkv, n, G, L, a.shape(-1)}), {1, 0, 2, 3, 4});
    };
    std::optional<mx::array> gkeep = sliding ? g.sliding_mask : g.full_mask;
    std::optional<mx::array> limits;
    if (!sliding && g.row_lengths && cpu_kernels()) {
      // Different lengths of the block, no window: a per-row limit, no mask pass.
      limits = mx::reshape(mx::broadcast_to(mx::reshape(*g.row_lengths, {1, n, 1, 1}), {Hkv, n, G, L}), {1, Hkv, M, 1});
      gkeep.reset();
    }
    if (gkeep) gkeep = mx::reshape(mx::broadcast_to(*gkeep, {n, G, L, g.length}), {1, M, g.length});
    auto share = attention_share(qg, pk, pv, gkeep, logit_cap, limits);
    maxes.push_back(back(share.max));
    sums.push_back(back(share.sum));
    outs.push_back(back(share.out));
  }
  if (ctx.ungrouped > 0) {
    const int U = ctx.ungrouped;
    maxes.push_back(mx::full({U, Hkv, G, L, 1}, -std::numeric_limits<float>::infinity(), mx::float32));
    sums.push_back(mx::zeros({U, Hkv, G, L, 1}, mx::float32));
    outs.push_back(mx::zeros({U, Hkv, G, L, Dv}, mx::float32));
  }
  auto in_batch_order = [&](std::vector<mx::array>& parts) {
    auto all = parts.size() == 1 ? parts[0] : mx::concatenate(parts, 0);
    return ctx.group_order ? mx::take(all, *ctx.group_order, 0) : all;
  };
  auto pmax = in_batch_order(maxes), psum = in_batch_order(sums), pout = in_batch_order(outs);

  // Exact softmax over both key sets from the two shares.
  auto top = mx::maximum(own.max, pmax);
  auto a = mx::exp(mx::subtract(own.max, top));
  auto b = mx::exp(mx::subtract(pmax, top));
  auto num = mx::add(mx::multiply(own.out, a), mx::multiply(pout, b));
  auto den = mx::add(mx::multiply(own.sum, a), mx::multiply(psum, b));
  return mx::reshape(mx::astype(mx::divide(num, den), q.dtype()), {B, Hq, L, Dv});
}

mx::array Attention::operator()(const mx::array& x, KvCache& cache, int layer, const StepContext& ctx) const {
  const int B = x.shape(0), L = x.shape(1);
  auto heads = [&](const mx::array& t, int n, const std::optional<mx::array>& norm) {
    auto r = mx::reshape(t, {B, L, n, head_dim});
    if (norm) r = rms_norm(r, *norm, norm_eps);
    return mx::transpose(r, {0, 2, 1, 3});  // (B, n, L, head_dim)
  };
  const bool stacked = qkv && q_proj.uses_cpu_quant(rows_of(x));
  auto projected = stacked ? qkv->split(x, {&q_proj, &k_proj, &v_proj}) : std::vector<mx::array>{q_proj(x), k_proj(x), v_proj(x)};
  auto q = rope(heads(projected[0], n_heads, q_norm), ctx);
  auto k = rope(heads(projected[1], n_kv_heads, k_norm), ctx);
  auto v = heads(projected[2], n_kv_heads, std::nullopt);
  auto [keys, values] = cache.update(layer, k, v);
  const auto& mask = sliding ? ctx.sliding : ctx.full;
  auto out = ctx.groups.empty() ? attention(q, keys, values, scale, mask, logit_softcap)
                                : grouped_attention(q, keys, values, scale, mask, logit_softcap, ctx, layer, sliding);
  out = mx::reshape(mx::transpose(out, {0, 2, 1, 3}), {B, L, n_heads * head_dim});
  return o_proj(out);
}

mx::array GatedMlp::operator()(const mx::array& x) const {
  const bool stacked = gate_up && gate_proj.uses_cpu_quant(rows_of(x));
  if (stacked && !gelu && cpu_kernels() && !gate_proj.bias && !up_proj.bias) return down_proj(cpu_silu_mul_stacked((*gate_up)(x)));
  auto projected = stacked ? gate_up->split(x, {&gate_proj, &up_proj}) : std::vector<mx::array>{gate_proj(x), up_proj(x)};
  const auto& gate = projected[0];
  const auto& up = projected[1];
  if (!gelu && cpu_kernels() && gate.dtype() == mx::float32) return down_proj(cpu_silu_mul(gate, up));
  return down_proj(mx::multiply(gelu ? gelu_tanh(gate) : silu(gate), up));
}

}  // namespace mlxb
