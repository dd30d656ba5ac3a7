#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace mlxb {

// The one thread that makes every MLX call. Since MLX 0.31.2 streams are
// thread-local: a graph built on one thread cannot be evaluated on another, so
// libuv's pool threads (AsyncWorker) are the wrong place for MLX work.
class EngineThread {
 public:
  EngineThread();
  ~EngineThread();
  EngineThread(const EngineThread&) = delete;
  EngineThread& operator=(const EngineThread&) = delete;

  // Tasks run in the order posted.
  void post(std::function<void()> task);
  // Runs the tasks already posted, then joins.
  void stop();

 private:
  void run();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace mlxb
