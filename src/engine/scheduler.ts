// Continuous batching over one native engine.
//
// Each step: one sampled token for every decoding row (one batched forward
// pass), then admission of queued requests in arrival order while the KV budget
// and the batch cap allow, then prompt prefill in chunks up to a per-step token
// budget, so running rows keep streaming while a long prompt is read. A row
// that finishes or is cancelled leaves the batch at once. Token deltas of a
// step go out together.
import { randomInt } from 'node:crypto';

import type {
  FinishReason, GenerateParams, GenerateResult, MetricsSnapshot, PrefillProgress, TokenDelta, TokenLogprob,
} from './protocol.js';
import type { NativeEngine, SamplingParams, TokenLogprobs } from './native.js';
import { MIN_SHARED_TOKENS, PrefixCache, commonPrefixLength, type PrefixMatch } from './prefix-cache.js';
import { StopTextBuffer } from './stop-text.js';
import type { Tokenizer } from './tokenizer.js';

export interface SchedulerOptions {
  maxBatch: number;
  prefillTokensPerStep: number;
  kvBudgetBytes: number;
  kvBytesPerToken: number;
  prefixCacheBytes: number;
  contextLength: number;
  vocabSize: number;
  /** Most requests waiting for a batch slot; more are refused (errorType 'overloaded'). Default: no limit. */
  maxQueued?: number;
}

/** What constrained decoding needs from a compiled JSON schema, per request. */
export interface TokenMatcher {
  bitmask(): Int32Array;
  accept(token: number): boolean;
  /** The output is whole: only end-of-sequence may follow, so the row can end now. */
  isComplete?(): boolean;
  dispose(): void;
}
export type SchemaCompiler = (schema: Record<string, unknown>) => Promise<TokenMatcher>;

/** Greedy settings for direct engine callers; a request without a seed gets a random one (see prepare). */
export const DEFAULT_SAMPLING: SamplingParams = {
  temperature: 0, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, repetitionContextSize: 20,
  presencePenalty: 0, frequencyPenalty: 0, seed: 0, logprobs: -1,
};

/**
 * The shortest span of KV kept as a block that rows read in place
 * (the engine's default minBlockTokens, native/src/engine.h): a prompt with no shared prefix at
 * least this long becomes a block of its own; a shorter match is copied into
 * the row that starts from it.
 */
const MIN_BLOCK_TOKENS = 256;
/** Prompts shorter than this are never saved for reuse. */
const MIN_SAVED_PROMPT = 64;
/** The batch cache grows in steps of 32 tokens below 1,024, then 256 (native/src/cache.cpp). */
function kvCapacity(tokens: number): number {
  const step = tokens < 1024 ? 32 : 256;
  return Math.ceil(tokens / step) * step;
}
/**
 * Most prompt tokens per engine call: a step's budget is read in calls of this
 * size. On the CPU 256-token chunks read a 3,552-token prompt faster than
 * 512-token ones (125-130 against 91-106 tok/s when measured): their score
 * matrices stay in cache.
 */
export const PREFILL_CALL_TOKENS = 256;
/** Prompts with at most this many tokens left to read are prefilled together, in one forward pass. */
const BATCHED_PREFILL_TOKENS = 256;
const RATE_WINDOW_MS = 10_000;
/** How long a request that wakes an idle scheduler waits for others sent with it. */
const GATHER_FROM_IDLE_MS = 10;
/** Rendered chat prompts whose token ids are kept: n choices of one request share them. */
const RECENT_PROMPTS = 8;
/**
 * A prompt longer than this many characters per context token is first
 * tokenized in part (that many characters a token): a part that alone is over
 * the context refuses it without tokenizing the rest. Only a text over the
 * context can be refused so; one that fits is tokenized whole, as before.
 */
const PROBE_CHARS_PER_TOKEN = 8;

/**
 * Tokens done over the last `windowMs`. Samples older than that are dropped
 * as new ones arrive, so the memory held is one window's worth whether or not
 * anyone reads the rates.
 */
export class RateWindow {
  private readonly samples: Array<{ at: number; decode: number; prefill: number }> = [];

  constructor(
    private readonly windowMs = RATE_WINDOW_MS,
    private readonly now: () => number = () => performance.now(),
  ) {}

  get size(): number {
    return this.samples.length;
  }

  add(decode: number, prefill: number): void {
    const at = this.now();
    this.samples.push({ at, decode, prefill });
    this.dropOlderThan(at - this.windowMs);
  }

  /** Tokens per second since the oldest sample in the window (over 1 s when there is none). */
  rates(): { decode: number; prefill: number } {
    const now = this.now();
    this.dropOlderThan(now - this.windowMs);
    const span = this.samples.length > 0 ? Math.max(1, now - this.samples[0].at) / 1000 : 1;
    let decode = 0;
    let prefill = 0;
    for (const s of this.samples) {
      decode += s.decode;
      prefill += s.prefill;
    }
    return { decode: decode / span, prefill: prefill / span };
  }

