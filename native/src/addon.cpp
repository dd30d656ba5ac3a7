// Registration only: the Engine class lives in js_engine.cpp.
#include <napi.h>

#include "js_engine.h"

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Engine", mlxb::JsEngine::Define(env));
  return exports;
}

NODE_API_MODULE(mlx_batch, Init)
