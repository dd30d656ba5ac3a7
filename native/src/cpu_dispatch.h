#pragma once
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

}  // namespace mlxb