  private dropOlderThan(cutoff: number): void {
    let stale = 0;
    while (stale < this.samples.length && this.samples[stale].at < cutoff) stale++;
    if (stale > 0) this.samples.splice(0, stale);
  }
}

enum JobState { Queued, Prefilling, Decoding, Done }

/** A request that can never run as given; `code` and `param` as OpenAI would name them. */
class InvalidRequest extends Error {
  constructor(message: string, readonly code?: string, readonly param?: string) {
    super(message);
  }
}

/**
 * The KV a row holds: a prefix block it may share with other rows (counted
 * once per key), plus its own padded suffix (question and answer).
 */
interface KvReservation {
  block?: string;
  blockTokens: number;
  suffixTokens: number;
}

interface Job {
  params: GenerateParams;
  kv: KvReservation;
  state: JobState;
  prompt: Int32Array;
  sampling: SamplingParams;
  maxTokens: number;
  seq: number;
  prefilled: number;
  cached: number;
  generated: number;
  decoder: { push(id: number): string; flush(): string };
  text: StopTextBuffer;
  matcher?: TokenMatcher;
  cancelReason?: string;
  savesPrefix: boolean;
  enqueuedAt: number;
  /** When it left the queue for the batch (timings.queuedMs ends here). */
  admittedAt?: number;
  firstTokenAt?: number;
  /** Set when the request asked for logprobs: one per generated token (EOS left out). */
  logprobs?: TokenLogprob[];
  resolve: (r: GenerateResult) => void;
}

let nextSeq = 1;

export class Scheduler {
  private readonly queue: Job[] = [];
  private readonly active: Job[] = []; // prefilling and decoding, in admission order
  private readonly byId = new Map<string, Job>();
  /** The token ids of the last RECENT_PROMPTS prompts, rendered chats and raw ones (encodeOnce). */
  private readonly recentPrompts = new Map<string, number[]>();
  /** Requests being tokenized (and their schema compiled), with a cancel's reason once one comes. */
  private readonly preparing = new Map<string, string | undefined>();
  private readonly prefixes: PrefixCache;
  private pendingDeltas = new Map<string, TokenDelta>();
  private looping = false;
  private closed = false;
  private readonly started = performance.now();
  private readonly rates = new RateWindow();
  private readonly counts: MetricsSnapshot['requests'] = { stop: 0, length: 0, cancelled: 0, error: 0 };
  private totals = { promptTokens: 0, cachedPromptTokens: 0, prefillTokens: 0, generatedTokens: 0, decodeTokens: 0, decodeSeconds: 0, prefillSeconds: 0 };
  private engineStats = { kvBytes: 0, activeMemory: 0, peakMemory: 0 };

  constructor(
    private readonly engine: NativeEngine,
    private readonly tokenizer: Tokenizer,
    private readonly options: SchedulerOptions,
    private readonly onDeltas: (deltas: TokenDelta[]) => void,
    private readonly compileSchema?: SchemaCompiler,
    /** Where each prompt being read stands, once per step (so a long read is not taken for a hang). */
    private readonly onPrefillProgress?: (progress: PrefillProgress[]) => void,
  ) {
    this.prefixes = new PrefixCache(engine, options.prefixCacheBytes);
  }

  /** Resolves when the request ends: done, cancelled or error, never rejects. */
  async submit(params: GenerateParams): Promise<GenerateResult> {
    const enqueuedAt = performance.now();
    if (this.closed) return this.failed(params, 'the engine is shutting down', 'server', enqueuedAt);
    if (this.byId.has(params.requestId) || this.preparing.has(params.requestId)) {
      return this.failed(params, `request id '${params.requestId}' is already in flight`, 'invalid_request', enqueuedAt);
    }
    // Checked before tokenizing too, so a flood costs no tokenizer time.
    if (this.queueFull()) return this.failed(params, this.queueFullMessage(), 'overloaded', enqueuedAt);
    let job: Job;
    this.preparing.set(params.requestId, undefined);
    try {
      job = await this.prepare(params, enqueuedAt);
    } catch (e) {
      this.preparing.delete(params.requestId);
      if (e instanceof InvalidRequest) return this.failed(params, e.message, 'invalid_request', enqueuedAt, e.code, e.param);
      return this.failed(params, (e as Error).message, 'server', enqueuedAt);
    }
    // A cancel that came while the prompt was tokenized or its schema compiled:
    // the job ends cancelled at the next step, before it reads its prompt.
    const early = this.preparing.get(params.requestId);
    this.preparing.delete(params.requestId);
    if (early !== undefined) job.cancelReason = early;
    if (this.queueFull()) {
      job.matcher?.dispose();
      return this.failed(params, this.queueFullMessage(), 'overloaded', enqueuedAt);
    }
    return new Promise<GenerateResult>((resolve) => {
      job.resolve = resolve;
      this.byId.set(params.requestId, job);
      this.queue.push(job);
      // Accepted: a caller holding its answer's status (the HTTP server) may now commit to 200.
      this.onPrefillProgress?.([{ requestId: params.requestId, promptTokens: job.prompt.length, prefilledTokens: 0, cachedTokens: 0, queued: true }]);
      this.wake();
    });
  }

