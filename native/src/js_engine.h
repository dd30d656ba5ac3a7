#pragma once
#include <napi.h>

#include <functional>
#include <memory>

#include "engine.h"
#include "engine_thread.h"

namespace mlxb {

// The JS `Engine` class. Each method copies its arguments, posts a task to the
// engine thread and returns a promise; the task's result (plain C++ data) is
// turned into JS values back on the JS thread through a thread-safe function.
class JsEngine : public Napi::ObjectWrap<JsEngine> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit JsEngine(const Napi::CallbackInfo& info);
  ~JsEngine() override;

 public:
  // Runs on the JS thread once the task is done.
  using Builder = std::function<Napi::Value(Napi::Env)>;

 private:
  Napi::Value queue(Napi::Env env, const char* op, std::function<Builder()> work);

  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value AddSequence(const Napi::CallbackInfo& info);
  Napi::Value Prefill(const Napi::CallbackInfo& info);
  Napi::Value PrefillBatch(const Napi::CallbackInfo& info);
  Napi::Value Decode(const Napi::CallbackInfo& info);
  Napi::Value Remove(const Napi::CallbackInfo& info);
  Napi::Value SavePrefix(const Napi::CallbackInfo& info);
  Napi::Value DropPrefix(const Napi::CallbackInfo& info);
  Napi::Value SetMemoryLimits(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value ResetPeakMemory(const Napi::CallbackInfo& info);
  Napi::Value FailNextEval(const Napi::CallbackInfo& info);
  // For tests (js_gguf_values.cpp): one GGUF tensor's float32 values and its MLX-affine repack dequantized.
  Napi::Value GgufTensorValues(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  std::shared_ptr<Engine> engine_ = std::make_shared<Engine>();
  std::unique_ptr<EngineThread> thread_ = std::make_unique<EngineThread>();
  bool closed_ = false;
};

}  // namespace mlxb
