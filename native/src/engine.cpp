#include "engine.h"

#include <algorithm>

#include "layers.h"

namespace mlxb {

namespace {

mx::Device pick_device(const std::string& want) {
  const bool gpu = mx::is_available(mx::Device::gpu);
  if (want == "gpu") {
    if (!gpu) throw std::runtime_error("device 'gpu' requested but this MLX build has no GPU backend");
    return mx::Device::gpu;
  }
  if (want == "cpu") return mx::Device::cpu;
  if (want != "auto") throw std::invalid_argument("unknown device '" + want + "' (auto, cpu, gpu)");
  return gpu ? mx::Device::gpu : mx::Device::cpu;
}

std::string sampled_outside(const char* op, int id, int token, int vocab) {
  return std::string(op) + ": sequence " + std::to_string(id) + " sampled token " + std::to_string(token) +
         ", outside the vocabulary (" + std::to_string(vocab) + ")";
}

std::vector<float> to_host_f32(const mx::array& logits) {
  auto f = mx::astype(logits, mx::float32);
  mx::eval(f);
  const float* p = f.data<float>();
  return std::vector<float>(p, p + f.size());
}

}  // namespace

void Engine::require_model(const char* op) const {
  if (!model_) throw std::runtime_error(std::string(op) + ": no model is loaded");
}

LoadedModel Engine::load(ModelSpec spec, const LoadOptions& options) {
  unload();
  try {
    return load_model(std::move(spec), options);
  } catch (...) {
    // Nothing half-built stays: a later call finds no model, not a model without its batch.
    unload();
    throw;
  }
}

LoadedModel Engine::load_model(ModelSpec spec, const LoadOptions& options) {
  auto device = pick_device(options.device);
  mx::set_default_device(device);
  const auto mode = parse_weight_mode(options.weights, device == mx::Device::gpu);
  spec_ = std::move(spec);
  WeightStore weights(spec_, mode, options.quantized_decode && device == mx::Device::cpu);
  model_ = build_model(spec_, weights);
  device_ = device;
  prefix_grouping_ = options.prefix_grouping;
  min_block_tokens_ = std::max(1, options.min_block_tokens);
  generic_attention_ = options.generic_attention;
  const Linear* output = model_->plain_output_projection();
  // The shortlist covers the product, not a bias after it.
  if (options.greedy_shortlist && device == mx::Device::cpu && output && !output->bias && output->uses_cpu_quant(1)) {
    greedy_head_ = GreedyHead::build(*output->cpu_quant);
  }
  batch_.emplace(model_->num_layers());
  const int rows = weights.embedding_rows();
  input_vocab_ = rows > 0 ? std::min(spec_.vocab_size, rows) : spec_.vocab_size;
  LoadedModel info;
  info.device = device == mx::Device::gpu ? "gpu" : "cpu";
  info.weights = describe(mode, weights.quant_bits());
  info.weights_note = weights.load_note();
  weights.release();
  mx::clear_cache();
  info.parameter_bytes = mx::get_active_memory();
  const size_t dtype_bytes = mx::size_of(weights.compute_dtype());
  info.kv_bytes_per_token = 2ull * spec_.num_layers * spec_.num_kv_heads * spec_.head_dim * dtype_bytes;
  return info;
}

void Engine::unload() {
  greedy_head_.reset();
  prefixes_.clear();
  pending_.clear();
  joining_.clear();
  rows_.clear();
  batch_.reset();
  model_.reset();
  mx::clear_cache();
}

void Engine::add_sequence(int id, const SamplingParams& params, const std::optional<PrefixStart>& prefix, int prompt_tokens) {
  require_model("addSequence");
  auto same = [&](const Row& r) { return r.id == id && !r.leaving; };
  if (pending_.count(id) || std::any_of(rows_.begin(), rows_.end(), same) ||
      std::any_of(joining_.begin(), joining_.end(), [&](const JoiningRows& j) {
        return std::any_of(j.rows.begin(), j.rows.end(), same);
      })) {
    throw std::invalid_argument("addSequence: sequence " + std::to_string(id) + " already exists");
  }
  // The sampler picks only tokens the embedding can take back as input.
  PendingRow pending{Row{id, RowSampler(params, {}, input_vocab_), -1, 0}, KvCache(model_->num_layers())};
  pending.cache.reset_single_row();
  if (prefix) {
    auto it = prefixes_.find(prefix->handle);
    if (it == prefixes_.end()) throw std::invalid_argument("addSequence: no saved prefix " + std::to_string(prefix->handle));
    if (prefix->length < 0 || prefix->length > it->second->length) {
      throw std::invalid_argument("addSequence: prefix " + std::to_string(prefix->handle) + " holds " +
                                  std::to_string(it->second->length) + " tokens, not " + std::to_string(prefix->length));
    }
    pending.cache.reset_from_prefix(it->second, prefix->length, prefix_grouping_ && prefix->length >= min_block_tokens_);
    pending.row.position = prefix->length;
    for (auto t : prefix->tokens) pending.row.sampler.accept(t);
  }
  // No more room than the context allows: a prompt over it fails at the chunk that crosses it.
  if (spec_.context_length > 0) prompt_tokens = std::min(prompt_tokens, spec_.context_length - pending.row.position);
  if (prompt_tokens > 0) pending.cache.reserve(prompt_tokens);
  pending_.emplace(id, std::move(pending));
}

Engine::PendingRow& Engine::pending_row(const char* op, int id, const std::vector<int32_t>& tokens) {
  auto it = pending_.find(id);
  if (it == pending_.end()) throw std::invalid_argument(std::string(op) + ": no prefilling sequence " + std::to_string(id));
  auto& pending = it->second;
  if (tokens.empty()) throw std::invalid_argument(std::string(op) + ": empty token chunk for sequence " + std::to_string(id));
  const int end = pending.row.position + static_cast<int>(tokens.size());
  if (spec_.context_length > 0 && end > spec_.context_length) {
    throw std::invalid_argument(std::string(op) + ": sequence " + std::to_string(id) + " would hold " + std::to_string(end) +
                                " tokens, over the model's context of " + std::to_string(spec_.context_length));
  }
  for (auto t : tokens) {
    if (t < 0 || t >= input_vocab_) {
      throw std::invalid_argument(std::string(op) + ": token id " + std::to_string(t) + " is outside the vocabulary (" +
                                  std::to_string(input_vocab_) + ")");
    }
  }
  return pending;
}

PrefillResult Engine::prefill(int id, const std::vector<int32_t>& tokens, bool last, bool want_logits,
                              const std::vector<int32_t>& first_token_mask, bool save) {
  require_model("prefill");
  use_generic_attention(generic_attention_);
  auto& pending = pending_row("prefill", id, tokens);
  auto input = mx::array(tokens.data(), {1, static_cast<int>(tokens.size())}, mx::int32);
  StepRollback rollback(pending.cache);
  auto logits = model_->forward(input, pending.cache);  // (1, vocab)
  std::vector<mx::array> outputs = pending.cache.state();
  outputs.push_back(logits);
  eval_step(outputs);
  PrefillResult result;
  if (want_logits || last) result.logits = to_host_f32(logits);
  rollback.commit();
  for (auto t : tokens) pending.row.sampler.accept(t);
  pending.row.position += static_cast<int>(tokens.size());

  if (save) result.saved = save_prefix(id);
  if (last) {
    if (prefix_grouping_ && !save && !pending.cache.has_prefix(0) && pending.cache.suffix_length(0) >= min_block_tokens_) {
      pending.cache.freeze();
    }
    auto scratch = result.logits;
    TokenLogprobs logprobs;
    const int token = pending.row.sampler.sample(scratch, first_token_mask, &logprobs);
    // The sampler stays below the limit; were it not to, only this row's call
    // fails, and the row stays prefilling with this chunk cached.
    if (!valid_input(token)) throw std::logic_error(sampled_outside("prefill", id, token, input_vocab_));
    if (pending.row.sampler.wants_logprobs()) result.logprobs = std::move(logprobs);
    pending.row.sampler.accept_generated(token);
    pending.row.next_input = token;
    result.token = token;
    JoiningRows joining{{std::move(pending.row)}, std::move(pending.cache)};
    joining_.push_back(std::move(joining));
    pending_.erase(id);
  }
  if (!want_logits) result.logits.clear();
  return result;
}

std::vector<PrefillResult> Engine::prefill_batch(const std::vector<BatchItem>& items, bool want_logits) {
  require_model("prefillBatch");
  use_generic_attention(generic_attention_);
  if (items.empty()) return {};
  int longest = 0;
  for (const auto& item : items) {
    auto& pending = pending_row("prefillBatch", item.id, item.tokens);
    if (pending.cache.suffix_length(0) != 0) {
      throw std::invalid_argument("prefillBatch: sequence " + std::to_string(item.id) +
                                  " has prompt tokens of its own cached already; prefill it alone");
    }
    longest = std::max(longest, static_cast<int>(item.tokens.size()));
  }
  for (size_t i = 0; i < items.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (items[i].id == items[j].id) throw std::invalid_argument("prefillBatch: sequence " + std::to_string(items[i].id) + " given twice");
    }
  }
  const int B = static_cast<int>(items.size());
  std::vector<KvCache> caches;
  std::vector<int> lengths;
  std::vector<int32_t> input(size_t(B) * longest, 0);  // left-padded with token 0, masked out
  for (int b = 0; b < B; ++b) {
    const auto& tokens = items[b].tokens;
    // A copy (the rows hold no columns of their own yet, so it is cheap):
    // if the step fails, the rows still have their caches.
    caches.push_back(pending_.at(items[b].id).cache);
    lengths.push_back(static_cast<int>(tokens.size()));
    std::copy(tokens.begin(), tokens.end(), input.begin() + size_t(b) * longest + (longest - tokens.size()));
  }
  KvCache batch(model_->num_layers());
  batch.append(std::move(caches));
  batch.pad_next_chunk(lengths, longest);
  auto logits = model_->forward(mx::array(input.data(), {B, longest}, mx::int32), batch);  // (B, vocab)
  auto outputs = batch.state();
  outputs.push_back(logits);
  eval_step(outputs);
  auto host = to_host_f32(logits);
  const size_t V = host.size() / B;

