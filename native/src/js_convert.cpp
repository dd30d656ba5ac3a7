#include "js_convert.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

namespace mlxb {

namespace {

Napi::Value field(const Napi::Object& obj, const char* key) { return obj.Get(key); }

double number(const Napi::Object& obj, const char* key) {
  auto v = field(obj, key);
  if (!v.IsNumber()) throw Napi::TypeError::New(obj.Env(), std::string("model spec: '") + key + "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

std::optional<double> optional_number(const Napi::Object& obj, const char* key) {
  auto v = field(obj, key);
  if (v.IsUndefined() || v.IsNull()) return std::nullopt;
  if (!v.IsNumber()) throw Napi::TypeError::New(obj.Env(), std::string("'") + key + "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

// A number as a message shows it: 1e+12, -1, 1.5, nan.
std::string shown(double d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", d);
  return buf;
}

// `d` as an int when it is a whole number in [lo, hi], else a RangeError
// naming `what` (a double outside int's range has no defined conversion).
int whole_in_range(Napi::Env env, double d, const std::string& what, int lo = std::numeric_limits<int>::min(),
                   int hi = std::numeric_limits<int>::max()) {
  if (!(d >= lo && d <= hi && d == std::trunc(d))) {
    throw Napi::RangeError::New(env, what + " must be a whole number in " + std::to_string(lo) + ".." + std::to_string(hi) +
                                         ", got " + shown(d));
  }
  return static_cast<int>(d);
}

// A model spec's integer field.
int spec_int(const Napi::Object& obj, const char* key) {
  return whole_in_range(obj.Env(), number(obj, key), std::string("model spec: '") + key + "'");
}

std::optional<int> optional_spec_int(const Napi::Object& obj, const char* key) {
  auto v = optional_number(obj, key);
  if (!v) return std::nullopt;
  return whole_in_range(obj.Env(), *v, std::string("model spec: '") + key + "'");
}

std::string string(const Napi::Object& obj, const char* key) {
  auto v = field(obj, key);
  if (!v.IsString()) throw Napi::TypeError::New(obj.Env(), std::string("model spec: '") + key + "' must be a string");
  return v.As<Napi::String>().Utf8Value();
}

bool boolean(const Napi::Object& obj, const char* key) {
  auto v = field(obj, key);
  return v.IsBoolean() && v.As<Napi::Boolean>().Value();
}

std::vector<float> floats(const Napi::Value& v) {
  std::vector<float> out;
  if (!v.IsArray()) return out;
  auto arr = v.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); ++i) out.push_back(arr.Get(i).As<Napi::Number>().FloatValue());
  return out;
}

// A non-negative whole number that a double holds exactly.
uint64_t count(const Napi::Value& v, const std::string& what) {
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= 9007199254740992.0 && d == static_cast<double>(static_cast<uint64_t>(d)))) {
    throw Napi::TypeError::New(v.Env(), "gguf table: " + what + " must be a non-negative integer");
  }
  return static_cast<uint64_t>(d);
}

}  // namespace

GgufTable gguf_table_from_js(const Napi::Value& value) {
  GgufTable table;
  if (!value.IsObject()) throw Napi::TypeError::New(value.Env(), "gguf table must be an object");
  auto obj = value.As<Napi::Object>();
  table.data_offset = count(obj.Get("dataOffset"), "dataOffset");
  auto tensors = obj.Get("tensors");
  if (!tensors.IsArray()) throw Napi::TypeError::New(value.Env(), "gguf table: 'tensors' must be an array");
  auto arr = tensors.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    auto e = arr.Get(i);
    if (!e.IsObject() || !e.As<Napi::Object>().Get("name").IsString() || !e.As<Napi::Object>().Get("shape").IsArray()) {
      throw Napi::TypeError::New(value.Env(), "gguf table: tensor " + std::to_string(i) + " needs a name and a shape");
    }
    auto t = e.As<Napi::Object>();
    GgufTensorInfo info;
    info.name = t.Get("name").As<Napi::String>().Utf8Value();
    const uint64_t type = count(t.Get("dtype"), info.name + ".dtype");
    info.type = type > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(type);
    info.offset = count(t.Get("offset"), info.name + ".offset");
    auto shape = t.Get("shape").As<Napi::Array>();
    if (shape.Length() > 8) throw Napi::TypeError::New(value.Env(), "gguf table: " + info.name + " has too many dimensions");
    for (uint32_t k = 0; k < shape.Length(); ++k) {
      const uint64_t d = count(shape.Get(k), info.name + ".shape");
      info.shape.push_back(d > INT64_MAX ? INT64_MAX : static_cast<int64_t>(d));
    }
    table.tensors.push_back(std::move(info));
  }
  return table;
}

