// WorkerPool (native/src/cpu_worker_pool.h) when tasks throw: built and run
// by test/native-hardening.test.ts with MLX_BATCH_CPU_THREADS=4. Each check
// prints "ok <name>"; a failed check prints "FAIL <name>: why" and exits 1; a
// hang is caught by the test's timeout.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu_worker_pool.h"

using mlxb::WorkerPool;

namespace {

[[noreturn]] void fail(const char* name, const std::string& why) {
  std::printf("FAIL %s: %s\n", name, why.c_str());
  std::fflush(stdout);
  std::exit(1);
}

// Counts the tasks that start and those still inside fn: none may be once run() returns.
struct Probe {
  std::atomic<int> started{0}, inside{0};
  std::vector<std::atomic<int>> runs;
  explicit Probe(int tasks) : runs(tasks) {}
};

// Waits (up to 5 s) until `flag` is set.
void await(const std::atomic<bool>& flag) {
  for (int i = 0; i < 50000 && !flag.load(); ++i) std::this_thread::sleep_for(std::chrono::microseconds(100));
}

// One call of `tasks` tasks, each running body(i, on_caller); returns what run() threw.
template <typename Body>
std::exception_ptr failing_call(const char* name, int tasks, Body body) {
  auto& pool = WorkerPool::instance();
  Probe probe(tasks);
  std::exception_ptr caught;
  const auto caller = std::this_thread::get_id();
  try {
    pool.run(tasks, [&](int i) {
      probe.started.fetch_add(1);
      probe.inside.fetch_add(1);
      try {
        body(i, std::this_thread::get_id() == caller);
      } catch (...) {
        probe.inside.fetch_sub(1);
        throw;
      }
      probe.inside.fetch_sub(1);
    });
  } catch (...) {
    caught = std::current_exception();
  }
  if (probe.inside.load() != 0) fail(name, std::to_string(probe.inside.load()) + " tasks still running after run() returned");
  if (!caught) fail(name, "run() returned without the task's exception");
  // Tasks stop being handed out: at most the ones in flight when the first threw run after it.
  if (probe.started.load() >= tasks) fail(name, "every one of " + std::to_string(tasks) + " tasks ran after one threw");
  return caught;
}

// A call with no failure: every task runs exactly once, and none after run() returns.
void plain_call(const char* name, int tasks) {
  Probe probe(tasks);
  WorkerPool::instance().run(tasks, [&](int i) {
    probe.inside.fetch_add(1);
    probe.runs[i].fetch_add(1);
    probe.inside.fetch_sub(1);
  });
  if (probe.inside.load() != 0) fail(name, "a task still running after run() returned");
  for (int i = 0; i < tasks; ++i) {
    if (probe.runs[i].load() != 1) fail(name, "task " + std::to_string(i) + " ran " + std::to_string(probe.runs[i].load()) + " times");
  }
}

std::string message_of(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "(not a std::exception)";
  }
}

}  // namespace

int main() {
  auto& pool = WorkerPool::instance();
  if (pool.threads() != 4) fail("threads", "expected 4 threads (MLX_BATCH_CPU_THREADS=4), got " + std::to_string(pool.threads()));

  for (int round = 0; round < 20; ++round) {
    // A worker's task throws: before the fix, std::terminate. The caller's
    // tasks wait for it, so a worker surely takes one (and stay slow, so the
    // caller does not take every task while the exception is on its way).
    std::atomic<bool> thrown{false};
    auto e = failing_call("worker throws", 64, [&](int, bool on_caller) {
      if (on_caller) {
        await(thrown);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      thrown.store(true);
      throw std::bad_alloc();
    });
    try {
      std::rethrow_exception(e);
    } catch (const std::bad_alloc&) {
    } catch (...) {
      fail("worker throws", "not the task's std::bad_alloc: " + message_of(e));
    }
    plain_call("after a worker threw", 64);

    // The caller's own task throws while workers are inside theirs: before
    // the fix, run() returned with workers still running fn (a use after free).
    std::atomic<bool> worker_in{false};
    e = failing_call("caller throws", 64, [&](int, bool on_caller) {
      if (on_caller) {
        await(worker_in);
        throw std::length_error("caller task failed");
      }
      worker_in.store(true);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    });
    if (message_of(e) != "caller task failed") fail("caller throws", "got " + message_of(e));
    plain_call("after the caller threw", 64);

    // Every task throws.
    e = failing_call("all throw", 64, [](int, bool) { throw std::runtime_error("every task"); });
    if (message_of(e) != "every task") fail("all throw", "got " + message_of(e));

    // Not a std::exception (MLX's stream thread catches only those): a std::runtime_error instead.
    e = failing_call("non-standard", 64, [](int i, bool) {
      if (i == 5) throw 42;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    });
    try {
      std::rethrow_exception(e);
    } catch (const std::runtime_error&) {
    } catch (...) {
      fail("non-standard", "not turned into a std::runtime_error");
    }
  }
  std::printf("ok throws\n");

  // One task (run on the caller, no workers involved): the same rules.
  try {
    pool.run(1, [](int) { throw 7; });
    fail("single task", "no exception");
  } catch (const std::runtime_error&) {
  }
  std::printf("ok single task\n");

  // Many calls after the failures: before the fix, a late worker's extra
  // pending_ decrement made some return early or hang.
  for (int i = 0; i < 3000; ++i) plain_call("later calls", 2 + i % 40);
  std::printf("ok later calls\n");
  return 0;
}