  /** Ends a request within one step and frees its KV memory. */
  cancel(requestId: string, reason = 'cancelled by the caller'): void {
    const job = this.byId.get(requestId);
    if (!job && this.preparing.has(requestId)) this.preparing.set(requestId, reason);
    if (!job || job.state === JobState.Done) return;
    job.cancelReason = reason;
    this.wake();
  }

  metrics(): MetricsSnapshot {
    const now = performance.now();
    const rates = this.rates.rates();
    return {
      requests: { ...this.counts },
      promptTokens: this.totals.promptTokens,
      cachedPromptTokens: this.totals.cachedPromptTokens,
      prefillTokens: this.totals.prefillTokens,
      generatedTokens: this.totals.generatedTokens,
      running: this.active.filter((j) => j.state === JobState.Decoding).length,
      prefilling: this.active.filter((j) => j.state === JobState.Prefilling).length,
      queued: this.queue.length,
      kvBytes: this.engineStats.kvBytes,
      kvBudgetBytes: this.options.kvBudgetBytes,
      prefixCacheBytes: this.prefixes.bytes,
      decodeTokensPerSecond: rates.decode,
      prefillTokensPerSecond: rates.prefill,
      decodeSeconds: this.totals.decodeSeconds,
      prefillSeconds: this.totals.prefillSeconds,
      decodeTokens: this.totals.decodeTokens,
      activeMemoryBytes: this.engineStats.activeMemory,
      peakMemoryBytes: this.engineStats.peakMemory,
      uptimeSeconds: (now - this.started) / 1000,
    };
  }

  async resetPeakMemory(): Promise<void> {
    await this.engine.resetPeakMemory();
    this.engineStats.peakMemory = 0;
  }

  /** Ends every request with an error and frees what they hold. */
  async close(reason = 'the engine is shutting down'): Promise<void> {
    this.closed = true;
    for (const job of [...this.queue, ...this.active]) await this.finish(job, 'error', reason);
    await this.prefixes.clear();
    this.flushDeltas();
  }

  // -------------------------------------------------------------------------

  /** Requests queued beyond the batch's free slots: those the next step admits are not waiting. */
  private waiting(): number {
    return Math.max(0, this.queue.length - Math.max(0, this.options.maxBatch - this.active.length));
  }

  /** Whether one more request would wait beyond the bound. */
  private queueFull(): boolean {
    const free = Math.max(0, this.options.maxBatch - this.active.length);
    return this.options.maxQueued !== undefined && this.queue.length + 1 - free > this.options.maxQueued;
  }

  private queueFullMessage(): string {
    return `the request queue is full (${this.waiting()} requests waiting for ${this.options.maxBatch} batch slots); try again shortly`;
  }

  private failed(
    params: GenerateParams, error: string, errorType: NonNullable<GenerateResult['errorType']>, since: number,
    errorCode?: string, errorParam?: string,
  ): GenerateResult {
    this.counts.error++;
    return {
      requestId: params.requestId, text: '', finishReason: 'error', error, errorType,
      ...(errorCode !== undefined ? { errorCode } : {}), ...(errorParam !== undefined ? { errorParam } : {}),
      promptTokens: 0, cachedPromptTokens: 0, generatedTokens: 0,
      timings: { queuedMs: performance.now() - since, firstTokenMs: 0, totalMs: performance.now() - since },
    };
  }

  /**
   * Token ids of a rendered chat prompt. The n choices of one HTTP request (and
   * a client's retries) send the same prompt as separate requests: the last few
   * prompts' ids are kept, so each is tokenized once.
   */
  private encodeOnce(key: string, encode: () => number[]): number[] {
    const hit = this.recentPrompts.get(key);
    if (hit) {
      this.recentPrompts.delete(key);
      this.recentPrompts.set(key, hit);
      return [...hit];
    }
    const ids = encode();
    this.recentPrompts.set(key, ids);
    while (this.recentPrompts.size > RECENT_PROMPTS) this.recentPrompts.delete(this.recentPrompts.keys().next().value as string);
    return [...ids];
  }

