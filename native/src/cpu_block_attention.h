#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace mlxb {

// Attention of a prefix group's queries (its rows, times the GQA repeat) over
// their shared key block: the minion step, 16 questions about one file.
// Tasks split the keys, not the queries, so each task reads its keys and
// values once for all the queries; the chunks' shares merge through their
// softmax normalizers (flash-decoding). Scores are kept query-minor (key by
// 16-query vector), so neither the keys nor the scores are transposed, and
// the softmax runs down whole vectors.
//
// q (H, N, D) scaled, contiguous; k, v one head `*_head` apart, keys `*_col`
// apart, contiguous within a key. Results are the unnormalized share
// {max, sum, out} of cpu_attention.h: (H, N), (H, N) and (H, N, Dv).
struct BlockAttentionProblem {
  const float *q, *k, *v;
  const int32_t* bounds;  // (N, 2): query n sees key columns [begin, end)
  int64_t k_head, k_col, v_head, v_col;
  int H, N, S, D, Dv;
  float *max, *sum, *out;
};

class BlockAttention {
 public:
  // Whether this kernel runs the problem: AVX-512, head sizes a multiple of
  // 16 (D up to 256), enough queries to fill vectors.
  static bool suits(int queries, int head_dim, int value_dim);

  // Splits the problem into blocks of queries and chunks of keys that keep
  // `threads` threads busy.
  BlockAttention(const BlockAttentionProblem& p, int threads);
  int tasks() const { return p_.H * qblocks_ * chunks_; }
  void run_task(int t);  // any order, concurrently
  void merge(int head);  // after every task; heads in any order, concurrently
  double macs() const;

 private:
  BlockAttentionProblem p_;
  int npad_, qblocks_, chunk_, chunks_;
  std::vector<float> qt_;  // per head (D, npad): queries across a vector
  std::unique_ptr<float[]> part_max_, part_sum_, part_out_;  // per task
};

}  // namespace mlxb
