#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_argmax.h"
#include "cpu_dispatch.h"

namespace mlxb {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

#if defined(__x86_64__)
// 16 tokens at a time: a mask register straight from the bitmask's bits.
__attribute__((target("avx512f"))) void apply_allowed_mask512(std::span<float> logits, std::span<const int32_t> bitmask) {
  const __m512 blocked = _mm512_set1_ps(kNegInf);
  size_t t = 0;
  for (; t + 16 <= logits.size(); t += 16) {
    const size_t word = t >> 5;
    const auto keep = static_cast<__mmask16>(word < bitmask.size() ? static_cast<uint32_t>(bitmask[word]) >> (t & 31) : 0u);
    _mm512_storeu_ps(logits.data() + t, _mm512_mask_blend_ps(keep, blocked, _mm512_loadu_ps(logits.data() + t)));
  }
  for (; t < logits.size(); ++t) {
    if (!mask_allows(bitmask, t)) logits[t] = kNegInf;
  }
}
#endif
}  // namespace

void apply_repetition_penalty(std::span<float> logits, std::span<const int> recent, float penalty) {
  if (penalty == 1.0f) return;
  std::unordered_set<int> seen(recent.begin(), recent.end());
  for (int t : seen) {
    if (t < 0 || t >= static_cast<int>(logits.size())) continue;
    float& l = logits[t];
    l = l < 0 ? l * penalty : l / penalty;
  }
}

void apply_allowed_mask(std::span<float> logits, std::span<const int32_t> bitmask) {
  if (bitmask.empty()) return;
#if defined(__x86_64__)
  if (cpu_has_avx512()) return apply_allowed_mask512(logits, bitmask);
#endif
  for (size_t t = 0; t < logits.size(); ++t) {
    if (!mask_allows(bitmask, t)) logits[t] = kNegInf;
  }
}

void apply_presence_frequency_penalty(std::span<float> logits, const std::unordered_map<int, int>& counts,
                                      float presence, float frequency) {
  if (presence == 0.0f && frequency == 0.0f) return;
  for (const auto& [t, n] : counts) {
    if (t < 0 || t >= static_cast<int>(logits.size()) || n <= 0) continue;
    logits[t] -= presence + frequency * static_cast<float>(n);
  }
}

TokenLogprobs token_logprobs(std::span<const float> logits, int chosen, int top_n) {
  const int V = static_cast<int>(logits.size());
  const float top = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - top);
  const double log_z = top + std::log(sum);
  TokenLogprobs out;
  out.logprob = static_cast<float>(logits[chosen] - log_z);
  const int k = std::clamp(top_n, 0, V);
  std::vector<int> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  for (int i = 0; i < k; ++i) out.top.emplace_back(ids[i], static_cast<float>(logits[ids[i]] - log_z));
  return out;
}

int argmax(std::span<const float> logits) { return first_max_index(logits.data(), static_cast<int>(logits.size())); }

int sample_filtered(std::span<const float> logits, const SamplingParams& p, std::mt19937_64& rng) {
  const int V = static_cast<int>(logits.size());
  auto by_logit = [&](int a, int b) { return logits[a] > logits[b]; };
  std::vector<int> candidates(V);
  std::iota(candidates.begin(), candidates.end(), 0);
  // top-k: an O(V) selection, no full sort.
  if (p.top_k > 0 && p.top_k < V) {
    std::nth_element(candidates.begin(), candidates.begin() + p.top_k, candidates.end(), by_logit);
    candidates.resize(p.top_k);
  }
  const int best = *std::min_element(candidates.begin(), candidates.end(), by_logit);
  const double inv_t = 1.0 / p.temperature;
  const double top = logits[best] * inv_t;
  auto weight = [&](int t) { return std::exp(logits[t] * inv_t - top); };

  // min-p: drop what is less likely than min_p times the best (relative, so no normalizing).
  if (p.min_p > 0.0f) {
    std::erase_if(candidates, [&](int t) { return weight(t) < p.min_p; });
  }
  // top-p: the smallest set of best tokens whose mass reaches top_p. Sort only
  // as far as needed: most of the mass sits in a few tokens.
  if (p.top_p < 1.0f) {
    double total = 0;
    for (int t : candidates) total += weight(t);
    const double target = p.top_p * total;
    for (size_t k = std::min<size_t>(64, candidates.size());; k = std::min(candidates.size(), k * 4)) {
      std::partial_sort(candidates.begin(), candidates.begin() + k, candidates.end(), by_logit);
      double mass = 0;
      size_t cut = 0;
      while (cut < k && mass < target) mass += weight(candidates[cut++]);
      if (mass >= target || k == candidates.size()) {
        candidates.resize(std::max<size_t>(cut, 1));
        break;
      }
    }
  }
  std::vector<double> weights(candidates.size());
  for (size_t i = 0; i < candidates.size(); ++i) weights[i] = weight(candidates[i]);
  if (candidates.empty() || !(std::accumulate(weights.begin(), weights.end(), 0.0) > 0)) return best;
  std::discrete_distribution<size_t> draw(weights.begin(), weights.end());
  return candidates[draw(rng)];
}

RowSampler::RowSampler(const SamplingParams& params, std::vector<int> prompt, int vocab_limit)
    : params_(params), vocab_limit_(vocab_limit), rng_(params.seed), history_(std::move(prompt)) {}

int RowSampler::sample(std::span<float> logits, std::span<const int32_t> bitmask, TokenLogprobs* logprobs) {
  // The raw logits, kept before the chain changes them in place.
  std::vector<float> raw;
  if (logprobs && wants_logprobs()) raw.assign(logits.begin(), logits.end());
  // Tokens past the limit are never candidates (they have no input row).
  const size_t n = vocab_limit_ > 0 ? std::min(logits.size(), static_cast<size_t>(vocab_limit_)) : logits.size();
  const int token = pick(logits.first(n), bitmask);
  if (!raw.empty()) *logprobs = token_logprobs(raw, token, params_.logprobs);
  return token;
}

int RowSampler::pick(std::span<float> logits, std::span<const int32_t> bitmask) {
  const size_t n = std::min<size_t>(history_.size(), std::max(0, params_.repetition_context_size));
  apply_repetition_penalty(logits, std::span<const int>(history_).last(n), params_.repetition_penalty);
  apply_presence_frequency_penalty(logits, generated_counts_, params_.presence_penalty, params_.frequency_penalty);
  apply_allowed_mask(logits, bitmask);
  if (params_.temperature <= 0.0f) return argmax(logits);
  return sample_filtered(logits, params_, rng_);
}

}  // namespace mlxb
