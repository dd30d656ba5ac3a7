// BatchGenerator: the batched decoding loop over one NativeEngine.
//
// Requests are tokenized up front, admitted up to `batch` rows at a time,
// prefilled in fixed-size chunks, then decoded together, one decode() call per
// step. A row that finishes is removed at once and a waiting request takes its
// place (continuous refill), so no row decodes past its own end.
//
// Batch invariance: nothing a row sees depends on which other rows share the
// batch. Its sampling parameters and seed are its own, its prefill chunking
// depends only on its own prompt and `prefillChunk`, and its stop handling is
// per row. Only timing changes with batch composition.
import type { ModelSpec } from './model-spec.js';
import type { NativeEngine, SamplingParams } from './native.js';

export interface ChatMessage {
  role: string;
  content: string;
}

/** What the generator needs from a tokenizer (the Tokenizer class satisfies it). */
export interface GeneratorTokenizer {
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  createStreamDecoder(opts?: { skipSpecialTokens?: boolean }): { push(id: number): string; flush(): string };
  applyChatTemplate(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean }): string;
  eosTokenIds: Set<number>;
}

export interface GenerationRequest {
  /** Text (sent as one user message through the chat template unless `raw`) or token ids (used as is). */
  prompt?: string | number[];
  /** Chat messages; rendered with the chat template. Takes precedence over `prompt`. */
  messages?: ChatMessage[];
  /** A text prompt is tokenized as is (with the tokenizer's own special tokens), no chat template. */
  raw?: boolean;
  maxTokens: number;
  sampling?: Partial<SamplingParams>;
  /** Generation stops before the first occurrence of any of these; the stop string is not returned. */
  stop?: string[];
  signal?: AbortSignal;
}

export type FinishReason = 'stop' | 'length' | 'cancelled' | 'error';

export interface GenerationResult {
  /** Position of the request in the list given to run(). */
  index: number;
  promptTokens: number;
  /** Tokens sampled for this request (EOS and the tokens of a stop string included). */
  generatedTokens: number;
  /** Generated token ids, in order. */
  tokens: number[];
  /** Generated text, cut before a stop string; EOS contributes no text. */
  text: string;
  finishReason: FinishReason;
  error?: string;
  /** Seconds from the start of run() to this request's first token (absent if it never got one). */
  firstTokenSeconds?: number;
}

export interface GenerationStats {
  /** Prompt tokens run through prefill. */
  promptTokens: number;
  /** Tokens sampled, from prefill (first tokens) and decode steps. */
  generatedTokens: number;
  prefillSeconds: number;
  prefillTokensPerSec: number;
  decodeSteps: number;
  /** Tokens produced by decode steps (first tokens come from prefill and are not counted). */
  decodeTokens: number;
  decodeSeconds: number;
  /** Aggregate over rows: decodeTokens / decodeSeconds. */
  decodeTokensPerSec: number;
  wallSeconds: number;
  peakMemoryBytes: number;
  batch: number;
}

export interface GenerationRun {
  results: GenerationResult[];
  stats: GenerationStats;
}

export interface RunOptions {
  /** Max rows decoded together (1 = sequential). Default: all requests, at most 32. */
  batch?: number;
  /** Prompt tokens per prefill call. Default 512. */
  prefillChunk?: number;
  /**
   * Called once per sampled token with the text it releases (possibly '': text
   * held back because it may start a stop string, an incomplete UTF-8
   * sequence, or EOS). At the end of a request, text still held back is
   * released with tokenId -1.
   */
  onToken?: (requestIndex: number, deltaText: string, tokenId: number) => void;
  /** Called once per request when it finishes (including refused and cancelled ones). */
  onFinish?: (result: GenerationResult) => void;
}

export const DEFAULT_SAMPLING: SamplingParams = {
  temperature: 0,
  topP: 1,
  topK: 0,
  minP: 0,
  repetitionPenalty: 1,
  repetitionContextSize: 20,
  seed: 0,
};

export const DEFAULT_PREFILL_CHUNK = 512;
export const DEFAULT_MAX_BATCH = 32;

// ---------------------------------------------------------------------------
// Stop strings (pure; unit-tested in test/generator-text.test.ts)

