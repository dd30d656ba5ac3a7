#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cache.h"
#include "cpu_greedy_head.h"
#include "model_spec.h"
#include "models/model.h"
#include "sampling.h"
#include "weights.h"

namespace mlxb {

struct LoadOptions {
  std::string weights = "auto";  // auto | float32 | float16 | bfloat16 | quantized
  std::string device = "auto";   // auto | cpu | gpu
  // Rows started from a saved prefix read it in place, grouped (true), or
  // copy it into their own cache (false: the path before grouping, kept for
  // benchmarks and as a reference).
  bool prefix_grouping = true;
  // The shortest span of KV kept as a block that rows read in place; shorter
  // prefixes are copied into the rows that start from them, and shorter
  // unshared prompts stay in the batch's own columns. Each block costs every
  // decode step a group's worth of small ops, which a few dozen columns do not
  // repay. Tests lower it to run grouped attention on short prompts.
  int min_block_tokens = 256;
  // Device-independent attention ops even on the CPU (see layers.h): tests
  // check the GPU's attention path this way.
  bool generic_attention = false;
  // On the CPU, weights stored 4- or 8-bit are also kept so for decode steps
  // (few rows), which then read an eighth of float32's bytes (cpu_qmatmul.h).
  bool quantized_decode = true;
  // On the CPU, decode steps whose rows are all greedy pick their tokens from
  // a shortlist of the output projection's columns (cpu_greedy_head.h), the
  // same picks without most of its work. False: every step computes all the
  // logits, as before; for benchmarks and as a reference.
  bool greedy_shortlist = true;
};

struct LoadedModel {
  std::string device;
  std::string weights;
  std::string weights_note;  // GGUF: which matrices stayed quantized, which became dense
  size_t parameter_bytes = 0;
  size_t kv_bytes_per_token = 0;  // all layers, keys and values, one row
};

struct PrefixStart {
  int handle = -1;
  int length = 0;
  std::vector<int32_t> tokens;  // the reused tokens, for the repetition penalty's look-back
};


struct SavedPrefix {
  int handle = 0;
  int length = 0;
  size_t bytes = 0;
};

struct PrefillResult {
  std::optional<int> token;
  std::optional<TokenLogprobs> logprobs;  // of `token`, when the row asked (SamplingParams::logprobs)
  std::vector<float> logits;
  std::optional<SavedPrefix> saved;
};

struct DecodeRequest {
  std::map<int, int> inputs;                    // row id -> forced input token
  std::map<int, std::vector<int32_t>> masks;    // row id -> allowed-token bitmask
  bool want_logits = false;
};

struct DecodeResult {
  // Rows that failed alone at this step (no valid token to feed, or none
  // sampled): not in ids, and leaving the batch (dropped at the next step);
  // the other rows go on.
  struct RowFailure {
    int id;
    std::string error;
  };
  std::vector<RowFailure> failed;
  std::vector<int32_t> ids, tokens;
  // Aligned with ids when any row asked for logprobs (set for those rows), else empty.
  std::vector<std::optional<TokenLogprobs>> logprobs;
  std::vector<float> logits;  // (rows, vocab) when asked for
  int vocab = 0;
};

struct EngineStats {
  int decoding_rows = 0;
  int prefilling_rows = 0;
  size_t kv_bytes = 0;
  size_t active_memory = 0;
  size_t peak_memory = 0;
  size_t prefix_bytes = 0;
  int prefixes = 0;
};

// The model and its rows. Only the engine thread touches it.
//
// Row life: add_sequence() (optionally starting after a saved prefix block,
// which the row then reads in place) -> prefill() chunks into the row's own
// cache -> the last chunk samples a first token and the row joins the decoding
// batch (its cache appended to the batch cache) -> decode() steps every
// decoding row together -> remove() marks it, and the next step drops every
// marked row in one gather.
class Engine {
 public:
  LoadedModel load(ModelSpec spec, const LoadOptions& options);
  // `prompt_tokens`: how many tokens the row's prefill chunks will bring (0: unknown).
  void add_sequence(int id, const SamplingParams& params, const std::optional<PrefixStart>& prefix = std::nullopt,
                    int prompt_tokens = 0);
  // `save` keeps the row's cache (this chunk included) as a prefix before a
  // last chunk moves the row into the batch.
  PrefillResult prefill(int id, const std::vector<int32_t>& tokens, bool last, bool want_logits,
                        const std::vector<int32_t>& first_token_mask = {}, bool save = false);
  // Keeps what a prefilling row has cached so far, for add_sequence(prefix).
  SavedPrefix save_prefix(int id);
  void drop_prefix(int handle);
  void set_memory_limits(size_t memory_limit, size_t cache_limit);
  // Last chunks of several short prompts in one forward pass, left-padded to
  // the longest (the padding becomes each row's left padding in the batch).
  // Every row must have nothing of its own cached yet (a fresh row, or one
  // started from a prefix). Results are in `items` order.
  struct BatchItem {
    int id;
    std::vector<int32_t> tokens;
    std::vector<int32_t> first_token_mask;
  };
  std::vector<PrefillResult> prefill_batch(const std::vector<BatchItem>& items, bool want_logits);
  DecodeResult decode(const DecodeRequest& request);
  void remove(int id);
  EngineStats stats();
  void reset_peak_memory();
  void unload();
  // For tests: the next prefill or decode step throws where its evaluation
  // runs, as an allocation failure there would.
  void fail_next_eval() { fail_next_eval_ = true; }

 private:
  struct Row {
    int id;
    RowSampler sampler;
    int next_input = -1;  // the last sampled token, fed at the next step
    int position = 0;     // tokens seen so far
    bool leaving = false; // removed; dropped from the batch at the next step
  };
  struct PendingRow {
    Row row;
    KvCache cache;
  };
  // Rows whose prompt is done, with their caches (one row, or several
  // prefilled together), waiting to be appended to the batch.
  struct JoiningRows {
    std::vector<Row> rows;
    KvCache cache;
  };

  LoadedModel load_model(ModelSpec spec, const LoadOptions& options);
  void require_model(const char* op) const;
  PendingRow& pending_row(const char* op, int id, const std::vector<int32_t>& tokens);
  // Whether `token` can be fed to the model at the next step.
  bool valid_input(int token) const { return token >= 0 && token < input_vocab_; }
  void merge_joining();
  void drop_leaving();
  // The batch as the next step sees it: leaving rows out, joining rows in.
  void settle_rows();
  // mx::eval of a step's outputs (and where fail_next_eval() strikes).
  void eval_step(const std::vector<mx::array>& outputs);

  ModelSpec spec_;
  // Token ids a prompt or forced input may hold: the vocabulary, or fewer where the embedding has fewer rows.
  int input_vocab_ = 0;
  std::unique_ptr<Model> model_;
  std::optional<mx::Device> device_;
  std::map<int, PendingRow> pending_;
  // Rows whose prompt is done, merged into the batch together at the next
  // decode: one concatenation per step instead of one per joining row.
  std::vector<JoiningRows> joining_;
  std::vector<Row> rows_;  // decoding rows, in batch-cache order
  std::optional<KvCache> batch_;
  std::map<int, PrefixBlock> prefixes_;
  bool prefix_grouping_ = true;
  int min_block_tokens_ = 256;
  bool generic_attention_ = false;
  std::optional<GreedyHead> greedy_head_;
  int next_prefix_handle_ = 1;
  bool fail_next_eval_ = false;
};

}  // namespace mlxb
