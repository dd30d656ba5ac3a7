#pragma once
#include <optional>
#include <string>
#include <vector>

#include "mlx/mlx.h"

namespace mlxb {
namespace mx = mlx::core;

// How attention masks a step: nothing, MLX's built-in causal mode, or an
// explicit boolean array (true = attend).
struct AttentionMask {
  std::string mode;  // "" or "causal"
  std::optional<mx::array> array;
};

// What every layer of one forward step shares.
struct StepContext {
  mx::array rope_offsets;  // (B,) int32: position of each row's first new token
  AttentionMask full;
  AttentionMask sliding;  // only meaningful when the model has sliding layers
};

// The keys/values of one sequence's first `length` tokens, kept so that later
// sequences starting with the same tokens skip recomputing them. Arrays are
// immutable, so a cache built from a prefix copies on its first write and the
// prefix stays intact.
struct KvPrefix {
  std::vector<std::pair<mx::array, mx::array>> layers;  // (1, H, length, D) each
  int length = 0;
  size_t nbytes() const;
};

// KV cache for a batch of rows that are left-padded to one common length.
//
// Padding contract: in every layer, row b holds its tokens in columns
// [left_padding[b], length()) of keys/values (B, n_kv_heads, capacity, head_dim).
// Columns before left_padding[b] are zeros and always masked out; a row's RoPE
// position is (column - left_padding[b]). A single sequence is a batch of one
// with no padding; rows join a batch by append() and leave by keep_rows().
class KvCache {
 public:
  explicit KvCache(int num_layers);

  int batch() const { return static_cast<int>(left_padding_.size()); }
  int length() const { return length_; }
  const std::vector<int>& left_padding() const { return left_padding_; }
  bool empty() const { return left_padding_.empty(); }

  // Offsets and masks for a step that adds `new_tokens` columns to every row.
  StepContext prepare(int new_tokens, std::optional<int> sliding_window) const;
  // Writes (B, H, L, D) keys/values of layer `layer` at the current length and
  // returns everything cached so far including them: (B, H, length + L, D).
  std::pair<mx::array, mx::array> update(int layer, const mx::array& keys, const mx::array& values);
  // Called once all layers are updated for the step.
  void advance(int new_tokens) { length_ += new_tokens; }

  // Adds the rows of `others` after ours in one concatenation per layer,
  // left-padding every part to the longest.
  void append(std::vector<KvCache>&& others);
  // Keeps only these rows (indices into the current batch), then drops padding
  // columns that no remaining row needs.
  void keep_rows(const std::vector<int>& rows);
  // A new batch of one row with no cache, used before its first prefill chunk.
  void reset_single_row();
  // A batch of one row holding the first `length` tokens of `prefix`.
  void reset_from_prefix(const KvPrefix& prefix, int length);
  // Row 0's cached tokens (this must be a batch of one with no padding).
  KvPrefix snapshot() const;

  size_t nbytes() const;
  // Arrays to evaluate so the cache holds data, not a graph.
  std::vector<mx::array> state() const;

 private:
  struct Layer {
    std::optional<mx::array> keys, values;  // (B, H, capacity, D)
  };
  void trim_to(int length);
  void pad_left_to(int length);

  std::vector<Layer> layers_;
  std::vector<int> left_padding_;
  int length_ = 0;
  int capacity_ = 0;
};

}  // namespace mlxb