  private async prepare(params: GenerateParams, enqueuedAt: number): Promise<Job> {
    const { contextLength, kvBudgetBytes, kvBytesPerToken } = this.options;
    let maxTokens = params.maxTokens;
    if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new InvalidRequest(`maxTokens must be a whole number >= 1 (got ${maxTokens})`);
    // No seed given: draw one, or every sampled request would repeat the same text.
    const sampling: SamplingParams = { ...DEFAULT_SAMPLING, seed: randomInt(2 ** 32), ...definedOnly(params.sampling ?? {}) };
    checkSampling(sampling);
    if (params.stop !== undefined && (!Array.isArray(params.stop) || params.stop.some((s) => typeof s !== 'string'))) {
      throw new InvalidRequest('stop must be an array of strings');
    }
    const chatRequest = params.messages !== undefined && params.messages.length > 0;
    const promptParam = chatRequest ? 'messages' : 'prompt';
    // Cheap before tokenizing: a text too long for the context whatever its
    // tokens are is refused without spending the tokenizer's time on it.
    const chars = chatRequest
      ? params.messages!.reduce((n, m) => n + (typeof m.content === 'string' ? m.content.length : 0), 0)
      : (typeof params.prompt === 'string' ? params.prompt.length : 0) + (typeof params.suffix === 'string' ? params.suffix.length : 0);
    const fewestTokens = Math.ceil(chars / this.tokenizer.longestTokenChars);
    if (fewestTokens >= contextLength) {
      throw new InvalidRequest(`the prompt has ${chars} characters, at least ${fewestTokens} tokens (no token spells more than ` +
        `${this.tokenizer.longestTokenChars} characters): with one token of answer that is over the model's context of ${contextLength} tokens`,
      'context_length_exceeded', promptParam);
    }
    // A long text is probed first: tokenizing all of a text many times the
    // context holds the engine (every stream) for seconds. The probe's tokens,
    // less one for the word it may cut, are tokens the whole text has too.
    if (chars > PROBE_CHARS_PER_TOKEN * contextLength) {
      // The text as the model will read it (a template may drop some), with
      // special-token text taken as one token: never more tokens than the real encoding.
      const text = chatRequest ? this.tokenizer.applyChatTemplate(params.messages!, { addGenerationPrompt: true }) : params.prompt ?? '';
      const probe = text.slice(0, PROBE_CHARS_PER_TOKEN * contextLength);
      const atLeast = this.tokenizer.encode(probe, { addSpecialTokens: false }).length - 1;
      if (atLeast >= contextLength) {
        throw new InvalidRequest(`the prompt has ${chars} characters, at least ${atLeast} tokens in its first ${probe.length}: ` +
          `over the model's context of ${contextLength} tokens`, 'context_length_exceeded', promptParam);
      }
    }
    let ids: number[];
    if (chatRequest) {
      // Keyed by the messages, not the rendered text: two message lists can render alike and encode apart.
      const messages = params.messages!;
      ids = this.encodeOnce(JSON.stringify(['chat', messages]), () => this.tokenizer.encodeChat(messages, { addGenerationPrompt: true }));
    } else if (typeof params.prompt === 'string') {
      // The n choices of one completion come as n requests: the prompt is tokenized once.
      const { prompt, suffix } = params;
      ids = this.encodeOnce(JSON.stringify(['prompt', prompt, suffix ?? null]),
        () => (suffix !== undefined ? this.fillInTheMiddle(prompt, suffix) : this.tokenizer.encode(prompt, { addSpecialTokens: true })));
    } else {
      throw new InvalidRequest('a request needs messages or a prompt', 'missing_required_parameter', promptParam);
    }
    if (ids.length === 0) throw new InvalidRequest('the prompt is empty (0 tokens)', 'invalid_value', promptParam);
    if (ids.length >= contextLength) {
      throw new InvalidRequest(`the prompt has ${ids.length} tokens and the model's context is ${contextLength} tokens: ` +
        'no room is left for an answer', 'context_length_exceeded', promptParam);
    }
    // What does not fit is cut: the answer ends with finishReason 'length' at the context's end.
    maxTokens = Math.min(maxTokens, contextLength - ids.length);
    const alone = this.kvEstimate([{ blockTokens: 0, suffixTokens: ids.length + maxTokens }]);
    if (alone > kvBudgetBytes) {
      throw new InvalidRequest(`prompt (${ids.length} tokens) + maxTokens (${maxTokens}) needs about ${mib(alone)} of KV cache ` +
        `(${kvBytesPerToken} bytes per token), over the KV budget of ${mib(kvBudgetBytes)}: lower maxTokens or raise the budget`);
    }
    let matcher: TokenMatcher | undefined;
    if (params.jsonSchema !== undefined) {
      if (!this.compileSchema) throw new InvalidRequest('constrained JSON output is not available in this engine');
      try {
        matcher = await this.compileSchema(params.jsonSchema);
      } catch (e) {
        throw new InvalidRequest((e as Error).message);
      }
    }
    return {
      params, kv: { blockTokens: 0, suffixTokens: 0 }, state: JobState.Queued, prompt: Int32Array.from(ids), sampling, maxTokens, seq: 0, prefilled: 0,
      cached: 0, generated: 0, decoder: this.tokenizer.createStreamDecoder({ skipSpecialTokens: true }),
      text: new StopTextBuffer(params.stop ?? []), matcher, savesPrefix: false, enqueuedAt, resolve: () => undefined,
      ...((sampling.logprobs ?? -1) >= 0 ? { logprobs: [] } : {}),
    };
  }

