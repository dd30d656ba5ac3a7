#include "gguf_arrays.h"

#include <cstring>

#include "ggml_types.h"

namespace mlxb {

namespace {

mx::Shape mlx_shape(const GgufTensorInfo& t) {
  mx::Shape shape;
  for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) {
    if (*it > INT32_MAX) throw std::runtime_error("dimension " + std::to_string(*it) + " is too large for MLX");
    shape.push_back(static_cast<int32_t>(*it));
  }
  return shape;
}

// A host array filled in place, without a staging copy.
template <typename T>
mx::array host_array(const T* values, size_t count, mx::Shape shape, mx::Dtype dtype) {
  mx::array a(mx::allocator::malloc(count * sizeof(T)), std::move(shape), dtype);
  std::memcpy(a.data<T>(), values, count * sizeof(T));
  return a;
}

}  // namespace

mx::array gguf_float32(const GgufFile& file, const GgufTensorInfo& t) {
  const int64_t n = GgufFile::elements(t);
  mx::array a(mx::allocator::malloc(static_cast<size_t>(n) * sizeof(float)), mlx_shape(t), mx::float32);
  ggml_dequantize(t.type, file.data(t), n, a.data<float>());
  return a;
}

GgufAffine gguf_affine(const GgufFile& file, const GgufTensorInfo& t) {
  if (t.shape.size() != 2) throw file.error(t, "is not a matrix");
  const int64_t cols = t.shape[0], rows = t.shape[1];
  auto q = ggml_affine_repack(t.type, file.data(t), rows, cols);
  const int n = static_cast<int>(rows), groups = static_cast<int>(cols / 32);
  return GgufAffine{host_array(q.packed.data(), q.packed.size(), {n, static_cast<int>(cols * q.bits / 32)}, mx::uint32),
                    host_array(q.scales.data(), q.scales.size(), {n, groups}, mx::float32),
                    host_array(q.biases.data(), q.biases.size(), {n, groups}, mx::float32), q.bits};
}

}  // namespace mlxb