/**
 * The leftmost occurrence of any stop string in `text` at or after `from`
 * (ties: the longest stop). Empty stop strings are ignored.
 */
export function findStop(text: string, stops: readonly string[], from = 0): { index: number; stop: string } | undefined {
  let best: { index: number; stop: string } | undefined;
  for (const stop of stops) {
    if (!stop) continue;
    const index = text.indexOf(stop, Math.max(0, from));
    if (index < 0) continue;
    if (!best || index < best.index || (index === best.index && stop.length > best.stop.length)) best = { index, stop };
  }
  return best;
}

/**
 * How many characters at the end of `text` must be held back while streaming
 * because they could be the start of a stop string: the longest proper prefix
 * of any stop string that `text` ends with.
 */
export function holdBackLength(text: string, stops: readonly string[]): number {
  let hold = 0;
  for (const stop of stops) {
    for (let k = Math.min(stop.length - 1, text.length); k > hold; k--) {
      if (text.endsWith(stop.slice(0, k))) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}

/**
 * Streaming text with stop strings: push() decoded text as it arrives and get
 * back what may be shown now; once a stop string appears, the text is cut
 * before it and `stopped` is set. flush() releases what was held back.
 */
export class StopTextBuffer {
  /** All text so far (cut before the stop string once stopped). */
  text = '';
  stopped = false;
  stop: string | undefined;
  private emitted = 0;
  private checked = 0;
  private readonly stops: string[];
  private readonly maxStop: number;

  constructor(stops: readonly string[] = []) {
    this.stops = stops.filter((s) => s.length > 0);
    this.maxStop = this.stops.reduce((m, s) => Math.max(m, s.length), 0);
  }

  push(delta: string): string {
    if (this.stopped || !delta) return '';
    this.text += delta;
    if (this.stops.length === 0) return this.release(this.text.length);
    // A new match must end after what was already checked.
    const found = findStop(this.text, this.stops, this.checked - this.maxStop + 1);
    this.checked = this.text.length;
    if (found) {
      this.text = this.text.slice(0, found.index);
      this.stopped = true;
      this.stop = found.stop;
      return this.release(this.text.length);
    }
    return this.release(this.text.length - holdBackLength(this.text, this.stops));
  }

  /** Releases everything not yet returned (end of generation). */
  flush(): string {
    return this.release(this.text.length);
  }

  private release(end: number): string {
    if (end <= this.emitted) return '';
    const out = this.text.slice(this.emitted, end);
    this.emitted = end;
    return out;
  }
}

// ---------------------------------------------------------------------------
// The decoding loop

let nextSequenceId = 1;

interface Row {
  index: number;
  request: GenerationRequest;
  promptIds: number[];
  sampling: SamplingParams;
  maxTokens: number;
  eos: Set<number>;
  decoder: { push(id: number): string; flush(): string };
  text: StopTextBuffer;
  tokens: number[];
  /** Engine sequence id while the row holds engine state. */
  seqId?: number;
  result?: GenerationResult;
  firstTokenSeconds?: number;
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function now(): number {
  return performance.now() / 1000;
}

export class BatchGenerator {
  constructor(
    readonly engine: NativeEngine,
    readonly tokenizer: GeneratorTokenizer,
    readonly spec: ModelSpec,
  ) {}

  /** Tokens a request's prompt renders to (chat template unless raw or token ids). */
  promptTokens(request: GenerationRequest): number[] {
    if (request.messages && request.messages.length > 0) {
      return this.tokenizer.encode(this.tokenizer.applyChatTemplate(request.messages, { addGenerationPrompt: true }), {
        addSpecialTokens: false,
      });
    }
    const prompt = request.prompt;
    if (Array.isArray(prompt)) return prompt.slice();
    if (typeof prompt !== 'string') throw new Error('no prompt or messages');
    if (request.raw) return this.tokenizer.encode(prompt, { addSpecialTokens: true });
    // The template renders any BOS it wants; do not add another.
    const rendered = this.tokenizer.applyChatTemplate([{ role: 'user', content: prompt }], { addGenerationPrompt: true });
    return this.tokenizer.encode(rendered, { addSpecialTokens: false });
  }

  async run(requests: GenerationRequest[], options: RunOptions = {}): Promise<GenerationRun> {
    const { engine, spec } = this;
    const start = now();
    const batch = Math.max(1, Math.floor(options.batch ?? Math.min(Math.max(requests.length, 1), DEFAULT_MAX_BATCH)));
    const chunk = Math.max(1, Math.floor(options.prefillChunk ?? DEFAULT_PREFILL_CHUNK));
    const stats: GenerationStats = {
      promptTokens: 0,
      generatedTokens: 0,
      prefillSeconds: 0,
      prefillTokensPerSec: 0,
      decodeSteps: 0,
      decodeTokens: 0,
      decodeSeconds: 0,
      decodeTokensPerSec: 0,
      wallSeconds: 0,
      peakMemoryBytes: 0,
      batch,
    };
    await engine.resetPeakMemory();

    const rows: Row[] = requests.map((request, index) => this.prepare(request, index));
    const waiting: Row[] = [];
    for (const row of rows) {
      if (row.result) options.onFinish?.(row.result);
      else waiting.push(row);
    }
    /** Rows holding engine state, by sequence id. */
    const active = new Map<number, Row>();

    const emit = (row: Row, delta: string, tokenId: number) => {
      if (options.onToken) options.onToken(row.index, delta, tokenId);
    };

    const finish = async (row: Row, reason: FinishReason, error?: string) => {
      if (row.result) return;
      if (row.seqId !== undefined) {
        const id = row.seqId;
        active.delete(id);
        row.seqId = undefined;
        try {
          await engine.remove(id);
        } catch (e) {
          if (!error) error = `removing the sequence failed: ${errorMessage(e)}`;
        }
      }
      // Release what the stream decoder and the stop buffer still hold.
      let tail = '';
      if (!row.text.stopped) tail += row.text.push(row.decoder.flush());
      if (row.text.stopped && reason !== 'error' && reason !== 'cancelled') reason = 'stop';
      tail += row.text.flush();
      if (tail) emit(row, tail, -1);
      row.result = {
        index: row.index,
        promptTokens: row.promptIds.length,
        generatedTokens: row.tokens.length,
        tokens: row.tokens,
        text: row.text.text,
        finishReason: reason,
        ...(error !== undefined ? { error } : {}),
        ...(row.firstTokenSeconds !== undefined ? { firstTokenSeconds: row.firstTokenSeconds } : {}),
      };
      options.onFinish?.(row.result);
    };

    /** Takes one sampled token; finishes the row when it ends there. Returns true when finished. */
    const accept = async (row: Row, token: number): Promise<boolean> => {
      if (row.firstTokenSeconds === undefined) row.firstTokenSeconds = now() - start;
      row.tokens.push(token);
      stats.generatedTokens++;
      if (row.eos.has(token)) {
        emit(row, '', token);
        await finish(row, 'stop');
        return true;
      }
      const delta = row.text.push(row.decoder.push(token));
      emit(row, delta, token);
      if (row.text.stopped) {
        await finish(row, 'stop');
        return true;
      }
      if (row.tokens.length >= row.maxTokens) {
        await finish(row, 'length');
        return true;
      }
      if (row.request.signal?.aborted) {
        await finish(row, 'cancelled');
        return true;
      }
      return false;
    };

    const admit = async (row: Row) => {
      const id = nextSequenceId++;
      try {
        await engine.addSequence(id, row.sampling);
      } catch (e) {
        await finish(row, 'error', `could not start the sequence: ${errorMessage(e)}`);
        return;
      }
      row.seqId = id;
      active.set(id, row);
      const ids = row.promptIds;
      for (let pos = 0; pos < ids.length; pos += chunk) {
        if (row.request.signal?.aborted) {
          await finish(row, 'cancelled');
          return;
        }
        const part = Int32Array.from(ids.slice(pos, pos + chunk));
        const last = pos + chunk >= ids.length;
        let token: number | undefined;
        const t = now();
        try {
          token = (await engine.prefill(id, part, last)).token;
        } catch (e) {
          stats.prefillSeconds += now() - t;
          await finish(row, 'error', `prefill failed: ${errorMessage(e)}`);
          return;
        }
        stats.prefillSeconds += now() - t;
        stats.promptTokens += part.length;
        if (last) {
          if (token === undefined) {
            await finish(row, 'error', 'prefill returned no token for the last chunk');
            return;
          }
          await accept(row, token);
        }
      }
    };

    while (waiting.length > 0 || active.size > 0) {
      for (const row of [...active.values()]) {
        if (row.request.signal?.aborted) await finish(row, 'cancelled');
      }
      while (active.size < batch && waiting.length > 0) {
        const row = waiting.shift()!;
        if (row.request.signal?.aborted) await finish(row, 'cancelled');
        else await admit(row);
      }
      if (active.size === 0) continue;

      const t = now();
      let step;
      try {
        step = await engine.decode();
      } catch (e) {
        stats.decodeSeconds += now() - t;
        const message = `decode failed: ${errorMessage(e)}`;
        for (const row of [...active.values()]) await finish(row, 'error', message);
        continue;
      }
      stats.decodeSeconds += now() - t;
      stats.decodeSteps++;
      stats.decodeTokens += step.tokens.length;
      const seen = new Set<number>();
      for (let i = 0; i < step.ids.length; i++) {
        const row = active.get(step.ids[i]);
        if (!row) continue; // not ours (cannot happen while we own the engine)
        seen.add(step.ids[i]);
        await accept(row, step.tokens[i]);
      }
      // A row the engine did not decode would loop forever: fail it.
      for (const [id, row] of [...active]) {
        if (!seen.has(id)) await finish(row, 'error', 'the engine did not decode this row');
      }
    }

    stats.wallSeconds = now() - start;
    stats.prefillTokensPerSec = stats.prefillSeconds > 0 ? stats.promptTokens / stats.prefillSeconds : 0;
    stats.decodeTokensPerSec = stats.decodeSeconds > 0 ? stats.decodeTokens / stats.decodeSeconds : 0;
    try {
      stats.peakMemoryBytes = (await engine.stats()).peakMemory;
    } catch {
      stats.peakMemoryBytes = 0;
    }
    return { results: rows.map((r) => r.result!), stats };
  }

  /** Tokenizes and checks one request; a refused one comes back with its result set. */
  private prepare(request: GenerationRequest, index: number): Row {
    const row: Row = {
      index,
      request,
      promptIds: [],
      sampling: { ...DEFAULT_SAMPLING, ...stripUndefined(request.sampling ?? {}) },
      maxTokens: Math.floor(request.maxTokens),
      eos: this.tokenizer.eosTokenIds,
      decoder: this.tokenizer.createStreamDecoder({ skipSpecialTokens: true }),
      text: new StopTextBuffer(request.stop ?? []),
      tokens: [],
    };
    const refuse = (message: string) => {
      row.result = {
        index,
        promptTokens: row.promptIds.length,
        generatedTokens: 0,
        tokens: [],
        text: '',
        finishReason: 'error',
        error: `request ${index + 1}: ${message}`,
      };
      return row;
    };
    if (request.signal?.aborted) {
      row.result = { index, promptTokens: 0, generatedTokens: 0, tokens: [], text: '', finishReason: 'cancelled' };
      return row;
    }
    if (!Number.isFinite(request.maxTokens) || row.maxTokens < 1) return refuse(`maxTokens must be at least 1 (got ${request.maxTokens})`);
    try {
      row.promptIds = this.promptTokens(request);
    } catch (e) {
      return refuse(`could not render or tokenize the prompt: ${errorMessage(e)}`);
    }
    const n = row.promptIds.length;
    if (n === 0) return refuse('the prompt is empty (0 tokens)');
    const bad = row.promptIds.find((t) => !Number.isInteger(t) || t < 0 || t >= this.spec.vocabSize);
    if (bad !== undefined) return refuse(`token id ${bad} is outside the vocabulary (0..${this.spec.vocabSize - 1})`);
    if (n + row.maxTokens > this.spec.contextLength) {
      return refuse(
        `prompt tokens (${n}) + max tokens (${row.maxTokens}) = ${n + row.maxTokens} exceeds the model's context length (${this.spec.contextLength})`,
      );
    }
    return row;
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
