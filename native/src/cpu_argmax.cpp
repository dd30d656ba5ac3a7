#include "cpu_argmax.h"

#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_dispatch.h"
#include "cpu_worker_pool.h"
#include "mlx/primitives.h"

namespace mlxb {
namespace {

// The first index of the largest value that is not NaN; 0 when there is none.
int first_max_scalar(const float* x, int n) {
  int best = 0;
  float top = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) {
    if (x[i] > top) {
      top = x[i];
      best = i;
    }
  }
  return best;
}

#if defined(__x86_64__)
// The same, 16 lanes at a time: each lane keeps its first maximum (a strict
// comparison, which NaN never passes); then the largest lane value, and among
// lanes holding it the smallest index.
__attribute__((target("avx512f"))) int first_max512(const float* x, int n) {
  const int whole = n / 16 * 16;
  if (whole == 0) return first_max_scalar(x, n);
  __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512i at = _mm512_setzero_si512();
  __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  for (int i = 0; i < whole; i += 16, index = _mm512_add_epi32(index, step)) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __mmask16 higher = _mm512_cmp_ps_mask(v, top, _CMP_GT_OQ);
    top = _mm512_mask_blend_ps(higher, top, v);
    at = _mm512_mask_blend_epi32(higher, at, index);
  }
  alignas(64) float tops[16];
  alignas(64) int32_t ats[16];
  _mm512_store_ps(tops, top);
  _mm512_store_si512(ats, at);
  // A lane that saw nothing above -inf holds (-inf, 0), which is the answer when no lane did.
  float best_value = tops[0];
  int best = ats[0];
  for (int l = 1; l < 16; ++l) {
    if (tops[l] > best_value || (tops[l] == best_value && ats[l] < best)) {
      best_value = tops[l];
      best = ats[l];
    }
  }
  for (int i = whole; i < n; ++i) {
    if (x[i] > best_value) {
      best_value = x[i];
      best = i;
    }
  }
  return best;
}
#endif

}  // namespace

int first_max_index(const float* x, int n) {
#if defined(__x86_64__)
  if (cpu_has_avx512()) return first_max512(x, n);
#endif
  return first_max_scalar(x, n);
}

namespace {

class ArgmaxRowsCpu : public CpuKernel {
 public:
  explicit ArgmaxRowsCpu(mx::Stream stream) : CpuKernel(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    dispatch_on_cpu(stream(), inputs, outputs, [x = inputs[0], out = outputs[0]]() mutable {
      const int rows = x.shape(0), V = x.shape(1);
      const float* logits = x.data<float>();
      int32_t* picks = out.data<int32_t>();
      WorkerPool::instance().run(rows, [&](int r) { picks[r] = first_max_index(logits + static_cast<size_t>(r) * V, V); });
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("cpu_argmax_rows: CPU only");
  }
  const char* name() const override { return "ArgmaxRowsCpu"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

}  // namespace

mx::array cpu_argmax_rows(const mx::array& logits) {
  auto cpu = mx::Device(mx::Device::cpu);
  if (logits.ndim() != 2 || logits.dtype() != mx::float32) throw std::invalid_argument("cpu_argmax_rows: float32 (B, V) logits expected");
  return mx::array({logits.shape(0)}, mx::int32, std::make_shared<ArgmaxRowsCpu>(mx::default_stream(cpu)),
                   {mx::contiguous(logits, false, cpu)});
}

}  // namespace mlxb
