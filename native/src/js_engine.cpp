#include "js_engine.h"

#include "js_convert.h"

namespace mlxb {

Napi::Function JsEngine::Define(Napi::Env env) {
  return DefineClass(env, "Engine",
                     {
                         InstanceMethod<&JsEngine::Load>("load"),
                         InstanceMethod<&JsEngine::AddSequence>("addSequence"),
                         InstanceMethod<&JsEngine::Prefill>("prefill"),
                         InstanceMethod<&JsEngine::PrefillBatch>("prefillBatch"),
                         InstanceMethod<&JsEngine::Decode>("decode"),
                         InstanceMethod<&JsEngine::Remove>("remove"),
                         InstanceMethod<&JsEngine::SavePrefix>("savePrefix"),
                         InstanceMethod<&JsEngine::DropPrefix>("dropPrefix"),
                         InstanceMethod<&JsEngine::SetMemoryLimits>("setMemoryLimits"),
                         InstanceMethod<&JsEngine::Stats>("stats"),
                         InstanceMethod<&JsEngine::ResetPeakMemory>("resetPeakMemory"),
                         InstanceMethod<&JsEngine::FailNextEval>("failNextEval"),
                         InstanceMethod<&JsEngine::GgufTensorValues>("ggufTensorValues"),
                         InstanceMethod<&JsEngine::Close>("close"),
                     });
}

JsEngine::JsEngine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsEngine>(info) {}

JsEngine::~JsEngine() {
  // Let queued work finish on its own thread; the engine is freed there too.
  // A destructor must not throw (it runs in a GC finalizer).
  try {
    if (thread_) {
      // Moved into the task, not copied: the last reference (and the model's
      // teardown) then goes on the engine thread, not on this one after stop().
      thread_->post([engine = std::move(engine_)]() mutable { engine.reset(); });
      thread_->stop();
    }
  } catch (...) {
  }
}

namespace {

// What settles one call's promise; lives on the JS thread only.
struct Settlement {
  Napi::Promise::Deferred deferred;
  Napi::ObjectReference caller;
  std::string op;
};

// The error captured at the JS call, given the engine's message; its stack
// keeps the caller's frames (none when Error.stackTraceLimit is 0).
Napi::Value caller_error(Napi::Object err, const std::string& op, const std::string& error) {
  const bool tagged = error.rfind(op, 0) == 0;
  const std::string message = tagged ? error : op + ": " + error;
  err.Set("message", message);
  auto stack = err.Get("stack");
  if (stack.IsString()) {
    auto s = stack.As<Napi::String>().Utf8Value();
    const auto frames = s.find('\n');
    err.Set("stack", "Error: " + message + (frames == std::string::npos ? "" : s.substr(frames)));
  }
  return err;
}

void settle(Napi::Env env, Settlement& settlement, const JsEngine::Builder& builder, const std::string& error) {
  // No C++ exception may leave this callback: N-API would terminate the process.
  std::string failure = error;
  if (failure.empty()) {
    try {
      settlement.deferred.Resolve(builder ? builder(env) : env.Undefined());
      return;
    } catch (const Napi::Error& e) {
      settlement.deferred.Reject(e.Value());
      return;
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "unknown native error";
    }
  }
  try {
    settlement.deferred.Reject(caller_error(settlement.caller.Value(), settlement.op, failure));
  } catch (...) {
    settlement.deferred.Reject(Napi::Error::New(env, settlement.op + ": " + failure).Value());
  }
}

}  // namespace

Napi::Value JsEngine::queue(Napi::Env env, const char* op, std::function<Builder()> work) {
  if (closed_) {
    auto deferred = Napi::Promise::Deferred::New(env);
    deferred.Reject(Napi::Error::New(env, std::string(op) + ": the engine is closed").Value());
    return deferred.Promise();
  }
  // The promise and the error captured now (so a rejection points at the JS
  // caller, not at the event loop) are JS references: created here and
  // deleted in the settle callback, both on the JS thread. The engine thread
  // only carries the pointer; were its copies the last owners, they would be
  // deleted there (napi_delete_reference off the JS thread).
  auto owned = std::make_unique<Settlement>(Settlement{Napi::Promise::Deferred::New(env),
                                                        Napi::Persistent(Napi::Error::New(env, "").Value()), op});
  auto promise = owned->deferred.Promise();
  auto done = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), op, 0, 1);
  thread_->post([work = std::move(work), settlement = owned.get(), done]() mutable {
    Builder builder;
    std::string error;
    try {
      builder = work();
    } catch (const std::exception& e) {
      error = e.what();
    } catch (...) {
      error = "unknown native error";
    }
    // If the call fails the env is being torn down (or the callback could
    // not be allocated): the settlement is left to leak rather than freed off
    // the JS thread. The function is released either way, or it would keep
    // the event loop alive.
    try {
      done.BlockingCall([settlement, builder = std::move(builder), error = std::move(error)](Napi::Env env, Napi::Function) {
        std::unique_ptr<Settlement> owned(settlement);
        settle(env, *owned, builder, error);
      });
    } catch (...) {
    }
    done.Release();
  });
  owned.release();  // the settle callback owns it now
  return promise;
}

