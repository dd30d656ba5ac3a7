#pragma once
#include <napi.h>

#include "engine.h"
#include "model_spec.h"
#include "sampling.h"

namespace mlxb {

// JS values are copied into plain structs here, on the JS thread, so no
// Napi::Value ever reaches the engine thread. Bad shapes throw Napi::TypeError.
ModelSpec model_spec_from_js(const Napi::Object& obj);
// { dataOffset, tensors: [{ name, dtype, shape, offset }] } as gguf-metadata.ts reads it.
GgufTable gguf_table_from_js(const Napi::Value& value);
LoadOptions load_options_from_js(const Napi::Value& value);
SamplingParams sampling_from_js(const Napi::Value& value);
DecodeRequest decode_request_from_js(const Napi::Value& value);
std::optional<PrefixStart> prefix_start_from_js(const Napi::Value& value);
std::vector<int32_t> tokens_from_js(const Napi::Value& value, const char* what);
// A whole number in int32 range, or a TypeError naming `what` (NaN, 1.5 and 2^32 + 5 are not ids).
int32_t int32_from_js(const Napi::Value& value, const std::string& what);
// A finite, non-negative byte count, or a TypeError naming `what`.
size_t bytes_from_js(const Napi::Value& value, const std::string& what);

// Native memory is copied into JS-owned buffers (Electron forbids external ones).
Napi::Float32Array float32_to_js(Napi::Env env, const std::vector<float>& values);
Napi::Int32Array int32_to_js(Napi::Env env, const std::vector<int32_t>& values);
// { logprob, topIds: Int32Array, topLogprobs: Float32Array }
Napi::Object logprobs_to_js(Napi::Env env, const TokenLogprobs& lp);

}  // namespace mlxb
