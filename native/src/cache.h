#pragma once
#include <memory>
#include <optional>
#include <tuple>
#include <string>
#include <vector>

#include "mlx/mlx.h"

namespace mlxb {
namespace mx = mlx::core;

// How attention masks a step: nothing, MLX's built-in causal mode, or an
// explicit boolean array (true = attend). `bounds` says the same for the CPU
// attention kernel: each query sees one run of columns, (B, L, 2) int32
// [begin, end).
struct AttentionMask {
  std::string mode;  // "" or "causal"
  std::optional<mx::array> array;
  std::optional<mx::array> bounds;
};

// The keys/values of one sequence's first `length` tokens. Immutable once
// built: rows that start from it (N questions about one file) read it in place
// instead of copying it, and it lives as long as a row or a saved entry holds it.
struct KvPrefix {
  std::vector<std::pair<mx::array, mx::array>> layers;  // (1, H, length, D) each
  int length = 0;
  size_t nbytes() const;
};
using PrefixBlock = std::shared_ptr<const KvPrefix>;

// Rows of a step that read the same prefix block: attention over it is one
// matrix product for all of them, so the block is read once per step, not
// once per row.
struct PrefixGroup {
  PrefixBlock block;
  int length = 0;  // columns read: the longest prefix among the group's rows
  std::vector<int> rows;  // batch rows, in batch order
  mx::array row_index;    // the same rows as an int32 array
  // (n, 1, L, length) bool, only where rows use different lengths of the block
  // or a sliding window cuts into it; the lengths (n, 1, 1, 1) int32 in the
  // first case.
  std::optional<mx::array> full_mask, sliding_mask, row_lengths;
  // The columns of the block each query sees, as AttentionMask::bounds:
  // (n, L, 2) int32.
  mx::array full_bounds, sliding_bounds;
};

// What every layer of one forward step shares.
struct StepContext {
  mx::array rope_offsets;  // (B,) int32: position of each row's first new token
  AttentionMask full;      // over the suffix columns
  AttentionMask sliding;   // only meaningful when the model has sliding layers
  std::vector<PrefixGroup> groups;
  // Rows in no group, and where batch row b's prefix result sits in the
  // concatenation [group 0 rows, group 1 rows, ..., ungrouped rows]; unset when
  // that order is already the batch order.
  int ungrouped = 0;
  std::optional<mx::array> group_order;
  // RoPE's cos and sin tables on the CPU (cpu_norm_rope.h), made by the first
  // layer of each RoPE configuration (Gemma 3 has two) and shared by the rest.
  struct RopeTables {
    std::tuple<int, int, float, float, std::uintptr_t> config;  // L, dims, base, scale, freqs
    mx::array cos, sin;
  };
  mutable std::vector<RopeTables> rope_tables;
};

// KV cache for a batch of rows. Each row may start from a shared prefix block
// (read in place, never copied); what the row adds after it (its question and
// answer: its suffix) is kept here, left-padded to the longest suffix.
//
// Padding contract: in every layer, row b holds its suffix tokens in columns
// [left_padding[b], length()) of keys/values (B, n_kv_heads, capacity, head_dim).
// Columns before left_padding[b] are zeros and always masked out; a row's RoPE
// position is prefix_length(b) + (column - left_padding[b]). A single sequence
// is a batch of one with no padding; rows join by append() and leave by keep_rows().
class KvCache {
 public:
  explicit KvCache(int num_layers);

  int batch() const { return static_cast<int>(left_padding_.size()); }
  int length() const { return length_; }
  const std::vector<int>& left_padding() const { return left_padding_; }
  bool empty() const { return left_padding_.empty(); }
  // Tokens a row has in its suffix (its own cached tokens after any prefix).
  int suffix_length(int row) const { return length_ - left_padding_[row]; }
  bool has_prefix(int row) const { return prefixes_[row].block != nullptr; }
  // Tokens a row reads from its prefix block (0 without one).
  int prefix_length(int row) const { return prefixes_[row].length; }

