#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

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

  void run(int tasks, const std::function<void(int)>& fn) {
    if (tasks <= 1 || workers_.empty()) {
      for (int i = 0; i < tasks; ++i) fn(i);
      return;
    }
    std::lock_guard one_job(run_mutex_);
    {
      std::lock_guard lock(mutex_);
      fn_ = &fn;
      tasks_ = tasks;
      next_.store(0);
      pending_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    fn_ = nullptr;
  }

 private:
  WorkerPool() {
    const char* env = std::getenv("MLX_BATCH_CPU_THREADS");
    const int n = (env ? std::atoi(env) : std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 8)) - 1;
    for (int i = 0; i < n; ++i) workers_.emplace_back([this] { loop(); });
  }

  void work() {
    for (int i; (i = next_.fetch_add(1)) < tasks_;) (*fn_)(i);
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
      }
      work();
      std::lock_guard lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* fn_ = nullptr;
  int tasks_ = 0;
  std::atomic<int> next_{0};
  int pending_ = 0;
  uint64_t generation_ = 0;
};

}  // namespace mlxb
