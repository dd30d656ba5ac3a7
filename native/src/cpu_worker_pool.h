#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mlxb {

// Splits one CPU kernel call (cpu_qmatmul, cpu_attention) over the machine's
// cores. MLX runs CPU ops one at a time on its stream thread, which joins in as
// one of the workers. MLX_BATCH_CPU_THREADS sets the number of threads.
class WorkerPool {
 public:
  static WorkerPool& instance() {
    // Never destroyed: workers blocked at process exit must not outlive their mutex.
    static WorkerPool* pool = new WorkerPool();
    return *pool;
  }

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(0) .. fn(tasks - 1) over the pool and returns once every one that
  // started is done. A task that throws, on any thread, stops the call from
  // handing out more tasks; once the tasks already running are done, the
  // first exception is rethrown here, on the calling thread (MLX's stream
  // thread turns it into an error of mx::eval). Exceptions not derived from
  // std::exception come back as std::runtime_error: MLX catches only those.
  void run(int tasks, const std::function<void(int)>& fn) {
    if (tasks <= 1 || workers_.empty()) {
      try {
        for (int i = 0; i < tasks; ++i) fn(i);
      } catch (const std::exception&) {
        throw;
      } catch (...) {
        std::rethrow_exception(standard(std::current_exception()));
      }
      return;
    }
    std::lock_guard one_job(run_mutex_);
    bool sleeping;
    {
      std::lock_guard lock(mutex_);
      fn_ = &fn;
      tasks_ = tasks;
      error_ = nullptr;
      next_.store(0);
      pending_.store(static_cast<int>(workers_.size()));
      generation_.fetch_add(1);
      sleeping = sleepers_ > 0;
    }
    if (sleeping) wake_.notify_all();
    work();  // never throws: a failure is kept in error_
    // Always waited for, failure or not: no worker may still be inside fn (or
    // still owe this call its pending_ count) once run() returns. The
    // workers' last tasks are short: wait for them without sleeping.
    for (int spins = 0; pending_.load() != 0; ++spins) pause(spins);
    std::exception_ptr error;
    {
      std::lock_guard lock(mutex_);
      fn_ = nullptr;
      error = std::exchange(error_, nullptr);
    }
    if (error) std::rethrow_exception(error);
  }

 private:
  WorkerPool() {
    const char* env = std::getenv("MLX_BATCH_CPU_THREADS");
    const int n = (env ? std::atoi(env) : std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 8)) - 1;
    for (int i = 0; i < n; ++i) workers_.emplace_back([this] { loop(); });
  }

  // How long an idle worker polls for the next call before it sleeps: a
  // decode step's calls come a few to a few hundred microseconds apart.
  static constexpr auto SPIN = std::chrono::microseconds(300);

  // A CPU hint while polling, and now and then a yield, so a thread that
  // shares the core (the engine's, building the next step) is not starved.
  static void pause(int spins) {
#if defined(__x86_64__)
    _mm_pause();
#endif
    if (spins % 64 == 63) std::this_thread::yield();
  }

  // A std::exception as it is, anything else as a std::runtime_error.
  static std::exception_ptr standard(std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception&) {
      return e;
    } catch (...) {
      return std::make_exception_ptr(std::runtime_error("a CPU kernel task threw an exception of unknown type"));
    }
  }

  // Takes the call's tasks until none are left. Never throws: the first
  // failure is kept for run() to rethrow, and no further task is handed out.
  void work() noexcept {
    for (int i; (i = next_.fetch_add(1)) < tasks_;) {
      try {
        (*fn_)(i);
      } catch (...) {
        std::exception_ptr e;
        try {
          e = standard(std::current_exception());
        } catch (...) {
          e = std::current_exception();  // no memory for the wrapper: keep that failure instead
        }
        {
          std::lock_guard lock(mutex_);
          if (!error_) error_ = std::move(e);  // the first failure wins
        }
        next_.store(tasks_);  // hand out no more tasks of this call
      }
    }
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + SPIN;
      for (int spins = 1; generation_.load() == seen; ++spins) {
        if (spins % 256 == 0 && std::chrono::steady_clock::now() > until) {
          std::unique_lock lock(mutex_);
          ++sleepers_;
          wake_.wait(lock, [&] { return generation_.load() != seen; });
          --sleepers_;
          break;
        }
        pause(spins);
      }
      {
        std::lock_guard lock(mutex_);  // the call's fields were written under it
        seen = generation_.load();
      }
      work();
      pending_.fetch_sub(1);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_;
  const std::function<void(int)>* fn_ = nullptr;
  int tasks_ = 0;
  std::atomic<int> next_{0};
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  int sleepers_ = 0;  // workers waiting on wake_, under mutex_
  std::exception_ptr error_;  // the call's first failure, under mutex_; rethrown by run()
};

}  // namespace mlxb