  /** Prefix-suffix-middle order, as StarCoder, SmolLM and Qwen coders were trained; no BOS. */
  private fillInTheMiddle(prefix: string, suffix: string): number[] {
    const fim = this.tokenizer.fimTokens();
    if (!fim) {
      throw new InvalidRequest("'suffix' (fill-in-the-middle) is not supported by this model: its tokenizer has no " +
        'fill-in-the-middle tokens (<fim_prefix>, <fim_suffix>, <fim_middle> or the <|fim_...|> spelling)', 'unsupported_parameter', 'suffix');
    }
    // The code around the gap is text: a "<fim_middle>" written in it is not the marker.
    const text = (t: string) => this.tokenizer.encode(t, { addSpecialTokens: false, literal: [[0, t.length]] });
    return [fim.prefix, ...text(prefix), fim.suffix, ...text(suffix), fim.middle];
  }

  /** A sampled token's logprobs with its text and bytes, and those of its alternatives. */
  private logprobEntry(token: number, lp: TokenLogprobs): TokenLogprob {
    const spell = (id: number, logprob: number) => ({ token: this.tokenizer.decode([id]), logprob, bytes: this.tokenizer.tokenBytes(id) });
    return { ...spell(token, lp.logprob), top: Array.from(lp.topIds, (id, k) => spell(id, lp.topLogprobs[k])) };
  }

  /**
   * Upper bound of the KV these rows hold: each prefix block once, however many
   * rows read it, plus the suffixes, which left padding makes rows x longest.
   */
  private kvEstimate(rows: KvReservation[]): number {
    if (rows.length === 0) return 0;
    const blocks = new Map<string, number>();
    for (const r of rows) if (r.block) blocks.set(r.block, Math.max(blocks.get(r.block) ?? 0, r.blockTokens));
    const shared = [...blocks.values()].reduce((a, b) => a + b, 0);
    const longest = kvCapacity(Math.max(...rows.map((r) => r.suffixTokens)) + 1);
    return (shared + rows.length * longest) * this.options.kvBytesPerToken;
  }

  /** What a job will hold once admitted, started from `match` or not (mirrors the engine's choices). */
  private reservation(job: Job, match: PrefixMatch | undefined): KvReservation {
    const n = job.prompt.length;
    if (match && match.length >= MIN_BLOCK_TOKENS) {
      return { block: `prefix:${match.entry.handle}`, blockTokens: match.entry.length, suffixTokens: n - match.length + job.maxTokens };
    }
    if (n >= MIN_BLOCK_TOKENS) return { block: `own:${job.params.requestId}`, blockTokens: n, suffixTokens: job.maxTokens };
    return { blockTokens: 0, suffixTokens: n + job.maxTokens };
  }

  /** Bytes of KV the running rows reserve: each shared prefix counted once. */
  reservedKvBytes(): number {
    return this.kvEstimate(this.active.map((j) => j.kv));
  }

  private wake(): void {
    if (this.looping) return;
    this.looping = true;
    void (async () => {
      // From idle, wait a moment: requests sent together (N questions about
      // one file) can arrive in separate reads, and should all be queued when
      // the first is admitted, which is when whether to save its prompt for
      // the others is decided. One I/O turn was not always enough.
      await new Promise<void>((resolve) => setTimeout(resolve, GATHER_FROM_IDLE_MS));
      try {
        while (this.queue.length > 0 || this.active.length > 0) await this.step();
      } catch (e) {
        // An engine call failed outside a single request's scope: fail what is running.
        const message = `engine error: ${(e as Error).message}`;
        for (const job of [...this.active]) await this.finish(job, 'error', message).catch(() => undefined);
        this.flushDeltas();
      } finally {
        this.looping = false;
        if (this.queue.length > 0 && !this.closed) this.wake();
      }
    })();
  }

  private async step(): Promise<void> {
    for (const job of [...this.queue, ...this.active]) {
      if (job.cancelReason !== undefined) await this.finish(job, 'cancelled', job.cancelReason);
    }
    await this.decodeStep();
    await this.admit();
    await this.prefillStep();
    this.flushDeltas();
    this.reportPrefillProgress();
    const s = await this.engine.stats();
    // The rows' KV only: saved prefixes are reported apart (prefixCacheBytes).
    this.engineStats = { kvBytes: s.kvBytes, activeMemory: s.activeMemory, peakMemory: s.peakMemory };
  }

