#include "cache.h"

#include <algorithm>

namespace mlxb {

namespace {
// Growing the buffers in steps keeps slice_update in place for most steps.
// Short buffers (a batch's suffixes: questions and answers) grow in small
// steps, since every row pays the step; long ones (a prompt being read) in
// large steps, so they are copied less often.
constexpr int kSmallStep = 32, kLargeStep = 256, kLargeFrom = 1024;

int round_up(int n) {
  const int step = n < kLargeFrom ? kSmallStep : kLargeStep;
  return ((n + step - 1) / step) * step;
}

// The first `length` columns (axis 2) of a (B, H, S, D) array.
mx::array first_columns(const mx::array& a, int length) {
  auto shape = a.shape();
  shape[2] = length;
  return mx::slice(a, {0, 0, 0, 0}, shape);
}
}  // namespace

KvCache::KvCache(int num_layers) : layers_(num_layers) {}

void KvCache::reset_single_row() {
  for (auto& layer : layers_) layer = {};
  left_padding_ = {0};
  prefixes_ = {RowPrefix{}};
  length_ = 0;
  reserved_ = 0;
}

void KvCache::reset_from_prefix(const PrefixBlock& prefix, int length, bool share) {
  reset_single_row();
  if (length <= 0) return;
  if (share) {
    prefixes_[0] = RowPrefix{prefix, length};
    return;
  }
  // Today's path, kept for comparison: the row gets its own copy on first write.
  for (size_t i = 0; i < layers_.size(); ++i) {
    layers_[i].keys = first_columns(prefix->layers[i].first, length);
    layers_[i].values = first_columns(prefix->layers[i].second, length);
  }
  length_ = length;
}

PrefixBlock KvCache::collect() const {
  if (batch() != 1 || left_padding_[0] != 0) throw std::logic_error("prefix: only a single unpadded row");
  const auto& own = prefixes_[0];
  if (length_ == 0 && own.block && own.length == own.block->length) return own.block;
  if (length_ == 0 && !own.block) throw std::logic_error("prefix: the row has no cached tokens");
  auto block = std::make_shared<KvPrefix>();
  block->length = own.length + length_;
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto join = [&](const std::optional<mx::array>& mine, bool keys) {
      std::vector<mx::array> parts;
      if (own.block) {
        const auto& p = own.block->layers[i];
        parts.push_back(first_columns(keys ? p.first : p.second, own.length));
      }
      if (length_ > 0) parts.push_back(first_columns(*mine, length_));
      // One contiguous copy now, so every step reads it with no copy of its own.
      return parts.size() == 1 ? mx::contiguous(parts[0]) : mx::concatenate(parts, 2);
    };
    block->layers.emplace_back(join(layers_[i].keys, true), join(layers_[i].values, false));
  }
  std::vector<mx::array> arrays;
  for (const auto& [k, v] : block->layers) arrays.insert(arrays.end(), {k, v});
  mx::eval(arrays);
  return block;
}

PrefixBlock KvCache::freeze() {
  auto block = collect();
  reset_single_row();
  prefixes_[0] = RowPrefix{block, block->length};
  return block;
}

void KvCache::pad_next_chunk(const std::vector<int>& lengths, int width) {
  if (length_ != 0 || static_cast<int>(lengths.size()) != batch()) throw std::logic_error("pad_next_chunk: rows already hold tokens");
  for (int b = 0; b < batch(); ++b) left_padding_[b] = width - lengths[b];
}

size_t KvPrefix::nbytes() const {
  size_t total = 0;
  for (const auto& [k, v] : layers) total += k.nbytes() + v.nbytes();
  return total;
}

