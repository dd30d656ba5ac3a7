#pragma once
#include <algorithm>
#include <cstdlib>
#include <string_view>
#include <utility>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"

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

// For a custom primitive's eval_cpu: allocates the outputs, and runs `task` on
// the primitive's CPU stream, which keeps the arrays registered with it alive
// until the task is done. The task captures the arrays it reads and writes.
template <typename Task>
void dispatch_on_cpu(mx::Stream stream, const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs, Task&& task) {
  for (auto& out : outputs) out.set_data(mx::allocator::malloc(out.nbytes()));
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