  private async decodeStep(): Promise<void> {
    const decoding = this.active.filter((j) => j.state === JobState.Decoding);
    if (decoding.length === 0) return;
    const masks = decoding.filter((j) => j.matcher).map((j) => ({ id: j.seq, bitmask: j.matcher!.bitmask() }));
    const t = performance.now();
    let out;
    try {
      out = await this.engine.decode(masks.length > 0 ? { masks } : undefined);
    } catch (e) {
      for (const job of decoding) await this.finish(job, 'error', `decode failed: ${(e as Error).message}`);
      return;
    }
    const seconds = (performance.now() - t) / 1000;
    this.totals.decodeSeconds += seconds;
    this.totals.decodeTokens += out.tokens.length;
    this.rates.add(out.tokens.length, 0);
    const bySeq = new Map(decoding.map((j) => [j.seq, j]));
    // A row that failed alone (it got no valid token) ends; the others go on.
    for (const f of out.failed ?? []) {
      const job = bySeq.get(f.id);
      if (job) await this.finish(job, 'error', `decode failed: ${f.error}`);
    }
    for (let i = 0; i < out.ids.length; i++) {
      const job = bySeq.get(out.ids[i]);
      if (job) await this.accept(job, out.tokens[i], out.logprobs?.[i] ?? undefined);
    }
  }

  /** First come, first served: stops at the first request that must wait. */
  private async admit(): Promise<void> {
    const { maxBatch, kvBudgetBytes } = this.options;
    while (this.queue.length > 0 && this.active.length < maxBatch) {
      const job = this.queue[0];
      const fits = (r: KvReservation) => this.kvEstimate([...this.active.map((j) => j.kv), r]) <= kvBudgetBytes;
      let match = this.usefulMatch(job);
      let kv = this.reservation(job, match);
      // A saved entry much longer than what the prompt shares with it is charged whole: start without it when that fits.
      if (!fits(kv) && match) {
        const plain = this.reservation(job, undefined);
        if (fits(plain)) {
          match = undefined;
          kv = plain;
        }
      }
      // Waits for running rows to finish; with none running it starts anyway,
      // as prepare() found it fits alone (the estimates differ by rounding).
      if (!fits(kv) && this.active.length > 0) return;
      // Save only prompts mostly computed here: one that reused most of an entry would add a near-copy of it.
      const savesPrefix = this.prefixes.enabled && (match?.length ?? 0) < job.prompt.length / 2 && this.worthSaving(job);
      if (this.prefixes.enabled && this.sharesWithUnsavedPrompt(job, match)) return;
      this.queue.shift();
      job.seq = nextSeq++;
      try {
        await this.engine.addSequence(job.seq, job.sampling, match && {
          handle: match.entry.handle, length: match.length, tokens: job.prompt.subarray(0, match.length),
        }, job.prompt.length - (match?.length ?? 0));
      } catch (e) {
        job.seq = 0;
        await this.finish(job, 'error', `could not start the sequence: ${(e as Error).message}`);
        continue;
      }
      job.state = JobState.Prefilling;
      job.prefilled = job.cached = match?.length ?? 0;
      job.savesPrefix = savesPrefix;
      job.kv = kv;
      job.admittedAt = performance.now();
      // Counted once admitted: a request cancelled while queued reads no prompt.
      this.totals.promptTokens += job.prompt.length;
      this.totals.cachedPromptTokens += job.cached;
      this.active.push(job);
    }
  }

  /**
   * The saved prefix a job starts from, if it repays itself: a block's worth
   * of tokens, or most of the prompt. A shorter match (a chat template shared
   * with an unrelated prompt) would be copied into the row and keep it out of
   * batched prefill for a few dozen tokens.
   */
  private usefulMatch(job: Job): PrefixMatch | undefined {
    if (!this.prefixes.enabled) return undefined;
    const match = this.prefixes.lookup(job.prompt);
    return match && (match.length >= MIN_BLOCK_TOKENS || match.length >= job.prompt.length / 2) ? match : undefined;
  }

  /**
   * Long prompts are saved for later reuse (the next turn of a chat, the next
   * question about a file). A shorter one only when a waiting request shares
   * most of it: saving keeps a prompt out of batched prefill, so short
   * prompts with nothing in common are better read together.
   */
  private worthSaving(job: Job): boolean {
    if (job.prompt.length >= MIN_BLOCK_TOKENS) return true;
    if (job.prompt.length < MIN_SAVED_PROMPT) return false;
    return this.queue.some((other) => other !== job && commonPrefixLength(other.prompt, job.prompt) >= job.prompt.length / 2);
  }

