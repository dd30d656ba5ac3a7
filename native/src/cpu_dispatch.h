#pragma once
#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace mlxb {
namespace mx = mlx::core;

// Whether this CPU runs the kernels built for AVX2 and FMA (x86-64 only).
inline bool cpu_has_avx2_fma() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// Whether this CPU runs the AVX-512 kernels (512-bit FMAs: twice AVX2's
// multiply-adds per instruction where the CPU executes them at full width).
// MLXB_CPU_AVX512=0 keeps the AVX2 kernels, to compare the two.
inline bool cpu_has_avx512() {
#if defined(__x86_64__)
  static const bool ok = [] {
    const char* env = std::getenv("MLXB_CPU_AVX512");
    if (env && std::string_view(env) == "0") return false;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           cpu_has_avx2_fma();
  }();
  return ok;
#else
  return false;
#endif
}

// Whether 4- and 8-bit weights load in the integer-dot layout
// (cpu_qmatmul.cpp): AVX-512 VNNI byte dot products do four multiply-adds
// per lane where an FMA does one. Read at each load, so MLXB_CPU_VNNI=0 can load an engine without
// it beside one with it, to compare the two.
inline bool cpu_uses_vnni() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx512vnni");
  const char* env = std::getenv("MLXB_CPU_VNNI");
  return has && cpu_has_avx512() && !(env && std::string_view(env) == "0");
#else
  return false;
#endif
}

// The engine's CPU kernels: their outputs are allocated by dispatch_on_cpu
// (below), so they are row-contiguous.
class CpuKernel : public mx::Primitive {
 public:
  using mx::Primitive::Primitive;
};

// Whether `a` is row-contiguous, or will be once evaluated: a kernel's output,
// an embedding lookup, and what MLX's element-wise ops, reshapes and casts
// make of such arrays. The kernels read these with no contiguous() node in
// front: a default-model decode step had about 400 such nodes that copied
// nothing, each dispatched on the engine thread and again on the CPU stream.
// `budget` bounds the nodes visited (the residual stream is a chain of adds).
inline bool known_row_contiguous(const mx::array& a, int& budget) {
  if (a.is_available()) return a.flags().row_contiguous;
  if (!a.has_primitive() || --budget < 0) return false;
  const auto& p = a.primitive();
  if (dynamic_cast<const CpuKernel*>(&p)) return true;
  const std::string_view op = p.name();
  const auto& in = a.inputs();
  // Gathers write a fresh row-major buffer.
  if (op == "Gather") return true;
  // Same element order, so a row-contiguous input stays so.
  if (op == "Reshape" || op == "Squeeze" || op == "ExpandDims" || op == "AsType") return known_row_contiguous(in[0], budget);
  if (op == "Transpose") {
    // Only axes of size 1 moved: the sizes over 1, all distinct, keep their order.
    std::vector<int> from, to;
    for (int d : in[0].shape()) if (d > 1) from.push_back(d);
    for (int d : a.shape()) if (d > 1) to.push_back(d);
    auto sorted = from;
    std::sort(sorted.begin(), sorted.end());
    return from == to && std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end() && known_row_contiguous(in[0], budget);
  }
  if (op == "Add" || op == "Multiply" || op == "Subtract" || op == "Divide") {
    // MLX writes an element-wise result in the layout of its one operand that
    // is not broadcast (a scalar's partner), or of either when both share a
    // layout, or in a fresh row-major buffer when an operand is broadcast.
    // So: one operand row-contiguous, and every other one that too or broadcast.
    bool any = false;
    for (const auto& x : in) {
      if (x.shape() != a.shape()) continue;
      if (known_row_contiguous(x, budget)) {
        any = true;
      } else if (x.is_available() || !x.has_primitive() || std::string_view(x.primitive().name()) != "Broadcast" ||
                 x.inputs()[0].size() >= x.size()) {
        return false;
      }
    }
    return any;
  }
  return false;
}

// `a` itself where it is known to be row-contiguous, else a row-contiguous copy on the CPU.
inline mx::array row_contiguous(const mx::array& a) {
  int budget = 256;
  return known_row_contiguous(a, budget) ? a : mx::contiguous(a, false, mx::Device(mx::Device::cpu));
}

// "(2, 3)", for error messages.
inline std::string shape_string(const mx::array& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(static_cast<int>(i)));
  return s + ")";
}

// mx::allocator::malloc, refusing a failed allocation: MLX's CPU-only
// allocator hands back a null buffer instead of throwing, which a kernel would
// then write through. Thrown where eval_cpu runs (inside mx::eval on the
// engine thread) or where a load converts a tensor, it rejects that call.
inline mx::allocator::Data checked_malloc(size_t bytes) {
  auto data = mx::allocator::malloc(bytes);
  if (bytes > 0 && data.buffer().ptr() == nullptr) {
    throw std::runtime_error("[malloc] Unable to allocate " + std::to_string(bytes) + " bytes.");
  }
  return data;
}

// For a custom primitive's eval_cpu: allocates the outputs, and runs `task` on
// the primitive's CPU stream, which keeps the arrays registered with it alive
// until the task is done. The task captures the arrays it reads and writes.
template <typename Task>
void dispatch_on_cpu(mx::Stream stream, const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs, Task&& task) {
  for (auto& out : outputs) out.set_data(checked_malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream);
  for (const auto& in : inputs) encoder.set_input_array(in);
  for (auto& out : outputs) encoder.set_output_array(out);
  encoder.dispatch(std::forward<Task>(task));
}

// Calls f.template operator()<TM>() with TM = tm, kept within 1..MAX: the
// tiles' row counts are template arguments, so their accumulators stay in registers.
template <int MAX, typename F>
void with_tile_rows(int tm, F&& f) {
  const int rows = std::clamp(tm, 1, MAX);
  [&]<int... I>(std::integer_sequence<int, I...>) {
    ((rows == I + 1 ? (f.template operator()<I + 1>(), true) : false) || ...);
  }(std::make_integer_sequence<int, MAX>{});
}

}  // namespace mlxb
