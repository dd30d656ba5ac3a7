#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

namespace mlxb {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}

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
  for (size_t t = 0; t < logits.size(); ++t) {
    const size_t word = t >> 5;
    const bool allowed = word < bitmask.size() && ((static_cast<uint32_t>(bitmask[word]) >> (t & 31)) & 1u);
    if (!allowed) logits[t] = kNegInf;
  }
}

int argmax(std::span<const float> logits) {
  return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

int sample_filtered(std::span<const float> logits, const SamplingParams& p, std::mt19937_64& rng) {
  const int V = static_cast<int>(logits.size());
  // Candidates sorted by logit, best first; top-k bounds how many we sort.
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  const int keep = p.top_k > 0 ? std::min(p.top_k, V) : V;
  auto by_logit = [&](int a, int b) { return logits[a] > logits[b]; };
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
  order.resize(keep);

  const float inv_t = 1.0f / p.temperature;
  const float top = logits[order[0]] * inv_t;
  std::vector<double> probs(keep);
  double total = 0;
  for (int i = 0; i < keep; ++i) total += probs[i] = std::exp(logits[order[i]] * inv_t - top);
  if (!(total > 0)) return order[0];  // everything masked: fall back to the best

  int cut = keep;
  if (p.top_p < 1.0f) {
    double cumulative = 0;
    for (int i = 0; i < keep; ++i) {
      cumulative += probs[i] / total;
      if (cumulative >= p.top_p) {
        cut = i + 1;
        break;
      }
    }
  }
  if (p.min_p > 0.0f) {
    const double floor = p.min_p * probs[0];
    int i = 1;
    while (i < cut && probs[i] >= floor) ++i;
    cut = i;
  }
  std::discrete_distribution<int> draw(probs.begin(), probs.begin() + cut);
  return order[draw(rng)];
}

RowSampler::RowSampler(const SamplingParams& params, std::vector<int> prompt)
    : params_(params), rng_(params.seed), history_(std::move(prompt)) {}

int RowSampler::sample(std::span<float> logits, std::span<const int32_t> bitmask) {
  const size_t n = std::min<size_t>(history_.size(), std::max(0, params_.repetition_context_size));
  apply_repetition_penalty(logits, std::span<const int>(history_).last(n), params_.repetition_penalty);
  apply_allowed_mask(logits, bitmask);
  if (params_.temperature <= 0.0f) return argmax(logits);
  return sample_filtered(logits, params_, rng_);
}

}  // namespace mlxb