ModelSpec model_spec_from_js(const Napi::Object& obj) {
  ModelSpec s;
  s.path = string(obj, "path");
  s.format = string(obj, "format");
  auto files = field(obj, "weightFiles");
  if (!files.IsArray()) throw Napi::TypeError::New(obj.Env(), "model spec: 'weightFiles' must be an array");
  auto arr = files.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); ++i) s.weight_files.push_back(arr.Get(i).As<Napi::String>().Utf8Value());
  if (s.format == "gguf") s.gguf = gguf_table_from_js(field(obj, "gguf"));
  s.architecture = string(obj, "architecture");
  s.hidden_size = spec_int(obj, "hiddenSize");
  s.intermediate_size = spec_int(obj, "intermediateSize");
  s.num_layers = spec_int(obj, "numLayers");
  s.num_heads = spec_int(obj, "numHeads");
  s.num_kv_heads = spec_int(obj, "numKvHeads");
  s.head_dim = spec_int(obj, "headDim");
  s.vocab_size = spec_int(obj, "vocabSize");
  s.rms_norm_eps = static_cast<float>(number(obj, "rmsNormEps"));
  s.rope_theta = static_cast<float>(number(obj, "ropeTheta"));
  s.rope_traditional = boolean(obj, "ropeTraditional");
  if (auto rs = field(obj, "ropeScaling"); rs.IsObject()) {
    auto o = rs.As<Napi::Object>();
    RopeScaling r;
    r.type = string(o, "type");
    r.factor = static_cast<float>(optional_number(o, "factor").value_or(1.0));
    r.low_freq_factor = static_cast<float>(optional_number(o, "lowFreqFactor").value_or(1.0));
    r.high_freq_factor = static_cast<float>(optional_number(o, "highFreqFactor").value_or(4.0));
    r.original_max_position_embeddings = optional_spec_int(o, "originalMaxPositionEmbeddings").value_or(0);
    r.short_factor = floats(o.Get("shortFactor"));
    r.long_factor = floats(o.Get("longFactor"));
    s.rope_scaling = r;
  }
  s.context_length = spec_int(obj, "contextLength");
  s.tie_word_embeddings = boolean(obj, "tieWordEmbeddings");
  s.norm_weight_offset = static_cast<float>(optional_number(obj, "normWeightOffset").value_or(0));
  if (auto act = field(obj, "hiddenAct"); act.IsString()) s.hidden_act = act.As<Napi::String>().Utf8Value();
  s.scale_embeddings = boolean(obj, "scaleEmbeddings");
  if (auto v = optional_number(obj, "queryPreAttnScalar")) s.query_pre_attn_scalar = static_cast<float>(*v);
  if (auto v = optional_number(obj, "attnLogitSoftcapping")) s.attn_logit_softcapping = static_cast<float>(*v);
  if (auto v = optional_number(obj, "finalLogitSoftcapping")) s.final_logit_softcapping = static_cast<float>(*v);
  if (auto v = optional_spec_int(obj, "slidingWindow")) s.sliding_window = *v;
  if (auto lt = field(obj, "layerTypes"); lt.IsArray()) {
    auto a = lt.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) s.layer_types.push_back(a.Get(i).As<Napi::String>().Utf8Value());
  }
  if (auto v = optional_number(obj, "ropeLocalTheta")) s.rope_local_theta = static_cast<float>(*v);
  s.attention_bias = boolean(obj, "attentionBias");
  if (auto q = field(obj, "quantization"); q.IsObject()) {
    auto o = q.As<Napi::Object>();
    s.quant_group_size = spec_int(o, "groupSize");
    s.quant_bits = spec_int(o, "bits");
  }
  if (s.num_layers <= 0 || s.hidden_size <= 0 || s.num_heads <= 0 || s.num_kv_heads <= 0 || s.head_dim <= 0 ||
      s.vocab_size <= 0 || s.weight_files.empty()) {
    throw Napi::TypeError::New(obj.Env(), "model spec for " + s.path + " has empty or non-positive dimensions");
  }
  return s;
}