  /**
   * A request that shares most of its prompt with one still being prefilled
   * (N questions about one file arriving together) waits for that prompt to be
   * saved instead of prefilling the same tokens again.
   */
  private sharesWithUnsavedPrompt(job: Job, match: PrefixMatch | undefined): boolean {
    const have = match?.length ?? 0;
    return this.active.some((other) => {
      if (other.state !== JobState.Prefilling || !other.savesPrefix) return false;
      const shared = commonPrefixLength(other.prompt, job.prompt);
      return shared >= job.prompt.length / 2 && shared - have >= MIN_SHARED_TOKENS;
    });
  }

  private async prefillStep(): Promise<void> {
    let budget = this.options.prefillTokensPerStep;
    budget -= await this.prefillShortTogether(budget);
    for (const job of this.active.filter((j) => j.state === JobState.Prefilling)) {
      while (budget > 0 && job.state === JobState.Prefilling) {
        const n = Math.min(budget, job.prompt.length - job.prefilled, PREFILL_CALL_TOKENS);
        const last = job.prefilled + n === job.prompt.length;
        const chunk = job.prompt.subarray(job.prefilled, job.prefilled + n);
        const t = performance.now();
        let r;
        try {
          r = await this.engine.prefill(job.seq, chunk, last, false, last ? job.matcher?.bitmask() : undefined,
            last && job.savesPrefix);
        } catch (e) {
          await this.finish(job, 'error', `prefill failed: ${(e as Error).message}`);
          break;
        }
        this.totals.prefillSeconds += (performance.now() - t) / 1000;
        this.totals.prefillTokens += n;
        this.rates.add(0, n);
        budget -= n;
        job.prefilled += n;
        if (r.saved) {
          // The saved entry is this row's own block: rows started from it share it.
          job.kv = { ...job.kv, block: `prefix:${r.saved.handle}` };
          await this.prefixes.add(r.saved, job.prompt.slice());
        }
        if (last) {
          job.state = JobState.Decoding;
          await this.accept(job, r.token!, r.logprobs);
        }
      }
      if (budget <= 0) break;
    }
  }

  /**
   * Short prompts not yet started (or started from a shared prefix: the
   * questions after a file) go through one forward pass together instead of
   * one each. Returns the tokens spent, counting the padding.
   */
  private async prefillShortTogether(budget: number): Promise<number> {
    const picked: Job[] = [];
    let width = 0;
    for (const job of this.active) {
      const left = job.prompt.length - job.prefilled;
      if (job.state !== JobState.Prefilling || job.prefilled !== job.cached || job.savesPrefix || left > BATCHED_PREFILL_TOKENS) continue;
      // A row that copied a short match holds cached columns of its own; the engine prefills those alone.
      if (job.cached > 0 && job.cached < MIN_BLOCK_TOKENS) continue;
      if ((picked.length + 1) * Math.max(width, left) > budget) break;
      picked.push(job);
      width = Math.max(width, left);
    }
    if (picked.length < 2) return 0;
    const t = performance.now();
    let results;
    try {
      results = await this.engine.prefillBatch(picked.map((j) => ({
        id: j.seq, tokens: j.prompt.subarray(j.prefilled), firstTokenMask: j.matcher?.bitmask(),
      })));
    } catch (e) {
      for (const job of picked) await this.finish(job, 'error', `prefill failed: ${(e as Error).message}`);
      return picked.length * width;
    }
    const tokens = picked.reduce((n, j) => n + j.prompt.length - j.prefilled, 0);
    this.totals.prefillSeconds += (performance.now() - t) / 1000;
    this.totals.prefillTokens += tokens;
    this.rates.add(0, tokens);
    for (const [k, job] of picked.entries()) {
      job.prefilled = job.prompt.length;
      job.state = JobState.Decoding;
      await this.accept(job, results[k].token!, results[k].logprobs);
    }
    return picked.length * width;
  }

  /** Takes one sampled token; ends the row on EOS, a stop string, or its token limit. */
  private async accept(job: Job, token: number, logprobs?: TokenLogprobs): Promise<void> {
    job.generated++;
    this.totals.generatedTokens++;
    job.firstTokenAt ??= performance.now();
    if (job.matcher && !job.matcher.accept(token)) {
      await this.finish(job, 'error', `constrained decoding: token ${token} is not allowed by the schema`);
      return;
    }
    if (this.tokenizer.eosTokenIds.has(token)) {
      this.delta(job, '', 1);
      await this.finish(job, 'stop');
      return;
    }
    const entry = job.logprobs && logprobs ? this.logprobEntry(token, logprobs) : undefined;
    if (entry) job.logprobs!.push(entry);
    this.delta(job, job.text.push(job.decoder.push(token)), 1, entry);
    if (job.text.stopped) await this.finish(job, 'stop');
    // Complete JSON ends here: waiting for the EOS token costs a step, and at the token limit it read as cut off.
    else if (job.matcher?.isComplete?.()) await this.finish(job, 'stop');
    else if (job.generated >= job.maxTokens) await this.finish(job, 'length');
  }