  // Every row's token first, on copies of the samplers: were one invalid (the
  // samplers stay below the limit), the call fails with every row as it was.
  std::vector<PrefillResult> results(B);
  std::vector<RowSampler> samplers;
  samplers.reserve(B);
  for (int b = 0; b < B; ++b) {
    samplers.push_back(pending_.at(items[b].id).row.sampler);
    auto& sampler = samplers.back();
    for (auto t : items[b].tokens) sampler.accept(t);
    std::vector<float> scratch(host.begin() + b * V, host.begin() + (b + 1) * V);
    if (want_logits) results[b].logits = scratch;
    TokenLogprobs logprobs;
    const int token = sampler.sample(scratch, items[b].first_token_mask, &logprobs);
    if (!valid_input(token)) throw std::logic_error(sampled_outside("prefillBatch", items[b].id, token, input_vocab_));
    if (sampler.wants_logprobs()) results[b].logprobs = std::move(logprobs);
    results[b].token = token;
  }
  JoiningRows joining{{}, std::move(batch)};
  for (int b = 0; b < B; ++b) {
    auto& row = pending_.at(items[b].id).row;
    row.sampler = std::move(samplers[b]);
    row.position += lengths[b];
    row.sampler.accept_generated(*results[b].token);
    row.next_input = *results[b].token;
    joining.rows.push_back(std::move(row));
    pending_.erase(items[b].id);
  }
  joining_.push_back(std::move(joining));
  return results;
}

