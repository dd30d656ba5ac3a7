// checked_malloc (native/src/cpu_dispatch.h), which the CPU kernels' outputs
// and GGUF conversions allocate through: built and run by
// test/native-hardening.test.ts (Linux). With the address space capped, a
// 4 GiB allocation fails: MLX's CPU allocator then hands back a null buffer,
// which checked_malloc must refuse with an exception naming the size.
#include <sys/resource.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "cpu_dispatch.h"

int main() {
  long vm_kib = 0;
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmSize:", 0) == 0) vm_kib = std::stol(line.substr(7));
  }
  const rlim_t cap = static_cast<rlim_t>(vm_kib) * 1024 + (rlim_t{1} << 30);  // 1 GiB above what is mapped now
  rlimit limit{cap, cap};
  if (vm_kib == 0 || setrlimit(RLIMIT_AS, &limit) != 0) {
    std::printf("FAIL cannot cap the address space\n");
    return 1;
  }
  try {
    auto data = mlxb::checked_malloc(size_t{1} << 32);
    std::printf("FAIL a 4 GiB allocation under a 1 GiB cap succeeded (%p)\n", data.buffer().ptr());
    return 1;
  } catch (const std::runtime_error& e) {
    std::printf("ok refused: %s\n", e.what());
  }
  auto small = mlxb::checked_malloc(1024);
  if (!small.buffer().ptr()) {
    std::printf("FAIL a small allocation failed\n");
    return 1;
  }
  std::printf("ok small allocation\n");
  return 0;
}
