#include "gguf_arrays.h"

#include "cpu_dispatch.h"
#include "ggml_types.h"

namespace mlxb {

namespace {

mx::Shape mlx_shape(const GgufFile& file, const GgufTensorInfo& t) {
  mx::Shape shape;
  for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) {
    if (*it > INT32_MAX) throw file.error(t, "has a dimension of " + std::to_string(*it) + ", too large for MLX");
    shape.push_back(static_cast<int32_t>(*it));
  }
  return shape;
}

// A host array that conversions write into in place, without a staging copy.
mx::array host_array(mx::Shape shape, mx::Dtype dtype) {
  size_t count = 1;
  for (auto d : shape) count *= static_cast<size_t>(d);
  return mx::array(checked_malloc(count * mx::size_of(dtype)), std::move(shape), dtype);
}

}  // namespace

mx::array gguf_float32(const GgufFile& file, const GgufTensorInfo& t) {
  auto a = host_array(mlx_shape(file, t), mx::float32);
  ggml_dequantize(t.type, file.data(t), GgufFile::elements(t), a.data<float>());
  return a;
}

GgufAffine gguf_affine(const GgufFile& file, const GgufTensorInfo& t) {
  const int bits = ggml_affine_bits(t.type);
  if (t.shape.size() != 2 || !bits) throw file.error(t, "has no MLX affine form");
  const auto shape = mlx_shape(file, t);  // (N, K)
  GgufAffine out{host_array({shape[0], shape[1] / 32 * bits}, mx::uint32), host_array({shape[0], shape[1] / 32}, mx::float32),
                 host_array({shape[0], shape[1] / 32}, mx::float32), bits};
  ggml_affine_repack(t.type, file.data(t), shape[0], shape[1],
                     AffineOut{out.packed.data<uint32_t>(), out.scales.data<float>(), out.biases.data<float>()});
  return out;
}

}  // namespace mlxb