LoadOptions load_options_from_js(const Napi::Value& value) {
  LoadOptions o;
  if (!value.IsObject()) return o;
  auto obj = value.As<Napi::Object>();
  if (auto w = obj.Get("weights"); w.IsString()) o.weights = w.As<Napi::String>().Utf8Value();
  if (auto d = obj.Get("device"); d.IsString()) o.device = d.As<Napi::String>().Utf8Value();
  if (auto g = obj.Get("prefixGrouping"); g.IsBoolean()) o.prefix_grouping = g.As<Napi::Boolean>().Value();
  if (auto m = obj.Get("minBlockTokens"); m.IsNumber()) o.min_block_tokens = int32_from_js(m, "load options: minBlockTokens");
  if (auto g = obj.Get("genericAttention"); g.IsBoolean()) o.generic_attention = g.As<Napi::Boolean>().Value();
  if (auto q = obj.Get("quantizedDecode"); q.IsBoolean()) o.quantized_decode = q.As<Napi::Boolean>().Value();
  if (auto g = obj.Get("greedyShortlist"); g.IsBoolean()) o.greedy_shortlist = g.As<Napi::Boolean>().Value();
  return o;
}

SamplingParams sampling_from_js(const Napi::Value& value) {
  SamplingParams p;
  if (!value.IsObject()) return p;
  auto obj = value.As<Napi::Object>();
  p.temperature = static_cast<float>(optional_number(obj, "temperature").value_or(0));
  p.top_p = static_cast<float>(optional_number(obj, "topP").value_or(1));
  auto bad = [&](const std::string& what) { throw Napi::RangeError::New(value.Env(), "sampling: " + what); };
  const auto env = value.Env();
  p.top_k = whole_in_range(env, optional_number(obj, "topK").value_or(0), "sampling: topK", 0);
  p.min_p = static_cast<float>(optional_number(obj, "minP").value_or(0));
  p.repetition_penalty = static_cast<float>(optional_number(obj, "repetitionPenalty").value_or(1));
  // Negative: no look-back, as 0.
  p.repetition_context_size =
      whole_in_range(env, optional_number(obj, "repetitionContextSize").value_or(20), "sampling: repetitionContextSize");
  p.presence_penalty = static_cast<float>(optional_number(obj, "presencePenalty").value_or(0));
  p.frequency_penalty = static_cast<float>(optional_number(obj, "frequencyPenalty").value_or(0));
  // Any uint64 seed a double holds exactly; the sampler's generator takes a uint64.
  const double seed = optional_number(obj, "seed").value_or(0);
  if (!(seed >= 0 && seed < 18446744073709551616.0 && seed == std::trunc(seed))) {
    bad("seed must be a whole number in 0..2^64-1, got " + shown(seed));
  }
  p.seed = static_cast<uint64_t>(seed);
  p.logprobs = whole_in_range(env, optional_number(obj, "logprobs").value_or(-1), "sampling: logprobs");
  if (!(p.temperature >= 0)) bad("temperature must be >= 0, got " + std::to_string(p.temperature));
  if (!(p.top_p > 0 && p.top_p <= 1)) bad("topP must be in (0, 1], got " + std::to_string(p.top_p));
  if (!(p.min_p >= 0 && p.min_p <= 1)) bad("minP must be in [0, 1], got " + std::to_string(p.min_p));
  if (!(p.repetition_penalty > 0)) bad("repetitionPenalty must be > 0, got " + std::to_string(p.repetition_penalty));
  if (!(p.presence_penalty >= -2 && p.presence_penalty <= 2)) bad("presencePenalty must be in [-2, 2], got " + std::to_string(p.presence_penalty));
  if (!(p.frequency_penalty >= -2 && p.frequency_penalty <= 2)) bad("frequencyPenalty must be in [-2, 2], got " + std::to_string(p.frequency_penalty));
  if (p.logprobs < -1 || p.logprobs > 20) bad("logprobs must be -1 (off) or 0..20, got " + std::to_string(p.logprobs));
  return p;
}