Napi::Value JsEngine::Load(const Napi::CallbackInfo& info) {
  if (!info[0].IsObject()) throw Napi::TypeError::New(info.Env(), "load(spec, options): spec must be an object");
  auto spec = model_spec_from_js(info[0].As<Napi::Object>());
  auto options = load_options_from_js(info[1]);
  auto engine = engine_;
  return queue(info.Env(), "load", [engine, spec = std::move(spec), options]() -> Builder {
    auto loaded = engine->load(spec, options);
    return [loaded](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("device", loaded.device);
      o.Set("weights", loaded.weights);
      o.Set("parameterBytes", static_cast<double>(loaded.parameter_bytes));
      o.Set("kvBytesPerToken", static_cast<double>(loaded.kv_bytes_per_token));
      if (!loaded.weights_note.empty()) o.Set("weightsNote", loaded.weights_note);
      return o;
    };
  });
}

Napi::Value JsEngine::AddSequence(const Napi::CallbackInfo& info) {
  const int id = int32_from_js(info[0], "addSequence(id, sampling): id");
  auto params = sampling_from_js(info[1]);
  auto prefix = prefix_start_from_js(info[2]);
  int prompt_tokens = 0;
  if (info.Length() > 3 && !info[3].IsUndefined()) {
    prompt_tokens = int32_from_js(info[3], "addSequence(id, sampling, prefix, promptTokens): promptTokens");
    if (prompt_tokens < 0) {
      throw Napi::TypeError::New(info.Env(), "addSequence(id, sampling, prefix, promptTokens): promptTokens must be a count of tokens");
    }
  }
  auto engine = engine_;
  return queue(info.Env(), "addSequence", [engine, id, params, prefix, prompt_tokens]() -> Builder {
    engine->add_sequence(id, params, prefix, prompt_tokens);
    return nullptr;
  });
}

Napi::Value JsEngine::Prefill(const Napi::CallbackInfo& info) {
  const int id = int32_from_js(info[0], "prefill(id, tokens, last): id");
  auto tokens = tokens_from_js(info[1], "prefill tokens");
  const bool last = info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
  const bool want_logits = info[3].IsBoolean() && info[3].As<Napi::Boolean>().Value();
  std::vector<int32_t> mask;
  if (!info[4].IsUndefined() && !info[4].IsNull()) mask = tokens_from_js(info[4], "prefill first-token mask");
  const bool save = info[5].IsBoolean() && info[5].As<Napi::Boolean>().Value();
  auto engine = engine_;
  return queue(info.Env(), "prefill", [engine, id, tokens = std::move(tokens), last, want_logits,
                                       mask = std::move(mask), save]() -> Builder {
    auto r = engine->prefill(id, tokens, last, want_logits, mask, save);
    return [r = std::move(r)](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      if (r.token) o.Set("token", *r.token);
      if (r.logprobs) o.Set("logprobs", logprobs_to_js(env, *r.logprobs));
      if (!r.logits.empty()) o.Set("logits", float32_to_js(env, r.logits));
      if (r.saved) {
        auto saved = Napi::Object::New(env);
        saved.Set("handle", r.saved->handle);
        saved.Set("length", r.saved->length);
        saved.Set("bytes", static_cast<double>(r.saved->bytes));
        o.Set("saved", saved);
      }
      return o;
    };
  });
}

Napi::Value JsEngine::PrefillBatch(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "prefillBatch(items): items must be an array");
  auto list = info[0].As<Napi::Array>();
  std::vector<Engine::BatchItem> items;
  for (uint32_t i = 0; i < list.Length(); ++i) {
    auto v = list.Get(i);
    if (!v.IsObject() || !v.As<Napi::Object>().Get("id").IsNumber()) {
      throw Napi::TypeError::New(env, "prefillBatch: item " + std::to_string(i) + " needs a numeric id and tokens");
    }
    auto o = v.As<Napi::Object>();
    Engine::BatchItem item{int32_from_js(o.Get("id"), "prefillBatch: item id"), tokens_from_js(o.Get("tokens"), "prefillBatch tokens"), {}};
    auto mask = o.Get("firstTokenMask");
    if (!mask.IsUndefined() && !mask.IsNull()) item.first_token_mask = tokens_from_js(mask, "prefillBatch first-token mask");
    items.push_back(std::move(item));
  }
  const bool want_logits = info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  auto engine = engine_;
  return queue(env, "prefillBatch", [engine, items = std::move(items), want_logits]() -> Builder {
    auto results = engine->prefill_batch(items, want_logits);
    return [results = std::move(results)](Napi::Env env) -> Napi::Value {
      auto out = Napi::Array::New(env, results.size());
      for (size_t i = 0; i < results.size(); ++i) {
        auto o = Napi::Object::New(env);
        if (results[i].token) o.Set("token", *results[i].token);
        if (results[i].logprobs) o.Set("logprobs", logprobs_to_js(env, *results[i].logprobs));
        if (!results[i].logits.empty()) o.Set("logits", float32_to_js(env, results[i].logits));
        out.Set(static_cast<uint32_t>(i), o);
      }
      return out;
    };
  });
}

