#include "cpu_softmax.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu_dispatch.h"
#include "cpu_math.h"
#include "mlx/primitives.h"

namespace mlxb {
namespace {

void exp_and_sum_row(const float* x, float* w, int n, float* max_out, float* sum_out) {
  float top = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : top)
  for (int i = 0; i < n; ++i) top = x[i] > top ? x[i] : top;
  *max_out = top;
  if (top == -std::numeric_limits<float>::infinity()) {
    std::memset(w, 0, sizeof(float) * n);
    *sum_out = 0.0f;
    return;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < n; ++i) {
    w[i] = exp_nonpositive(x[i] - top);
    sum += w[i];
  }
  *sum_out = sum;
}

// out = gate * sigmoid(gate) * up, with sigmoid from exp(-|gate|) <= 1.
[[gnu::always_inline]] inline void silu_mul_loop(const float* gate, const float* up, float* out, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const float x = gate[i];
    const float e = exp_nonpositive(x < 0.0f ? x : -x);
    const float sigmoid = (x < 0.0f ? e : 1.0f) / (1.0f + e);
    out[i] = x * sigmoid * up[i];
  }
}

#if defined(__x86_64__)
// The same loop 8 wide: the baseline build is SSE2, 4 wide.
__attribute__((target("avx2,fma"))) void silu_mul_avx2(const float* gate, const float* up, float* out, size_t n) {
  silu_mul_loop(gate, up, out, n);
}
#endif

void silu_mul_span(const float* gate, const float* up, float* out, size_t n) {
#if defined(__x86_64__)
  if (cpu_has_avx2_fma()) return silu_mul_avx2(gate, up, out, n);
#endif
  silu_mul_loop(gate, up, out, n);
}

// With one input: each row holds gate then up (stacked projections).
class SiluMul : public CpuKernel {
 public:
  explicit SiluMul(mx::Stream stream) : CpuKernel(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    if (inputs.size() == 1) {
      dispatch_on_cpu(stream(), inputs, outputs, [stacked = inputs[0], out = outputs[0]]() mutable {
        const size_t width = out.shape(-1), rows = width > 0 ? out.size() / width : 0;
        const float* in = stacked.data<float>();
        for (size_t r = 0; r < rows; ++r) silu_mul_span(in + 2 * r * width, in + (2 * r + 1) * width, out.data<float>() + r * width, width);
      });
      return;
    }
    dispatch_on_cpu(stream(), inputs, outputs, [gate = inputs[0], up = inputs[1], out = outputs[0]]() mutable {
      silu_mul_span(gate.data<float>(), up.data<float>(), out.data<float>(), out.size());
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("cpu_silu_mul: CPU only");
  }

  const char* name() const override { return "SiluMul"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

class SoftmaxParts : public CpuKernel {
 public:
  explicit SoftmaxParts(mx::Stream stream) : CpuKernel(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& scores = inputs[0];
    const int n = scores.shape(-1);
    const size_t rows = n > 0 ? scores.size() / n : outputs[1].size();
    std::optional<mx::array> limits;
    if (inputs.size() > 1) limits = inputs[1];
    dispatch_on_cpu(stream(), inputs, outputs, [scores, limits, weights = outputs[0], maxes = outputs[1], sums = outputs[2], rows, n]() mutable {
      const float* x = scores.data<float>();
      const int32_t* limit = limits ? limits->data<int32_t>() : nullptr;
      float* w = weights.data<float>();
      float* m = maxes.data<float>();
      float* l = sums.data<float>();
      for (size_t r = 0; r < rows; ++r) {
        const int keep = limit ? std::clamp(limit[r], 0, n) : n;
        exp_and_sum_row(x + r * n, w + r * n, keep, m + r, l + r);
        if (keep < n) std::memset(w + r * n + keep, 0, sizeof(float) * (n - keep));
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("cpu_softmax_parts: CPU only");
  }

  const char* name() const override { return "SoftmaxParts"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

}  // namespace

mx::array cpu_silu_mul(const mx::array& gate, const mx::array& up) {
  auto cpu = mx::Device(mx::Device::cpu);
  // The kernel reads as many values of up as it writes: one of another shape would be read past its end.
  if (gate.shape() != up.shape()) {
    throw std::invalid_argument("cpu_silu_mul: gate " + shape_string(gate) + " and up " + shape_string(up) + " differ in shape");
  }
  auto g = row_contiguous(mx::astype(gate, mx::float32, cpu));
  auto u = row_contiguous(mx::astype(up, mx::float32, cpu));
  return mx::array(g.shape(), mx::float32, std::make_shared<SiluMul>(mx::default_stream(cpu)), {g, u});
}

mx::array cpu_silu_mul_stacked(const mx::array& gate_up) {
  auto cpu = mx::Device(mx::Device::cpu);
  auto x = row_contiguous(mx::astype(gate_up, mx::float32, cpu));
  auto shape = x.shape();
  if (shape.back() % 2 != 0) throw std::invalid_argument("cpu_silu_mul_stacked: odd width " + std::to_string(shape.back()));
  shape.back() /= 2;
  return mx::array(shape, mx::float32, std::make_shared<SiluMul>(mx::default_stream(cpu)), {x});
}

std::vector<mx::array> cpu_softmax_parts(const mx::array& scores, const std::optional<mx::array>& limits) {
  auto cpu = mx::Device(mx::Device::cpu);
  auto x = row_contiguous(mx::astype(scores, mx::float32, cpu));
  auto reduced = x.shape();
  reduced.back() = 1;
  std::vector<mx::array> inputs{x};
  if (limits) inputs.push_back(mx::contiguous(mx::broadcast_to(mx::astype(*limits, mx::int32, cpu), reduced, cpu), false, cpu));
  return mx::array::make_arrays({x.shape(), reduced, reduced}, {mx::float32, mx::float32, mx::float32},
                                std::make_shared<SoftmaxParts>(mx::default_stream(cpu)), inputs);
}

}  // namespace mlxb