StepContext KvCache::prepare(int new_tokens, std::optional<int> sliding_window) const {
  const int B = batch();
  std::vector<int32_t> offsets(B);
  bool padded = false;
  for (int b = 0; b < B; ++b) {
    offsets[b] = prefixes_[b].length + length_ - left_padding_[b];
    padded |= left_padding_[b] > 0;
  }
  StepContext ctx{mx::array(offsets.data(), {B}, mx::int32), {}, {}, {}, 0, std::nullopt, {}};

  const int total = length_ + new_tokens;
  auto build = [&](std::optional<int> window) -> AttentionMask {
    // Query l of row b is column length_ + l: it sees its row's columns from
    // the padding (or the window's start) through its own, and always its own.
    std::vector<int32_t> bounds(size_t(B) * new_tokens * 2);
    for (int b = 0; b < B; ++b) {
      for (int l = 0; l < new_tokens; ++l) {
        const int row = length_ + l;
        int begin = row < left_padding_[b] ? row : left_padding_[b];
        if (window) begin = std::max(begin, row - *window + 1);
        bounds[(size_t(b) * new_tokens + l) * 2] = begin;
        bounds[(size_t(b) * new_tokens + l) * 2 + 1] = row + 1;
      }
    }
    auto bounds_array = mx::array(bounds.data(), {B, new_tokens, 2}, mx::int32);
    const bool window_matters = window && total > *window;
    if (!padded && !window_matters) {
      // One query sees every cached column, or plain causal for many queries.
      return AttentionMask{new_tokens > 1 ? "causal" : "", std::nullopt, bounds_array};
    }
    auto cols = mx::reshape(mx::arange(total, mx::int32), {1, 1, 1, total});
    auto rows = mx::reshape(mx::arange(length_, total, 1, mx::int32), {1, 1, new_tokens, 1});
    auto pad = mx::reshape(mx::array(left_padding_.data(), {B}, mx::int32), {B, 1, 1, 1});
    // Every query also sees its own column: a padding query (a batched
    // prefill's left padding) then stays finite instead of 0/0, and real
    // queries see it anyway.
    auto mask = mx::logical_or(mx::logical_and(mx::greater_equal(cols, pad), mx::less_equal(cols, rows)), mx::equal(cols, rows));
    if (window_matters) mask = mx::logical_and(mask, mx::less(mx::subtract(rows, cols), mx::array(*window)));
    return AttentionMask{"", mask, bounds_array};  // (B, 1, L, total)
  };
  ctx.full = build(std::nullopt);
  ctx.sliding = sliding_window ? build(sliding_window) : ctx.full;

  // Rows reading the same block form one group, in order of first appearance.
  std::vector<int> ungrouped;
  for (int b = 0; b < B; ++b) {
    const auto& p = prefixes_[b];
    if (!p.block) {
      ungrouped.push_back(b);
      continue;
    }
    auto g = std::find_if(ctx.groups.begin(), ctx.groups.end(), [&](const PrefixGroup& x) { return x.block == p.block; });
    if (g == ctx.groups.end()) {
      ctx.groups.push_back(PrefixGroup{p.block, 0, {}, mx::array(0), std::nullopt, std::nullopt, std::nullopt, mx::array(0), mx::array(0)});
      g = ctx.groups.end() - 1;
    }
    g->rows.push_back(b);
    g->length = std::max(g->length, p.length);
  }
  if (ctx.groups.empty()) return ctx;
  std::vector<int> order;
  for (auto& g : ctx.groups) {
    const int n = static_cast<int>(g.rows.size());
    g.row_index = mx::array(g.rows.data(), {n}, mx::int32);
    order.insert(order.end(), g.rows.begin(), g.rows.end());
    std::vector<int32_t> lengths(n), starts(n);
    bool uneven = false;
    int last_query = 0;
    for (int i = 0; i < n; ++i) {
      lengths[i] = prefixes_[g.rows[i]].length;
      starts[i] = offsets[g.rows[i]];
      uneven |= lengths[i] != g.length;
      last_query = std::max(last_query, starts[i] + new_tokens - 1);
    }
    // Query l of row i is at position starts[i] + l, after every block column.
    std::vector<int32_t> full(size_t(n) * new_tokens * 2), window(full.size());
    for (int i = 0; i < n; ++i) {
      for (int l = 0; l < new_tokens; ++l) {
        const size_t at = (size_t(i) * new_tokens + l) * 2;
        full[at] = 0;
        full[at + 1] = window[at + 1] = lengths[i];
        window[at] = sliding_window ? std::clamp(starts[i] + l - *sliding_window + 1, 0, lengths[i]) : 0;
      }
    }
    g.full_bounds = mx::array(full.data(), {n, new_tokens, 2}, mx::int32);
    g.sliding_bounds = mx::array(window.data(), {n, new_tokens, 2}, mx::int32);
    const bool window_cuts = sliding_window && last_query >= *sliding_window;
    if (!uneven && !window_cuts) continue;
    auto cols = mx::reshape(mx::arange(g.length, mx::int32), {1, 1, 1, g.length});
    if (uneven) {
      g.row_lengths = mx::reshape(mx::array(lengths.data(), {n}, mx::int32), {n, 1, 1, 1});
      g.full_mask = mx::less(cols, *g.row_lengths);
    }
    g.sliding_mask = g.full_mask;
    if (window_cuts) {
      auto queries = mx::add(mx::reshape(mx::array(starts.data(), {n}, mx::int32), {n, 1, 1, 1}),
                             mx::reshape(mx::arange(new_tokens, mx::int32), {1, 1, new_tokens, 1}));
      auto inside = mx::less(mx::subtract(queries, cols), mx::array(*sliding_window));
      g.sliding_mask = g.full_mask ? mx::logical_and(*g.full_mask, inside) : inside;
    }
  }
  ctx.ungrouped = static_cast<int>(ungrouped.size());
  order.insert(order.end(), ungrouped.begin(), ungrouped.end());
  std::vector<int32_t> where(B);
  bool identity = true;
  for (int i = 0; i < B; ++i) {
    where[order[i]] = i;
    identity &= order[i] == i;
  }
  if (!identity) ctx.group_order = mx::array(where.data(), {B}, mx::int32);
  return ctx;
}