DecodeResult Engine::decode(const DecodeRequest& request) {
  require_model("decode");
  use_generic_attention(generic_attention_);
  DecodeResult result;
  settle_rows();
  // A forced input is the caller's: one outside the vocabulary refuses the step, as a bad argument.
  for (const auto& row : rows_) {
    auto forced = request.inputs.find(row.id);
    if (forced != request.inputs.end() && !valid_input(forced->second)) {
      throw std::invalid_argument("decode: input token " + std::to_string(forced->second) + " of sequence " +
                                  std::to_string(row.id) + " is outside the vocabulary");
    }
  }
  // A row whose own last token cannot be fed (the samplers stay below the
  // limit, so not one today) fails alone: it leaves, the others step on.
  for (auto& row : rows_) {
    if (!request.inputs.count(row.id) && !valid_input(row.next_input)) {
      row.leaving = true;
      result.failed.push_back({row.id, "decode: the last token " + std::to_string(row.next_input) + " of sequence " +
                                           std::to_string(row.id) + " is outside the vocabulary (" +
                                           std::to_string(input_vocab_) + ")"});
    }
  }
  if (!result.failed.empty()) drop_leaving();
  const int B = static_cast<int>(rows_.size());
  if (B == 0) return result;

  std::vector<int32_t> inputs(B);
  for (int b = 0; b < B; ++b) {
    auto forced = request.inputs.find(rows_[b].id);
    inputs[b] = forced != request.inputs.end() ? forced->second : rows_[b].next_input;
  }
  StepRollback rollback(*batch_);
  auto hidden = model_->forward_hidden(mx::array(inputs.data(), {B, 1}, mx::int32), *batch_);  // (B, hidden)

  // Rows with penalties, filters or logprobs are sampled on the host, from the
  // logits; greedy rows with masks too, unless the shortlist picks them.
  const bool all_greedy = std::all_of(rows_.begin(), rows_.end(), [](const Row& r) { return r.sampler.greedy_only(); });
  const bool any_logprobs = std::any_of(rows_.begin(), rows_.end(), [](const Row& r) { return r.sampler.wants_logprobs(); });
  const bool shortlist = greedy_head_ && all_greedy && !request.want_logits;
  const bool host_sampling = !shortlist && (request.want_logits || !request.masks.empty() || !all_greedy);
  std::optional<mx::array> logits;
  if (!shortlist) logits = model_->logits(hidden);  // (B, vocab)
  const int V = logits ? logits->shape(1) : greedy_head_->vocab();
  // Picks stay below the tokens the embedding takes back (the samplers' own limit too).
  const int limit = std::min(V, input_vocab_);
  std::vector<int32_t> sampled(B);
  std::vector<float> host;
  if (host_sampling) {
    auto state = batch_->state();
    state.push_back(*logits);
    eval_step(state);
    host = to_host_f32(*logits);
  } else {
    // Greedy: only B ints cross to the host.
    std::vector<std::vector<int32_t>> masks(B);
    for (int b = 0; b < B && shortlist; ++b) {
      if (auto m = request.masks.find(rows_[b].id); m != request.masks.end()) masks[b] = m->second;
    }
    auto picks = shortlist ? greedy_head_->picks(hidden, std::move(masks), limit)
                 : greedy_picks(limit < V ? mx::slice(*logits, {0, 0}, {B, limit}) : *logits);
    auto state = batch_->state();
    state.push_back(picks);
    eval_step(state);
    std::copy(picks.data<int32_t>(), picks.data<int32_t>() + B, sampled.begin());
  }
  rollback.commit();
  if (request.want_logits) result.logits = host;

  std::vector<int> failed_rows;  // indices b, in order
  for (int b = 0; b < B; ++b) {
    auto& row = rows_[b];
    std::optional<TokenLogprobs> row_logprobs;
    if (host_sampling) {
      auto mask = request.masks.find(row.id);
      std::span<const int32_t> bits;
      if (mask != request.masks.end()) bits = mask->second;
      TokenLogprobs logprobs;
      sampled[b] = row.sampler.sample(std::span<float>(host.data() + size_t(b) * V, V), bits, &logprobs);
      if (row.sampler.wants_logprobs()) row_logprobs = std::move(logprobs);
    }
    if (!valid_input(sampled[b])) {
      // Only this row fails (its token is neither returned nor fed): it leaves at the next step.
      row.leaving = true;
      result.failed.push_back({row.id, sampled_outside("decode", row.id, sampled[b], input_vocab_)});
      failed_rows.push_back(b);
      continue;
    }
    row.sampler.accept_generated(sampled[b]);
    row.next_input = sampled[b];
    row.position += 1;
    result.ids.push_back(row.id);
    result.tokens.push_back(sampled[b]);
    if (any_logprobs) result.logprobs.push_back(std::move(row_logprobs));
  }
  // The logits stay aligned with ids.
  for (auto it = failed_rows.rbegin(); it != failed_rows.rend() && !result.logits.empty(); ++it) {
    result.logits.erase(result.logits.begin() + size_t(*it) * V, result.logits.begin() + size_t(*it + 1) * V);
  }
  result.vocab = V;
  return result;
}