int32_t int32_from_js(const Napi::Value& value, const std::string& what) {
  const double d = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : std::numeric_limits<double>::quiet_NaN();
  if (!(d >= std::numeric_limits<int32_t>::min() && d <= std::numeric_limits<int32_t>::max() && d == std::trunc(d))) {
    throw Napi::TypeError::New(value.Env(), what + " must be a whole number in int32 range");
  }
  return static_cast<int32_t>(d);
}

size_t bytes_from_js(const Napi::Value& value, const std::string& what) {
  const double d = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= 9007199254740992.0)) throw Napi::TypeError::New(value.Env(), what + " must be a non-negative byte count");
  return static_cast<size_t>(d);
}

std::vector<int32_t> tokens_from_js(const Napi::Value& value, const char* what) {
  if (value.IsTypedArray() && value.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
    auto a = value.As<Napi::Int32Array>();
    return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
  }
  if (value.IsArray()) {
    auto a = value.As<Napi::Array>();
    std::vector<int32_t> out;
    // Grown as elements check out: a sparse array's length alone must not allocate gigabytes.
    for (uint32_t i = 0; i < a.Length(); ++i) out.push_back(int32_from_js(a.Get(i), std::string(what) + " element " + std::to_string(i)));
    return out;
  }
  throw Napi::TypeError::New(value.Env(), std::string(what) + " must be an Int32Array or an array of token ids");
}

std::optional<PrefixStart> prefix_start_from_js(const Napi::Value& value) {
  if (!value.IsObject()) return std::nullopt;
  auto obj = value.As<Napi::Object>();
  PrefixStart p;
  p.handle = int32_from_js(obj.Get("handle"), "prefix handle");
  p.length = int32_from_js(obj.Get("length"), "prefix length");
  if (auto t = obj.Get("tokens"); !t.IsUndefined()) p.tokens = tokens_from_js(t, "prefix tokens");
  return p;
}

DecodeRequest decode_request_from_js(const Napi::Value& value) {
  DecodeRequest r;
  if (!value.IsObject()) return r;
  auto obj = value.As<Napi::Object>();
  r.want_logits = obj.Get("wantLogits").IsBoolean() && obj.Get("wantLogits").As<Napi::Boolean>().Value();
  if (auto inputs = obj.Get("inputs"); inputs.IsArray()) {
    auto a = inputs.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      if (!a.Get(i).IsObject()) throw Napi::TypeError::New(value.Env(), "decode: inputs[" + std::to_string(i) + "] must be {id, token}");
      auto e = a.Get(i).As<Napi::Object>();
      r.inputs[int32_from_js(e.Get("id"), "decode: inputs[].id")] = int32_from_js(e.Get("token"), "decode: inputs[].token");
    }
  }
  if (auto masks = obj.Get("masks"); masks.IsArray()) {
    auto a = masks.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      if (!a.Get(i).IsObject()) throw Napi::TypeError::New(value.Env(), "decode: masks[" + std::to_string(i) + "] must be {id, bitmask}");
      auto e = a.Get(i).As<Napi::Object>();
      r.masks[int32_from_js(e.Get("id"), "decode: masks[].id")] = tokens_from_js(e.Get("bitmask"), "mask bitmask");
    }
  }
  return r;
}

Napi::Float32Array float32_to_js(Napi::Env env, const std::vector<float>& values) {
  auto out = Napi::Float32Array::New(env, values.size());
  if (!values.empty()) std::memcpy(out.Data(), values.data(), values.size() * sizeof(float));
  return out;
}

Napi::Int32Array int32_to_js(Napi::Env env, const std::vector<int32_t>& values) {
  auto out = Napi::Int32Array::New(env, values.size());
  if (!values.empty()) std::memcpy(out.Data(), values.data(), values.size() * sizeof(int32_t));
  return out;
}

Napi::Object logprobs_to_js(Napi::Env env, const TokenLogprobs& lp) {
  auto o = Napi::Object::New(env);
  o.Set("logprob", lp.logprob);
  std::vector<int32_t> ids;
  std::vector<float> values;
  for (const auto& [id, v] : lp.top) {
    ids.push_back(id);
    values.push_back(v);
  }
  o.Set("topIds", int32_to_js(env, ids));
  o.Set("topLogprobs", float32_to_js(env, values));
  return o;
}

}  // namespace mlxb
