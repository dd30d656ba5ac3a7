#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mlxb {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 1.0f;        // 1 = off
  int top_k = 0;             // 0 = off
  float min_p = 0.0f;        // 0 = off
  float repetition_penalty = 1.0f;
  int repetition_context_size = 20;
  // OpenAI's penalties over the tokens generated so far in the row (prompt not counted):
  // logit[t] -= presence * (count[t] > 0) + frequency * count[t].
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  // -1 = off; else report the chosen token's log-probability and this many
  // (0..20) most likely alternatives, from the model's raw logits.
  int logprobs = -1;
};

// Log-probabilities under log_softmax of the raw model logits (before
// penalties, masks, temperature and filters): the model's own distribution.
struct TokenLogprobs {
  float logprob = 0.0f;                          // of the chosen token
  std::vector<std::pair<int32_t, float>> top;    // (token, logprob), most likely first
};

// Each step of the chain works on one row's logits in place.
void apply_repetition_penalty(std::span<float> logits, std::span<const int> recent, float penalty);
// bit t of word t/32 set = token t allowed.
void apply_allowed_mask(std::span<float> logits, std::span<const int32_t> bitmask);
// Whether `bitmask` allows token t: bit t % 32 of word t / 32, nothing past
// its last word. An empty mask is no mask: it allows every token.
inline bool mask_allows(std::span<const int32_t> bitmask, size_t t) {
  if (bitmask.empty()) return true;
  const size_t word = t >> 5;
  return word < bitmask.size() && ((static_cast<uint32_t>(bitmask[word]) >> (t & 31)) & 1u);
}
void apply_presence_frequency_penalty(std::span<float> logits, const std::unordered_map<int, int>& counts,
                                      float presence, float frequency);
int argmax(std::span<const float> logits);
TokenLogprobs token_logprobs(std::span<const float> logits, int chosen, int top_n);
// Temperature, then top-k, top-p and min-p filtering, then a draw.
int sample_filtered(std::span<const float> logits, const SamplingParams& p, std::mt19937_64& rng);

// One row's sampler: its parameters, its seeded generator, the tokens the
// repetition penalty looks back over, and the counts of generated tokens the
// presence and frequency penalties read.
class RowSampler {
 public:
  // `vocab_limit`: the row picks only tokens below it (0: any of the logits),
  // as a model whose output projection has more rows than it has inputs must:
  // a picked token is fed back at the next step.
  RowSampler(const SamplingParams& params, std::vector<int> prompt, int vocab_limit = 0);

  // Plain greedy rows can take an argmax computed on the device.
  bool greedy_only() const {
    return params_.temperature <= 0.0f && params_.repetition_penalty == 1.0f && params_.presence_penalty == 0.0f &&
           params_.frequency_penalty == 0.0f && !wants_logprobs();
  }
  bool wants_logprobs() const { return params_.logprobs >= 0; }
  // `logits` is scratch: penalties and masks are applied in place. When the
  // row wants logprobs and `logprobs` is given, it receives the chosen token's
  // (over all the logits). The pick is below the vocabulary limit and below
  // logits.size() (0 when nothing is allowed, or every logit is NaN).
  int sample(std::span<float> logits, std::span<const int32_t> bitmask = {}, TokenLogprobs* logprobs = nullptr);
  // A prompt token (repetition penalty only)...
  void accept(int token) { history_.push_back(token); }
  // ...or a generated one (all penalties).
  void accept_generated(int token) {
    history_.push_back(token);
    ++generated_counts_[token];
  }
  const std::vector<int>& history() const { return history_; }

 private:
  int pick(std::span<float> logits, std::span<const int32_t> bitmask);

  SamplingParams params_;
  int vocab_limit_ = 0;
  std::mt19937_64 rng_;
  std::vector<int> history_;
  std::unordered_map<int, int> generated_counts_;
};

}  // namespace mlxb
