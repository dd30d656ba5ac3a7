// Test-only: reads one tensor of a GGUF file the way a load does, so tests can
// compare it with the `gguf` Python package's dequantization.
#include "ggml_types.h"
#include "gguf_arrays.h"
#include "js_convert.h"
#include "js_engine.h"

namespace mlxb {

// ggufTensorValues(path, table, name) -> { values: Float32Array, affine?: Float32Array, bits?: number }
// `affine`: the repack the GPU keeps, dequantized by MLX on the CPU.
Napi::Value JsEngine::GgufTensorValues(const Napi::CallbackInfo& info) {
  if (!info[0].IsString() || !info[2].IsString()) {
    throw Napi::TypeError::New(info.Env(), "ggufTensorValues(path, table, name): path and name must be strings");
  }
  auto path = info[0].As<Napi::String>().Utf8Value();
  auto table = gguf_table_from_js(info[1]);
  auto name = info[2].As<Napi::String>().Utf8Value();
  return queue(info.Env(), "ggufTensorValues", [path, table, name]() -> Builder {
    GgufFile file(path, table);
    const auto* t = file.find(name);
    if (!t) throw std::runtime_error("[gguf] " + path + ": no tensor '" + name + "'");
    auto values = gguf_dequantize(file, *t);
    std::vector<float> affine;
    int bits = t->shape.size() == 2 ? ggml_affine_bits(t->type) : 0;
    if (bits) {
      auto q = gguf_affine(file, *t);
      auto w = mx::dequantize(q.packed, q.scales, q.biases, 32, bits, "affine", std::nullopt, mx::float32, mx::Device::cpu);
      mx::eval(w);
      affine.assign(w.data<float>(), w.data<float>() + w.size());
    }
    return [values = std::move(values), affine = std::move(affine), bits](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("values", float32_to_js(env, values));
      if (bits) {
        o.Set("affine", float32_to_js(env, affine));
        o.Set("bits", bits);
      }
      return o;
    };
  });
}

}  // namespace mlxb
