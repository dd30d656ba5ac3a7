#include "cache.h"

#include <algorithm>

namespace mlxb {

namespace {
// Growing the buffers in steps keeps slice_update in place for most steps.
constexpr int kCapacityStep = 256;
}  // namespace

KvCache::KvCache(int num_layers) : layers_(num_layers) {}

void KvCache::reset_single_row() {
  for (auto& layer : layers_) layer = {};
  left_padding_ = {0};
  length_ = 0;
  capacity_ = 0;
}

void KvCache::reset_from_prefix(const KvPrefix& prefix, int length) {
  reset_single_row();
  if (length <= 0) return;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& [k, v] = prefix.layers[i];
    auto upto = [&](const mx::array& a) {
      auto shape = a.shape();
      shape[2] = length;
      return mx::slice(a, {0, 0, 0, 0}, shape);
    };
    layers_[i].keys = upto(k);
    layers_[i].values = upto(v);
  }
  length_ = length;
  capacity_ = length;
}

KvPrefix KvCache::snapshot() const {
  if (batch() != 1 || left_padding_[0] != 0) throw std::logic_error("snapshot: only a single unpadded row");
  KvPrefix prefix;
  prefix.length = length_;
  for (const auto& layer : layers_) {
    if (!layer.keys) throw std::logic_error("snapshot: the row has no cached tokens");
    auto upto = [&](const mx::array& a) {
      auto shape = a.shape();
      shape[2] = length_;
      return mx::slice(a, {0, 0, 0, 0}, shape);
    };
    prefix.layers.emplace_back(upto(*layer.keys), upto(*layer.values));
  }
  return prefix;
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
    offsets[b] = length_ - left_padding_[b];
    padded |= left_padding_[b] > 0;
  }
  StepContext ctx{mx::array(offsets.data(), {B}, mx::int32), {}, {}};

  const int total = length_ + new_tokens;
  auto build = [&](std::optional<int> window) -> AttentionMask {
    const bool window_matters = window && total > *window;
    if (!padded && !window_matters) {
      // One query sees every cached column, or plain causal for many queries.
      return AttentionMask{new_tokens > 1 ? "causal" : "", std::nullopt};
    }
    auto cols = mx::reshape(mx::arange(total, mx::int32), {1, 1, 1, total});
    auto rows = mx::reshape(mx::arange(length_, total, 1, mx::int32), {1, 1, new_tokens, 1});
    auto pad = mx::reshape(mx::array(left_padding_.data(), {B}, mx::int32), {B, 1, 1, 1});
    auto mask = mx::logical_and(mx::greater_equal(cols, pad), mx::less_equal(cols, rows));
    if (window_matters) mask = mx::logical_and(mask, mx::less(mx::subtract(rows, cols), mx::array(*window)));
    return AttentionMask{"", mask};  // (B, 1, L, total)
  };
  ctx.full = build(std::nullopt);
  ctx.sliding = sliding_window ? build(sliding_window) : ctx.full;
  return ctx;
}

std::pair<mx::array, mx::array> KvCache::update(int layer_index, const mx::array& keys, const mx::array& values) {
  auto& layer = layers_[layer_index];
  const int B = keys.shape(0), H = keys.shape(1), L = keys.shape(2), D = keys.shape(3);
  const int Dv = values.shape(3);
  const int needed = length_ + L;
  if (!layer.keys || needed > layer.keys->shape(2)) {
    const int capacity = ((needed + kCapacityStep - 1) / kCapacityStep) * kCapacityStep;
    auto grow = [&](const std::optional<mx::array>& old, int dim, mx::Dtype dtype) {
      auto fresh = mx::zeros({B, H, capacity, dim}, dtype);
      if (!old || length_ == 0) return fresh;
      auto kept = mx::slice(*old, {0, 0, 0, 0}, {B, H, length_, dim});
      return mx::slice_update(fresh, kept, mx::Shape{0, 0, 0, 0}, mx::Shape{B, H, length_, dim});
    };
    layer.keys = grow(layer.keys, D, keys.dtype());
    layer.values = grow(layer.values, Dv, values.dtype());
    capacity_ = std::max(capacity_, capacity);
  }
  layer.keys = mx::slice_update(*layer.keys, keys, mx::Shape{0, 0, length_, 0}, mx::Shape{B, H, needed, D});
  layer.values = mx::slice_update(*layer.values, values, mx::Shape{0, 0, length_, 0}, mx::Shape{B, H, needed, Dv});
  return {mx::slice(*layer.keys, {0, 0, 0, 0}, {B, H, needed, D}),
          mx::slice(*layer.values, {0, 0, 0, 0}, {B, H, needed, Dv})};
}