std::pair<mx::array, mx::array> KvCache::update(int layer_index, const mx::array& keys, const mx::array& values) {
  auto& layer = layers_[layer_index];
  const int B = keys.shape(0), H = keys.shape(1), L = keys.shape(2), D = keys.shape(3);
  const int Dv = values.shape(3);
  const int needed = length_ + L;
  if (!layer.keys || needed > layer.keys->shape(2)) {
    const int capacity = needed <= reserved_ ? reserved_ : round_up(needed);
    auto grow = [&](const std::optional<mx::array>& old, int dim, mx::Dtype dtype) {
      auto fresh = mx::zeros({B, H, capacity, dim}, dtype);
      if (!old || length_ == 0) return fresh;
      return mx::slice_update(fresh, first_columns(*old, length_), mx::Shape{0, 0, 0, 0}, mx::Shape{B, H, length_, dim});
    };
    layer.keys = grow(layer.keys, D, keys.dtype());
    layer.values = grow(layer.values, Dv, values.dtype());
  }
  layer.keys = mx::slice_update(*layer.keys, keys, mx::Shape{0, 0, length_, 0}, mx::Shape{B, H, needed, D});
  layer.values = mx::slice_update(*layer.values, values, mx::Shape{0, 0, length_, 0}, mx::Shape{B, H, needed, Dv});
  return {first_columns(*layer.keys, needed), first_columns(*layer.values, needed)};
}

void KvCache::append(std::vector<KvCache>&& others) {
  std::vector<KvCache*> parts;
  if (!empty()) parts.push_back(this);
  for (auto& o : others) {
    if (!o.empty()) parts.push_back(&o);
  }
  if (parts.empty()) return;
  int target = 0;
  for (auto* p : parts) target = std::max(target, p->length_);
  // Room for the next steps, so the first decode after a join writes in place.
  const int capacity = round_up(target + 1);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const std::optional<mx::array>* like_keys = nullptr;
    const std::optional<mx::array>* like_values = nullptr;
    for (auto* p : parts) {
      if (p->layers_[i].keys) {
        like_keys = &p->layers_[i].keys;
        like_values = &p->layers_[i].values;
        break;
      }
    }
    if (!like_keys) continue;  // no row has suffix tokens yet
    auto place = [&](KvCache* p, const std::optional<mx::array>& a, const mx::array& like) {
      const int rows = p->batch(), heads = like.shape(1), dim = like.shape(3);
      if (!a) return mx::zeros({rows, heads, capacity, dim}, like.dtype());
      return mx::pad(first_columns(*a, p->length_), {{0, 0}, {0, 0}, {target - p->length_, capacity - target}, {0, 0}});
    };
    std::vector<mx::array> keys, values;
    for (auto* p : parts) {
      keys.push_back(place(p, p->layers_[i].keys, **like_keys));
      values.push_back(place(p, p->layers_[i].values, **like_values));
    }
    layers_[i].keys = keys.size() == 1 ? keys[0] : mx::concatenate(keys, 0);
    layers_[i].values = values.size() == 1 ? values[0] : mx::concatenate(values, 0);
  }
  std::vector<int> padding;
  std::vector<RowPrefix> prefixes;
  for (auto* p : parts) {
    for (int b = 0; b < p->batch(); ++b) {
      padding.push_back(p->left_padding_[b] + (target - p->length_));
      prefixes.push_back(p->prefixes_[b]);
    }
  }
  left_padding_ = std::move(padding);
  prefixes_ = std::move(prefixes);
  length_ = target;
  for (auto& o : others) o = KvCache(static_cast<int>(layers_.size()));
}

void KvCache::keep_rows(const std::vector<int>& rows) {
  if (rows.empty()) {
    *this = KvCache(static_cast<int>(layers_.size()));
    return;
  }
  std::vector<int> padding;
  std::vector<RowPrefix> prefixes;
  for (int r : rows) {
    padding.push_back(left_padding_[r]);
    prefixes.push_back(prefixes_[r]);
  }
  const int drop = *std::min_element(padding.begin(), padding.end());
  auto index = mx::array(rows.data(), {static_cast<int>(rows.size())}, mx::int32);
  for (auto& layer : layers_) {
    if (!layer.keys) continue;
    auto select = [&](const mx::array& a) {
      auto picked = mx::take(a, index, 0);
      if (drop == 0) return picked;
      auto shape = picked.shape();
      return mx::slice(picked, {0, 0, drop, 0}, shape);
    };
    layer.keys = select(*layer.keys);
    layer.values = select(*layer.values);
  }
  for (auto& p : padding) p -= drop;
  left_padding_ = std::move(padding);
  prefixes_ = std::move(prefixes);
  length_ -= drop;
}

size_t KvCache::nbytes() const {
  size_t total = 0;
  for (const auto& layer : layers_) {
    if (layer.keys) total += layer.keys->nbytes() + layer.values->nbytes();
  }
  return total;
}

std::vector<PrefixBlock> KvCache::prefix_blocks() const {
  std::vector<PrefixBlock> blocks;
  for (const auto& p : prefixes_) {
    if (p.block && std::find(blocks.begin(), blocks.end(), p.block) == blocks.end()) blocks.push_back(p.block);
  }
  return blocks;
}

std::vector<mx::array> KvCache::state() const {
  std::vector<mx::array> arrays;
  for (const auto& layer : layers_) {
    if (layer.keys) {
      arrays.push_back(*layer.keys);
      arrays.push_back(*layer.values);
    }
  }
  return arrays;
}

}  // namespace mlxb
