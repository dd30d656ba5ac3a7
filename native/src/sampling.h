#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace mlxb {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 1.0f;        // 1 = off
  int top_k = 0;             // 0 = off
  float min_p = 0.0f;        // 0 = off
  float repetition_penalty = 1.0f;
  int repetition_context_size = 20;
  uint64_t seed = 0;
};

// Each step of the chain works on one row's logits in place.
void apply_repetition_penalty(std::span<float> logits, std::span<const int> recent, float penalty);
// bit t of word t/32 set = token t allowed.
void apply_allowed_mask(std::span<float> logits, std::span<const int32_t> bitmask);
int argmax(std::span<const float> logits);
// Temperature, then top-k, top-p and min-p filtering, then a draw.
int sample_filtered(std::span<const float> logits, const SamplingParams& p, std::mt19937_64& rng);

// One row's sampler: its parameters, its seeded generator, and the tokens the
// repetition penalty looks back over.
class RowSampler {
 public:
  RowSampler(const SamplingParams& params, std::vector<int> prompt);

  // Plain greedy rows can take an argmax computed on the device.
  bool greedy_only() const { return params_.temperature <= 0.0f && params_.repetition_penalty == 1.0f; }
  // `logits` is scratch: penalties and masks are applied in place.
  int sample(std::span<float> logits, std::span<const int32_t> bitmask = {});
  void accept(int token) { history_.push_back(token); }
  const std::vector<int>& history() const { return history_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<int> history_;
};

}  // namespace mlxb