SavedPrefix Engine::save_prefix(int id) {
  auto it = pending_.find(id);
  if (it == pending_.end()) throw std::invalid_argument("savePrefix: no prefilling sequence " + std::to_string(id));
  auto& cache = it->second.cache;
  const bool own_block = prefix_grouping_ && cache.prefix_length(0) + cache.suffix_length(0) >= min_block_tokens_;
  auto block = own_block ? cache.freeze() : cache.snapshot();
  SavedPrefix saved{next_prefix_handle_++, block->length, block->nbytes()};
  prefixes_.emplace(saved.handle, std::move(block));
  return saved;
}

void Engine::drop_prefix(int handle) { prefixes_.erase(handle); }

void Engine::set_memory_limits(size_t memory_limit, size_t cache_limit) {
  if (memory_limit > 0) mx::set_memory_limit(memory_limit);
  mx::set_cache_limit(cache_limit);
}

void Engine::eval_step(const std::vector<mx::array>& outputs) {
  if (fail_next_eval_) {
    fail_next_eval_ = false;
    throw std::runtime_error("evaluation failed (injected by failNextEval)");
  }
  mx::eval(outputs);
}

void Engine::merge_joining() {
  if (joining_.empty()) return;
  std::vector<KvCache> caches;
  for (auto& j : joining_) {
    caches.push_back(std::move(j.cache));
    for (auto& r : j.rows) rows_.push_back(std::move(r));
  }
  joining_.clear();
  batch_->append(std::move(caches));
  mx::eval(batch_->state());
}