  // Offsets and masks for a step that adds `new_tokens` columns to every row.
  StepContext prepare(int new_tokens, std::optional<int> sliding_window) const;
  // Writes (B, H, L, D) keys/values of layer `layer` at the current length and
  // returns every suffix column so far including them: (B, H, length + L, D).
  std::pair<mx::array, mx::array> update(int layer, const mx::array& keys, const mx::array& values);
  // Called once all layers are updated for the step.
  void advance(int new_tokens) { length_ += new_tokens; }
  // Undoes advance() for a step that failed before it was evaluated: the
  // columns past `length` are written again by the next step.
  void rewind(int length) { length_ = length; }

  // Adds the rows of `others` after ours in one concatenation per layer,
  // left-padding every part to the longest suffix, with room to grow.
  void append(std::vector<KvCache>&& others);
  // Keeps only these rows (indices into the current batch) in one gather per
  // layer, drops padding columns no remaining row needs, and keeps capacity.
  void keep_rows(const std::vector<int>& rows);
  // A new batch of one row with no cache, used before its first prefill chunk.
  void reset_single_row();
  // Row 0 will add `tokens` more columns before it is frozen or joins a
  // batch: the next growth makes room for all of them at once. A long prompt
  // then is not copied whole at every chunk as it grows, and its buffers end
  // exactly full, so freeze() shares them instead of copying (a 2,000-token
  // prompt: about 0.4 s of growth copies and 0.3 s of freeze copy).
  void reserve(int tokens) { reserved_ = length_ + tokens; }
  // A batch of one row starting after the first `length` tokens of `prefix`:
  // shared in place when `share`, else copied into the row's own cache.
  void reset_from_prefix(const PrefixBlock& prefix, int length, bool share);
  // Before a step whose rows bring lengths[b] real tokens each, left-padded to
  // `width` columns: the padding becomes the rows' left padding. Only for
  // rows with no suffix tokens yet (their first chunk, after any prefix).
  void pad_next_chunk(const std::vector<int>& lengths, int width);
  // Row 0's cached tokens, prefix included, as one block (a batch of one with
  // no padding). The row then reads that block as its prefix, so later chunks
  // and rows started from it share one copy.
  PrefixBlock freeze();
  // The same block without changing the row (today's path: rows started from
  // it copy it).
  PrefixBlock snapshot() const { return collect(); }

  // Bytes of the suffix buffers; prefix blocks are counted by who holds them.
  size_t nbytes() const;
  // Each distinct prefix block the rows read.
  std::vector<PrefixBlock> prefix_blocks() const;
  // Arrays to evaluate so the cache holds data, not a graph.
  std::vector<mx::array> state() const;

 private:
  struct Layer {
    std::optional<mx::array> keys, values;  // (B, H, capacity, D)
  };
  struct RowPrefix {
    PrefixBlock block;  // null: the row has no shared prefix
    int length = 0;
  };

  PrefixBlock collect() const;

  std::vector<Layer> layers_;
  std::vector<int> left_padding_;
  std::vector<RowPrefix> prefixes_;
  int length_ = 0;
  int reserved_ = 0;  // columns the next growth makes room for (reserve())
};

// A forward pass moves its cache's length on before the step is evaluated,
// while rows move on (position, sampler) only after it succeeded. If anything
// in between throws, this puts the cache's length back, so the step can be
// retried and the cache still agrees with its rows.
class StepRollback {
 public:
  explicit StepRollback(KvCache& cache) : cache_(cache), length_(cache.length()) {}
  ~StepRollback() {
    if (!committed_) cache_.rewind(length_);
  }
  StepRollback(const StepRollback&) = delete;
  StepRollback& operator=(const StepRollback&) = delete;
  void commit() { committed_ = true; }

 private:
  KvCache& cache_;
  int length_;
  bool committed_ = false;
};

}  // namespace mlxb
