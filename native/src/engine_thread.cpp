#include "engine_thread.h"

namespace mlxb {

EngineThread::EngineThread() : thread_([this] { run(); }) {}

EngineThread::~EngineThread() { stop(); }

void EngineThread::post(std::function<void()> task) {
  {
    std::lock_guard lock(mutex_);
    tasks_.push_back(std::move(task));
  }
  wake_.notify_one();
}

void EngineThread::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void EngineThread::run() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stopping, and nothing left to run
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    // Tasks catch their own exceptions; this is the last guard, since one
    // escaping a thread's function ends the process.
    try {
      task();
    } catch (...) {
    }
  }
}

}  // namespace mlxb