void KvCache::trim_to(int length) {
  for (auto& layer : layers_) {
    if (!layer.keys) continue;
    auto cut = [&](const mx::array& a) {
      auto shape = a.shape();
      shape[2] = length;
      return mx::slice(a, {0, 0, 0, 0}, shape);
    };
    layer.keys = cut(*layer.keys);
    layer.values = cut(*layer.values);
  }
  capacity_ = length;
}

void KvCache::pad_left_to(int length) {
  const int extra = length - length_;
  trim_to(length_);
  if (extra <= 0) return;
  for (auto& layer : layers_) {
    if (!layer.keys) continue;
    layer.keys = mx::pad(*layer.keys, {{0, 0}, {0, 0}, {extra, 0}, {0, 0}});
    layer.values = mx::pad(*layer.values, {{0, 0}, {0, 0}, {extra, 0}, {0, 0}});
  }
  for (auto& p : left_padding_) p += extra;
  length_ = length;
  capacity_ = length;
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
  for (auto* p : parts) p->pad_left_to(target);
  for (size_t i = 0; i < layers_.size(); ++i) {
    std::vector<mx::array> keys, values;
    for (auto* p : parts) {
      if (!p->layers_[i].keys) continue;
      keys.push_back(*p->layers_[i].keys);
      values.push_back(*p->layers_[i].values);
    }
    if (keys.empty()) continue;
    layers_[i].keys = keys.size() == 1 ? keys[0] : mx::concatenate(keys, 0);
    layers_[i].values = values.size() == 1 ? values[0] : mx::concatenate(values, 0);
  }
  std::vector<int> padding;
  for (auto* p : parts) padding.insert(padding.end(), p->left_padding_.begin(), p->left_padding_.end());
  left_padding_ = std::move(padding);
  length_ = target;
  capacity_ = target;
  for (auto& o : others) o = KvCache(static_cast<int>(layers_.size()));
}

void KvCache::keep_rows(const std::vector<int>& rows) {
  if (rows.empty()) {
    *this = KvCache(static_cast<int>(layers_.size()));
    return;
  }
  std::vector<int> padding;
  for (int r : rows) padding.push_back(left_padding_[r]);
  const int drop = *std::min_element(padding.begin(), padding.end());
  auto index = mx::array(rows.data(), {static_cast<int>(rows.size())}, mx::int32);
  for (auto& layer : layers_) {
    if (!layer.keys) continue;
    auto select = [&](const mx::array& a) {
      auto picked = mx::take(a, index, 0);
      auto shape = picked.shape();
      shape[2] = length_;
      return mx::slice(picked, {0, 0, drop, 0}, shape);
    };
    layer.keys = select(*layer.keys);
    layer.values = select(*layer.values);
  }
  for (auto& p : padding) p -= drop;
  left_padding_ = std::move(padding);
  length_ -= drop;
  capacity_ = length_;
}

size_t KvCache::nbytes() const {
  size_t total = 0;
  for (const auto& layer : layers_) {
    if (layer.keys) total += layer.keys->nbytes() + layer.values->nbytes();
  }
  return total;
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