void Engine::settle_rows() {
  // Leavers first: joining first would copy the leaving rows into the new
  // batch only to gather them out again (13 rows joining as 12 left: 237 ms).
  drop_leaving();
  merge_joining();
  drop_leaving();  // rows removed while they were joining; none most steps
}

void Engine::remove(int id) {
  if (pending_.erase(id)) return;
  // Rows finishing at different steps of one decode leave together, in one
  // gather at the next step, not one whole-cache copy each.
  for (auto& r : rows_) {
    if (r.id == id) r.leaving = true;
  }
  for (auto& j : joining_) {
    for (auto& r : j.rows) {
      if (r.id == id) r.leaving = true;
    }
  }
}

void Engine::drop_leaving() {
  std::vector<int> keep;
  for (int b = 0; b < static_cast<int>(rows_.size()); ++b) {
    if (!rows_[b].leaving) keep.push_back(b);
  }
  if (keep.size() == rows_.size()) return;
  std::erase_if(rows_, [](const Row& r) { return r.leaving; });
  batch_->keep_rows(keep);
  mx::eval(batch_->state());
}

EngineStats Engine::stats() {
  settle_rows();
  EngineStats s;
  s.decoding_rows = static_cast<int>(rows_.size());
  s.prefilling_rows = static_cast<int>(pending_.size());
  // Every block once: saved ones as prefix bytes, the rest with the rows' KV.
  std::vector<const KvPrefix*> counted;
  for (const auto& [h, block] : prefixes_) {
    if (std::find(counted.begin(), counted.end(), block.get()) != counted.end()) continue;
    counted.push_back(block.get());
    s.prefix_bytes += block->nbytes();
  }
  auto add_cache = [&](const KvCache& cache) {
    s.kv_bytes += cache.nbytes();
    for (const auto& block : cache.prefix_blocks()) {
      if (std::find(counted.begin(), counted.end(), block.get()) != counted.end()) continue;
      counted.push_back(block.get());
      s.kv_bytes += block->nbytes();
    }
  };
  if (batch_) add_cache(*batch_);
  for (const auto& [id, p] : pending_) add_cache(p.cache);
  s.prefixes = static_cast<int>(prefixes_.size());
  s.active_memory = mx::get_active_memory();
  s.peak_memory = mx::get_peak_memory();
  return s;
}

void Engine::reset_peak_memory() { mx::reset_peak_memory(); }

}  // namespace mlxb
