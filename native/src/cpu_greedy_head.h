#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "cpu_qmatmul.h"

namespace mlxb {

// Greedy picks through an output projection without computing every logit
// exactly. A decode step of many rows spends a seventh of its time on the
// output projection (49,152 x 576 on the default model), and a greedy row
// needs only its largest logit. So every logit is first approximated from a
// coarse copy of the weight (8 bits a column, one scale each) and x rounded
// to 15 bits a row, in integer dot products with no per-block float work,
// together with a bound on the error; only the column groups whose upper
// bound reaches the best lower bound are then computed exactly, by the
// kernel the full product uses. The pick is therefore the full path's, tie
// for tie: a column outside the shortlist is below the pick's exact logit.
class GreedyHead {
 public:
  // The coarse copy of w (an integer-dot layout, cpu_qmatmul.h), or nullopt
  // where the weight is not in one.
  static std::optional<GreedyHead> build(const CpuQuantWeight& w);

  // hidden (B, K) float32 -> (B,) int32: per row, the first index of the
  // largest logit of hidden x W^T among the tokens below `limit` that its
  // bitmask allows (bit t of word t / 32; an empty mask allows all, as the
  // sampler reads them), as cpu_quantized_matmul with B rows and then
  // first_max_index over the first `limit` logits would pick: always a token
  // below the limit (0 where none is allowed or every logit is NaN).
  mx::array picks(const mx::array& hidden, std::vector<std::vector<int32_t>> masks, int limit) const;

  int vocab() const { return weight_.out_features; }
  size_t nbytes() const { return codes_.nbytes() + columns_.nbytes(); }

 private:
  GreedyHead(CpuQuantWeight weight, mx::array codes, mx::array columns)
      : weight_(std::move(weight)), codes_(std::move(codes)), columns_(std::move(columns)) {}

  CpuQuantWeight weight_;
  // Per column group, per 4 k: the 16 columns' 4 codes, each w / scale + 128 in 1..255.
  mx::array codes_;
  // (2, groups * 16) float32: per column, its scale and the sum of its exact |w|.
  mx::array columns_;
};

}  // namespace mlxb
