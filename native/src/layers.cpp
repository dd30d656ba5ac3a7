#include "layers.h"

#include <cmath>
#include <numbers>

namespace mlxb {

mx::array Linear::operator()(const mx::array& x) const {
  auto y = quantized() ? mx::quantized_matmul(x, weight, *scales, biases, true, group_size, bits)
                       : mx::matmul(x, mx::transpose(weight));
  return bias ? mx::add(y, *bias) : y;
}

Linear Linear::rows(int start, int stop) const {
  auto cut = [&](const mx::array& a) {
    auto lo = mx::Shape(a.ndim(), 0);
    auto hi = a.shape();
    lo[0] = start;
    hi[0] = stop;
    return mx::slice(a, lo, hi);
  };
  Linear part{cut(weight), std::nullopt, std::nullopt, std::nullopt, group_size, bits};
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
  return mx::dequantize(w, s, b, table.group_size, table.bits);
}

mx::array Rope::operator()(const mx::array& x, const mx::array& offsets) const {
  auto in = input_scale == 1.0f ? x : mx::multiply(x, mx::array(input_scale, x.dtype()));
  return mx::fast::rope(in, dims, traditional, base, scale, offsets, freqs);
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

mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                    const AttentionMask& mask, std::optional<float> logit_cap) {
  if (!logit_cap) return mx::fast::scaled_dot_product_attention(q, k, v, scale, mask.mode, mask.array);

  // Soft-capped logits (Gemma 2) are not in the fused kernel: spell it out,
  // folding query heads into groups that share one kv head.
  const int B = q.shape(0), Hq = q.shape(1), L = q.shape(2), D = q.shape(3);
  const int Hkv = k.shape(1), S = k.shape(2);
  const int group = Hq / Hkv;
  auto qg = mx::reshape(mx::multiply(q, mx::array(scale, q.dtype())), {B, Hkv, group, L, D});
  auto kg = mx::expand_dims(k, 2);  // (B, Hkv, 1, S, D)
  auto vg = mx::expand_dims(v, 2);
  auto scores = softcap(mx::matmul(qg, mx::swapaxes(kg, -1, -2)), *logit_cap);  // (B, Hkv, group, L, S)
  std::optional<mx::array> keep = mask.array;
  if (!keep && mask.mode == "causal") {
    auto cols = mx::reshape(mx::arange(S, mx::int32), {1, S});
    auto rows = mx::reshape(mx::arange(S - L, S, 1, mx::int32), {L, 1});
    keep = mx::less_equal(cols, rows);
  }
  if (keep) {
    auto m = *keep;
    if (m.ndim() == 4) m = mx::expand_dims(m, 2);  // (B, 1, 1, L, S)
    scores = mx::where(m, scores, mx::array(-std::numeric_limits<float>::infinity(), scores.dtype()));
  }
  auto probs = mx::softmax(scores, {-1}, /*precise=*/true);
  return mx::reshape(mx::matmul(probs, vg), {B, Hq, L, D});
}

mx::array Attention::operator()(const mx::array& x, KvCache& cache, int layer, const StepContext& ctx) const {
  const int B = x.shape(0), L = x.shape(1);
  auto heads = [&](const mx::array& t, int n, const std::optional<mx::array>& norm) {
    auto r = mx::reshape(t, {B, L, n, head_dim});
    if (norm) r = rms_norm(r, *norm, norm_eps);
    return mx::transpose(r, {0, 2, 1, 3});  // (B, n, L, head_dim)
  };
  auto q = rope(heads(q_proj(x), n_heads, q_norm), ctx.rope_offsets);
  auto k = rope(heads(k_proj(x), n_kv_heads, k_norm), ctx.rope_offsets);
  auto v = heads(v_proj(x), n_kv_heads, std::nullopt);
  auto [keys, values] = cache.update(layer, k, v);
  auto out = attention(q, keys, values, scale, sliding ? ctx.sliding : ctx.full, logit_softcap);
  out = mx::reshape(mx::transpose(out, {0, 2, 1, 3}), {B, L, n_heads * head_dim});
  return o_proj(out);
}

mx::array GatedMlp::operator()(const mx::array& x) const {
  auto gate = gate_proj(x);
  return down_proj(mx::multiply(gelu ? gelu_tanh(gate) : silu(gate), up_proj(x)));
}

}  // namespace mlxb