  private delta(job: Job, text: string, tokens: number, logprob?: TokenLogprob): void {
    let d = this.pendingDeltas.get(job.params.requestId);
    if (d) {
      d.text += text;
      d.tokens += tokens;
    } else {
      d = { requestId: job.params.requestId, text, tokens };
      this.pendingDeltas.set(job.params.requestId, d);
    }
    if (logprob) (d.logprobs ??= []).push(logprob);
  }

  private reportPrefillProgress(): void {
    if (!this.onPrefillProgress) return;
    const reading = this.active.filter((j) => j.state === JobState.Prefilling);
    if (reading.length === 0) return;
    this.onPrefillProgress(reading.map((j) => ({
      requestId: j.params.requestId, promptTokens: j.prompt.length, prefilledTokens: j.prefilled, cachedTokens: j.cached,
    })));
  }

  private flushDeltas(): void {
    if (this.pendingDeltas.size === 0) return;
    const deltas = [...this.pendingDeltas.values()];
    this.pendingDeltas = new Map();
    this.onDeltas(deltas);
  }

  private async finish(job: Job, reason: FinishReason, error?: string): Promise<void> {
    if (job.state === JobState.Done) return;
    const wasActive = job.state !== JobState.Queued;
    job.state = JobState.Done;
    const qi = this.queue.indexOf(job);
    if (qi >= 0) this.queue.splice(qi, 1);
    const ai = this.active.indexOf(job);
    if (ai >= 0) this.active.splice(ai, 1);
    this.byId.delete(job.params.requestId);
    if (wasActive && job.seq > 0) {
      try {
        await this.engine.remove(job.seq);
      } catch (e) {
        error ??= `freeing the sequence failed: ${(e as Error).message}`;
      }
    }
    job.matcher?.dispose();
    if (reason !== 'error' && reason !== 'cancelled' && !job.text.stopped) {
      this.delta(job, job.text.push(job.decoder.flush()), 0);
      if (job.text.stopped) reason = 'stop';
    }
    this.delta(job, job.text.flush(), 0);
    // Its last tokens go out before its result: a client drops deltas of a request it has seen end.
    const last = this.pendingDeltas.get(job.params.requestId);
    if (last) {
      this.pendingDeltas.delete(job.params.requestId);
      this.onDeltas([last]);
    }
    this.counts[reason]++;
    const now = performance.now();
    job.resolve({
      requestId: job.params.requestId,
      text: job.text.text,
      finishReason: reason,
      ...(error !== undefined ? { error, errorType: 'server' as const } : {}),
      promptTokens: job.prompt.length,
      cachedPromptTokens: job.cached,
      generatedTokens: job.generated,
      ...(job.logprobs ? { logprobs: job.logprobs } : {}),
      timings: {
        queuedMs: (job.admittedAt ?? now) - job.enqueuedAt,
        firstTokenMs: job.firstTokenAt !== undefined ? job.firstTokenAt - job.enqueuedAt : 0,
        totalMs: now - job.enqueuedAt,
      },
    });
  }
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function checkSampling(s: SamplingParams): void {
  const bad = (what: string) => {
    throw new InvalidRequest(`sampling: ${what}`);
  };
  if (!(s.temperature >= 0)) bad(`temperature must be >= 0 (got ${s.temperature})`);
  if (!(s.topP > 0 && s.topP <= 1)) bad(`topP must be in (0, 1] (got ${s.topP})`);
  if (!(Number.isInteger(s.topK) && s.topK >= 0)) bad(`topK must be a whole number >= 0 (got ${s.topK})`);
  if (!(s.minP >= 0 && s.minP <= 1)) bad(`minP must be in [0, 1] (got ${s.minP})`);
  if (!(s.repetitionPenalty > 0)) bad(`repetitionPenalty must be > 0 (got ${s.repetitionPenalty})`);
  for (const key of ['presencePenalty', 'frequencyPenalty'] as const) {
    const v = s[key] ?? 0;
    if (!(v >= -2 && v <= 2)) bad(`${key} must be from -2 to 2 (got ${v})`);
  }
  const lp = s.logprobs ?? -1;
  if (!(Number.isInteger(lp) && lp >= -1 && lp <= 20)) bad(`logprobs must be -1 (off) or a whole number from 0 to 20 (got ${lp})`);
  if (!(Number.isInteger(s.seed) && s.seed >= 0)) bad(`seed must be a whole number >= 0 (got ${s.seed})`);
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
