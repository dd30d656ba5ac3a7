#include "cpu_norm_rope.h"

#include <cmath>

#include "cpu_dispatch.h"
#include "mlx/primitives.h"

namespace mlxb {
namespace {

class RmsNormCpu : public CpuKernel {
 public:
  RmsNormCpu(mx::Stream stream, float eps) : CpuKernel(stream), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    dispatch_on_cpu(stream(), inputs, outputs, [x = inputs[0], w = inputs[1], out = outputs[0], eps = eps_]() mutable {
      const int D = x.shape(-1);
      const size_t rows = D > 0 ? x.size() / D : 0;
      const float* in = x.data<float>();
      const float* weight = w.data<float>();
      float* y = out.data<float>();
      // mean(square(x)) as MLX computes it on x86: a sum in order, times 1/D.
      const float inv_d = static_cast<float>(1.0 / D);
      for (size_t r = 0; r < rows; ++r, in += D, y += D) {
        float sum = 0.0f;
        for (int i = 0; i < D; ++i) sum += in[i] * in[i];
        const float scale = 1.0f / std::sqrt(sum * inv_d + eps);
        for (int i = 0; i < D; ++i) y[i] = in[i] * scale * weight[i];
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("cpu_rms_norm: CPU only");
  }
  const char* name() const override { return "RmsNormCpu"; }
  bool is_equivalent(const mx::Primitive& other) const override { return static_cast<const RmsNormCpu&>(other).eps_ == eps_; }

 private:
  float eps_;
};

class RopeCpu : public CpuKernel {
 public:
  RopeCpu(mx::Stream stream, int dims, bool traditional) : CpuKernel(stream), dims_(dims), traditional_(traditional) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    dispatch_on_cpu(stream(), inputs, outputs, [x = inputs[0], cos = inputs[1], sin = inputs[2], out = outputs[0],
                                                dims = dims_, traditional = traditional_]() mutable {
      const int B = x.shape(0), H = x.shape(1), L = x.shape(2), D = x.shape(3), half = dims / 2;
      const auto& st = x.strides();
      const auto &cst = cos.strides(), &sst = sin.strides();
      const float* in = x.data<float>();
      float* y = out.data<float>();
      for (int b = 0; b < B; ++b) {
        for (int h = 0; h < H; ++h) {
          for (int l = 0; l < L; ++l, y += D) {
            const float* xr = in + b * st[0] + h * st[1] + l * st[2];
            const float* c = cos.data<float>() + b * cst[0] + l * cst[1];
            const float* s = sin.data<float>() + b * sst[0] + l * sst[1];
            // As MLX's composition: x1 * cos - x2 * sin and x1 * sin + x2 * cos,
            // each product rounded (this file is built without contraction).
            if (traditional) {
              for (int i = 0; i < half; ++i) {
                const float x1 = xr[2 * i], x2 = xr[2 * i + 1];
                y[2 * i] = x1 * c[i] - x2 * s[i];
                y[2 * i + 1] = x1 * s[i] + x2 * c[i];
              }
            } else {
              for (int i = 0; i < half; ++i) {
                const float x1 = xr[i], x2 = xr[half + i];
                y[i] = x1 * c[i] - x2 * s[i];
                y[half + i] = x1 * s[i] + x2 * c[i];
              }
            }
            for (int i = dims; i < D; ++i) y[i] = xr[i];
          }
        }
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("cpu_rope: CPU only");
  }
  const char* name() const override { return "RopeCpu"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const RopeCpu&>(other);
    return o.dims_ == dims_ && o.traditional_ == traditional_;
  }

 private:
  int dims_;
  bool traditional_;
};

}  // namespace

mx::array cpu_rms_norm(const mx::array& x, const mx::array& weight, float eps) {
  auto cpu = mx::Device(mx::Device::cpu);
  if (x.dtype() != mx::float32 || weight.dtype() != mx::float32 || weight.ndim() != 1 || weight.shape(0) != x.shape(-1)) {
    throw std::invalid_argument("cpu_rms_norm: float32 input and a weight of its width expected");
  }
  return mx::array(x.shape(), mx::float32, std::make_shared<RmsNormCpu>(mx::default_stream(cpu), eps),
                   {row_contiguous(x), weight});
}

mx::array cpu_rope(const mx::array& x, const mx::array& cos, const mx::array& sin, int dims, bool traditional) {
  auto cpu = mx::Device(mx::Device::cpu);
  if (x.ndim() != 4 || x.dtype() != mx::float32 || dims % 2 != 0 || dims > x.shape(3) ||
      cos.shape() != mx::Shape{x.shape(0), x.shape(2), dims / 2} || sin.shape() != cos.shape()) {
    throw std::invalid_argument("cpu_rope: float32 (B, H, L, D) input and (B, L, dims / 2) tables expected");
  }
  auto in = x.strides(3) == 1 ? x : mx::contiguous(x, false, cpu);
  // The tables are read through their strides (rows broadcast over the batch
  // have stride 0): every layer reads the step's one pair, with no copy node each.
  return mx::array(x.shape(), mx::float32, std::make_shared<RopeCpu>(mx::default_stream(cpu), dims, traditional), {in, cos, sin});
}

std::pair<mx::array, mx::array> rope_tables(const mx::array& offsets, int B, int L, int dims, std::optional<float> base,
                                            float scale, const std::optional<mx::array>& freqs) {
  auto cpu = mx::Device(mx::Device::cpu);
  const int half = dims / 2;
  // The ops and constants of MLX's rope on the CPU (fast.cpp), so the tables
  // round as its own do.
  auto offset = offsets.size() > 1 ? mx::expand_dims(offsets, {-1, -2}, cpu) : offsets;
  auto positions = mx::multiply(mx::add(mx::arange(L, mx::float32, cpu), offset, cpu), mx::array(scale, mx::float32), cpu);
  auto inv_freqs = freqs ? mx::reciprocal(*freqs, cpu)
                         : mx::exp(mx::multiply(mx::arange(0, -half, -1, mx::float32, cpu),
                                                mx::array(std::log(*base) / half, mx::float32), cpu),
                                   cpu);
  auto theta = mx::multiply(mx::expand_dims(positions, -1, cpu), inv_freqs, cpu);
  auto table = [&](const mx::array& t) {
    // (L, half) or (B, 1, L, half) -> (B, L, half)
    return mx::broadcast_to(mx::reshape(t, {-1, L, half}, cpu), {B, L, half}, cpu);
  };
  return {table(mx::cos(theta, cpu)), table(mx::sin(theta, cpu))};
}

}  // namespace mlxb