Napi::Value JsEngine::Decode(const Napi::CallbackInfo& info) {
  auto request = decode_request_from_js(info[0]);
  auto engine = engine_;
  return queue(info.Env(), "decode", [engine, request = std::move(request)]() -> Builder {
    auto r = engine->decode(request);
    return [r = std::move(r)](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("ids", int32_to_js(env, r.ids));
      o.Set("tokens", int32_to_js(env, r.tokens));
      if (!r.logprobs.empty()) {
        auto lps = Napi::Array::New(env, r.logprobs.size());
        for (size_t i = 0; i < r.logprobs.size(); ++i) {
          lps.Set(static_cast<uint32_t>(i), r.logprobs[i] ? Napi::Value(logprobs_to_js(env, *r.logprobs[i])) : env.Null());
        }
        o.Set("logprobs", lps);
      }
      if (!r.logits.empty()) o.Set("logits", float32_to_js(env, r.logits));
      if (!r.failed.empty()) {
        auto failed = Napi::Array::New(env, r.failed.size());
        for (size_t i = 0; i < r.failed.size(); ++i) {
          auto f = Napi::Object::New(env);
          f.Set("id", r.failed[i].id);
          f.Set("error", r.failed[i].error);
          failed.Set(static_cast<uint32_t>(i), f);
        }
        o.Set("failed", failed);
      }
      return o;
    };
  });
}

Napi::Value JsEngine::Remove(const Napi::CallbackInfo& info) {
  const int id = int32_from_js(info[0], "remove(id): id");
  auto engine = engine_;
  return queue(info.Env(), "remove", [engine, id]() -> Builder {
    engine->remove(id);
    return nullptr;
  });
}

Napi::Value JsEngine::SavePrefix(const Napi::CallbackInfo& info) {
  const int id = int32_from_js(info[0], "savePrefix(id): id");
  auto engine = engine_;
  return queue(info.Env(), "savePrefix", [engine, id]() -> Builder {
    auto saved = engine->save_prefix(id);
    return [saved](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("handle", saved.handle);
      o.Set("length", saved.length);
      o.Set("bytes", static_cast<double>(saved.bytes));
      return o;
    };
  });
}

Napi::Value JsEngine::DropPrefix(const Napi::CallbackInfo& info) {
  const int handle = int32_from_js(info[0], "dropPrefix(handle): handle");
  auto engine = engine_;
  return queue(info.Env(), "dropPrefix", [engine, handle]() -> Builder {
    engine->drop_prefix(handle);
    return nullptr;
  });
}

Napi::Value JsEngine::SetMemoryLimits(const Napi::CallbackInfo& info) {
  const auto memory = bytes_from_js(info[0], "setMemoryLimits(memoryLimit, cacheLimit): memoryLimit");
  const auto cache = bytes_from_js(info[1], "setMemoryLimits(memoryLimit, cacheLimit): cacheLimit");
  auto engine = engine_;
  return queue(info.Env(), "setMemoryLimits", [engine, memory, cache]() -> Builder {
    engine->set_memory_limits(memory, cache);
    return nullptr;
  });
}

Napi::Value JsEngine::Stats(const Napi::CallbackInfo& info) {
  auto engine = engine_;
  return queue(info.Env(), "stats", [engine]() -> Builder {
    auto s = engine->stats();
    return [s](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("decodingRows", s.decoding_rows);
      o.Set("prefillingRows", s.prefilling_rows);
      o.Set("kvBytes", static_cast<double>(s.kv_bytes));
      o.Set("activeMemory", static_cast<double>(s.active_memory));
      o.Set("peakMemory", static_cast<double>(s.peak_memory));
      o.Set("prefixBytes", static_cast<double>(s.prefix_bytes));
      o.Set("prefixes", s.prefixes);
      return o;
    };
  });
}

Napi::Value JsEngine::ResetPeakMemory(const Napi::CallbackInfo& info) {
  auto engine = engine_;
  return queue(info.Env(), "resetPeakMemory", [engine]() -> Builder {
    engine->reset_peak_memory();
    return nullptr;
  });
}

Napi::Value JsEngine::FailNextEval(const Napi::CallbackInfo& info) {
  auto engine = engine_;
  return queue(info.Env(), "failNextEval", [engine]() -> Builder {
    engine->fail_next_eval();
    return nullptr;
  });
}

Napi::Value JsEngine::Close(const Napi::CallbackInfo& info) {
  auto engine = engine_;
  auto result = queue(info.Env(), "close", [engine]() -> Builder {
    engine->unload();
    return nullptr;
  });
  closed_ = true;
  return result;
}

}  // namespace mlxb
