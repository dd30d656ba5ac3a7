// OpenAI-compatible HTTP API over the sidecar (SidecarClient), on node's http
// module, bound to 127.0.0.1 only.
//
//   POST /v1/chat/completions   chat completions, streaming (SSE) or not, n choices,
//                               response_format json_object / json_schema, logprobs
//   POST /v1/completions        legacy text completions: raw prompt (no chat template),
//                               suffix (fill-in-the-middle), streaming, n, logprobs
//   GET  /v1/models             the one model
//   GET  /v1/models/{id}        that model, or 404 model_not_found for any other id
//   GET  /metrics               Prometheus text (prom-client, a registry of our own)
//
// Every request needs `Authorization: Bearer <token>` and a Host header naming
// this server on a loopback name (127.0.0.1, localhost or [::1], with the
// port): a page on another site that a DNS-rebinding attack points at
// 127.0.0.1 sends its own host name, and gets 403. Errors are OpenAI-style
// JSON bodies: {"error": {"message", "type", "param", "code"}}.
//
// Decisions (documented here, tested in test/http-server*.test.ts):
// - `model` may be absent or must equal the served model id; anything else is
//   404 model_not_found, as OpenAI answers for a model it does not serve.
// - temperature defaults to 1 (OpenAI's default), top_p to 1 (top_p 0, the
//   smallest nucleus, is greedy, as OpenAI treats it); max_tokens to
//   `defaultMaxTokens` (512, on both endpoints), and may not exceed the model's
//   context length (400). A max_tokens that does not fit in what the prompt
//   leaves of the context is cut to (context length - prompt tokens), and the
//   choice ends with finish_reason 'length' there; a prompt that fills the
//   context alone is 400 context_length_exceeded, its message giving both numbers.
// - n choices are n generate() calls with the same messages (the scheduler
//   tokenizes the prompt once for all of them); with a seed, choice
//   i uses seed + i; without one, or with seed -1 (llama.cpp's and Ollama's
//   "random"), each choice draws a random seed (so choices and repeated
//   requests differ). Any other integer seed is taken, as OpenAI takes any
//   int64: reduced modulo 2^53 (the engine's exact range; -2 is 2^53 - 2), so
//   distinct seeds stay distinct wherever 53 bits allow (engineSeed). usage.prompt_tokens counts the prompt once (as OpenAI does),
//   completion_tokens sums all choices; cached_tokens is the first choice's.
// - presence_penalty and frequency_penalty (-2..2) act per choice in the native
//   sampler, over the tokens that choice generated: logit[t] -= presence *
//   (count[t] > 0) + frequency * count[t].
// - Extensions accepted, as mlx_lm.server does: top_k, min_p, repetition_penalty.
//   Known OpenAI fields we cannot honour (tools, logit_bias, audio, echo: true,
//   best_of > 1, ...) are 400 when set to a non-default value; unknown fields
//   are ignored.
// - Logprobs (chat: logprobs: true with top_logprobs 0..20; completions:
//   logprobs 0..20) are log_softmax of the model's raw logits, before penalties,
//   temperature, top-k/p and schema masks: the model's own distribution, not the
//   filtered one a token was drawn from. One entry per generated token, EOS left
//   out; a stop string cuts the text but not the entries of the tokens that
//   spelled it. Streaming sends each step's text with its tokens' entries.
// - /v1/completions: `prompt` is a string or an array of strings (choice index =
//   prompt index * n + i, at most 16 choices in all; each prompt's tokens counted
//   once in usage); arrays of token ids are 400. The prompt is tokenized as is,
//   BOS/EOS as the tokenizer's post-processor adds them. `suffix` builds
//   <fim_prefix>prompt<fim_suffix>suffix<fim_middle> (or the <|fim_...|>
//   spelling) from the tokenizer's own FIM tokens, no BOS; a model without them
//   answers 400 unsupported_parameter naming 'suffix'.
// - Headers must arrive within headersTimeoutMs (30 s), the whole request
//   within requestTimeoutMs (120 s), else 408; at most maxConnections (1024)
//   connections are open at once.
// - A client that disconnects (streaming or not) cancels its generation(s) at
//   once through the AbortSignal; nothing is answered since nobody is listening.
//   A generation cancelled while the client is still there (the server is
//   closing) gets 503, as does every request once the engine's supervisor has
//   given up on it (the body says why). A request refused because the engine's
//   queue is full (serve --max-queue) is 429 with Retry-After. A failed generation is 500 (non-streaming), or an SSE
//   `data: {"error": ...}` event before the stream closes (no [DONE] then).
// - Streaming answers hold their headers until the engine has accepted every
//   choice (queued it, tokenized and its schema compiled: its first prefill
//   event), so a refusal (400 context_length_exceeded or an invalid schema,
//   however long the prompt took to tokenize; 429) keeps its status and JSON
//   body. A backend that never says so gets the headers after
//   streamAcceptTimeoutMs (30 s), and a refusal after that is an SSE error event.
import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

import type {
  ChatMessage, GenerateParams, GenerateResult, MetricsSnapshot, ModelInfo, PrefillProgress, TokenDelta, TokenLogprob,
} from './protocol.js';

/** The part of SidecarClient the server uses (so tests can pass a fake). */
export interface CompletionBackend {
  readonly info?: ModelInfo;
  /** Why the engine is not running, once its supervisor gave up on it (SidecarClient.failure). */
  readonly failure?: string;
  generate(
    params: Omit<GenerateParams, 'requestId'> & { requestId?: string },
    handlers?: {
      onDelta?: (delta: TokenDelta) => void;
      /** Where the prompt's read stands; the first one (queued: true from the engine) says it has accepted the request. */
      onPrefill?: (progress: PrefillProgress) => void;
      signal?: AbortSignal;
    },
  ): Promise<GenerateResult>;
  metrics(): Promise<MetricsSnapshot>;
}

export interface OpenAiServerOptions {
  client: CompletionBackend;
  /** 0 = any free port. */
  port?: number;
  /** Bearer token every request must carry. */
  token: string;
  /** The id /v1/models lists and `model` must match. */
  modelId: string;
  /** Request bodies above this are refused with 413 (default 8 MiB). */
  maxBodyBytes?: number;
  /** max_tokens when the request gives none (default 512). */
  defaultMaxTokens?: number;
  /**
   * Streaming: once the engine has accepted every choice (its first event for each: prefill
   * progress or a token), send the response headers after this long without a token (default 1000 ms).
   */
  streamHeaderGraceMs?: number;
  /**
   * Streaming: send the headers after this long even if the backend has not said it accepted the
   * request (our engine says so once it is queued), before clients' header timeouts (undici: 300 s)
   * fire (default 30 s). Until then a refusal keeps its HTTP status (400, 429); after, it is an SSE error event.
   */
  streamAcceptTimeoutMs?: number;
  /** Streaming: an SSE comment after this long without output (default 15 s). */
  heartbeatMs?: number;
  /** A client must send its headers within this (default 30 s)... */
  headersTimeoutMs?: number;
  /** ...and its whole request, body included, within this (default 120 s); a long answer is not limited. */
  requestTimeoutMs?: number;
  /** Open connections at most; more are dropped as they arrive (default 1024). */
  maxConnections?: number;
  log?: (line: string) => void;
}

export interface OpenAiServer {
  url: string;
  port: number;
  host: string;
  metrics: ServerMetrics;
  close(): Promise<void>;
}

export const HOST = '127.0.0.1';
export const DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024;
export const DEFAULT_MAX_TOKENS = 512;
export const MAX_CHOICES = 16;
/** top_logprobs (chat) and logprobs (completions) at most, as OpenAI's chat API allows. */
export const MAX_TOP_LOGPROBS = 20;
export const DEFAULT_HEADERS_TIMEOUT_MS = 30_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 120_000;
export const DEFAULT_MAX_CONNECTIONS = 1024;
export const DEFAULT_STREAM_HEADER_GRACE_MS = 1000;
export const DEFAULT_STREAM_ACCEPT_TIMEOUT_MS = 30_000;
/** Seconds a client told 429 (queue full) waits before trying again. */
const RETRY_AFTER_SECONDS = 1;
export const MAX_STOP_STRINGS = 16;
/** Streaming holds back up to a stop string's length of text, so a long one would stall the stream. */
export const MAX_STOP_LENGTH = 256;

// ---------------------------------------------------------------------------
// Errors

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = status >= 500 ? 'server_error' : 'invalid_request_error',
    readonly code: string | null = null,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }

  body() {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

function badParam(param: string, message: string, code = 'invalid_value'): HttpError {
  return new HttpError(400, message, 'invalid_request_error', code, param);
}

// ---------------------------------------------------------------------------
// Authorization

/** Constant-time check of an Authorization header against the token (hashes first, so lengths leak nothing). */
export function authorized(header: string | undefined, token: string): boolean {
  // \S+, not a lazy .+? before [ \t]*$: that backtracks quadratically on a long run of spaces.
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header ?? '');
  const given = crypto.createHash('sha256').update(m ? m[1] : '').digest();
  const want = crypto.createHash('sha256').update(token).digest();
  return crypto.timingSafeEqual(given, want) && m !== null && token.length > 0;
}

/** Whether a Host header names this server: a loopback name with its port (80 when none is given). */
export function allowedHost(host: string | undefined, port: number): boolean {
  const m = /^(?:127\.0\.0\.1|localhost|\[::1\])(?::(\d{1,5}))?$/i.exec(host ?? '');
  return m !== null && (m[1] === undefined ? 80 : Number(m[1])) === port;
}

// ---------------------------------------------------------------------------
// Request validation (pure)

/** What /v1/chat/completions and /v1/completions share. */
interface CommonRequest {
  maxTokens: number;
  sampling: GenerateParams['sampling'] & { temperature: number; topP: number };
  /** Set when the request gave a seed (other than -1, "random"), in the engine's range; choice i uses seed + i. */
  seed?: number;
  stop: string[];
  n: number;
  stream: boolean;
  includeUsage: boolean;
}

export interface ChatCompletionRequest extends CommonRequest {
  messages: ChatMessage[];
  jsonSchema?: Record<string, unknown>;
  /** logprobs: true. */
  logprobs: boolean;
}

export interface CompletionRequest extends CommonRequest {
  /** Each prompt gets n choices: choice index = prompt index * n + i. */
  prompts: string[];
  suffix?: string;
  /** logprobs: k (0..20) asks for the chosen token's logprob and k alternatives. */
  logprobs?: number;
}

export interface ValidationLimits {
  modelId: string;
  defaultMaxTokens: number;
  /** max_tokens may not exceed this (the model's context length), when known. */
  maxTokensLimit?: number;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const typeName = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

function optNumber(body: Record<string, unknown>, key: string): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw badParam(key, `'${key}' must be a number, got ${typeName(v)}`, 'invalid_type');
  return v;
}

function optInteger(body: Record<string, unknown>, key: string): number | undefined {
  const v = optNumber(body, key);
  if (v !== undefined && !Number.isInteger(v)) throw badParam(key, `'${key}' must be an integer, got ${v}`, 'invalid_type');
  return v;
}

function optBoolean(body: Record<string, unknown>, key: string): boolean | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw badParam(key, `'${key}' must be a boolean, got ${typeName(v)}`, 'invalid_type');
  return v;
}

function messageContent(content: unknown, where: string): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    // OpenAI content parts: only text parts can reach a text model.
    return content
      .map((part, j) => {
        if (isObject(part) && part.type === 'text' && typeof part.text === 'string') return part.text;
        const kind = isObject(part) && typeof part.type === 'string' ? `'${part.type}' parts are` : 'this part is';
        throw badParam(`${where}.content[${j}]`, `${where}.content[${j}]: ${kind} not supported; only {"type": "text", "text": string} parts`);
      })
      .join('');
  }
  throw badParam(`${where}.content`, `${where}.content must be a string or an array of text parts, got ${typeName(content)}`, 'invalid_type');
}

const ROLES = new Set(['system', 'developer', 'user', 'assistant']);

function parseMessages(v: unknown): ChatMessage[] {
  if (v === undefined || v === null) throw badParam('messages', "'messages' is required", 'missing_required_parameter');
  if (!Array.isArray(v)) throw badParam('messages', `'messages' must be an array, got ${typeName(v)}`, 'invalid_type');
  if (v.length === 0) throw badParam('messages', "'messages' must not be empty");
  return v.map((m, i) => {
    const where = `messages[${i}]`;
    if (!isObject(m)) throw badParam(where, `${where} must be an object with 'role' and 'content'`, 'invalid_type');
    if (typeof m.role !== 'string') throw badParam(`${where}.role`, `${where}.role must be a string`, 'invalid_type');
    if (!ROLES.has(m.role)) {
      throw badParam(`${where}.role`, `${where}.role '${m.role}' is not supported (system, developer, user or assistant)`);
    }
    if (m.tool_calls !== undefined || m.function_call !== undefined) {
      throw badParam(`${where}.tool_calls`, `${where}: tool calls are not supported`, 'unsupported_parameter');
    }
    return { role: m.role === 'developer' ? 'system' : m.role, content: messageContent(m.content, where) };
  });
}

function parseStop(v: unknown): string[] {
  if (v === undefined || v === null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list)) throw badParam('stop', `'stop' must be a string or an array of strings, got ${typeName(v)}`, 'invalid_type');
  if (list.length > MAX_STOP_STRINGS) throw badParam('stop', `'stop' takes at most ${MAX_STOP_STRINGS} strings`);
  for (const [i, s] of list.entries()) {
    if (typeof s !== 'string') throw badParam('stop', `'stop' must contain only strings, got ${typeName(s)}`, 'invalid_type');
    if (s === '') throw badParam('stop', "'stop' strings must not be empty");
    if (s.length > MAX_STOP_LENGTH) {
      throw badParam('stop', `'stop' strings may be at most ${MAX_STOP_LENGTH} characters; stop[${i}] has ${s.length}`);
    }
  }
  return list as string[];
}

function parseResponseFormat(v: unknown): Record<string, unknown> | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw badParam('response_format', `'response_format' must be an object, got ${typeName(v)}`, 'invalid_type');
  switch (v.type) {
    case 'text':
      return undefined;
    case 'json_object':
      return { type: 'object' };
    case 'json_schema': {
      const js = v.json_schema;
      if (!isObject(js)) throw badParam('response_format.json_schema', "'response_format.json_schema' must be an object", 'invalid_type');
      if (typeof js.name !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(js.name)) {
        throw badParam('response_format.json_schema.name', "'response_format.json_schema.name' must be a string of a-z, A-Z, 0-9, _ and - (at most 64)");
      }
      if (js.strict !== undefined && js.strict !== null && typeof js.strict !== 'boolean') {
        throw badParam('response_format.json_schema.strict', "'response_format.json_schema.strict' must be a boolean", 'invalid_type');
      }
      if (!isObject(js.schema)) throw badParam('response_format.json_schema.schema', "'response_format.json_schema.schema' must be a JSON schema object", 'invalid_type');
      return js.schema;
    }
    default:
      throw badParam('response_format.type', `'response_format.type' must be 'text', 'json_object' or 'json_schema', got ${JSON.stringify(v.type)}`);
  }
}

/** Fields OpenAI defines that we cannot honour: refused unless given their no-op value. */
const UNSUPPORTED: Array<[string, (v: unknown) => boolean]> = [
  ['tools', (v) => Array.isArray(v) && v.length === 0],
  ['tool_choice', (v) => v === 'none'],
  ['functions', (v) => Array.isArray(v) && v.length === 0],
  ['function_call', (v) => v === 'none'],
  ['logit_bias', (v) => isObject(v) && Object.keys(v).length === 0],
  ['audio', () => false],
  ['prediction', () => false],
];

/** The same for /v1/completions. */
const UNSUPPORTED_LEGACY: Array<[string, (v: unknown) => boolean]> = [
  ['echo', (v) => v === false],
  ['best_of', (v) => v === 1],
  ['logit_bias', (v) => isObject(v) && Object.keys(v).length === 0],
];

function checkBody(body: unknown, limits: ValidationLimits, unsupported: Array<[string, (v: unknown) => boolean]>): Record<string, unknown> {
  if (!isObject(body)) throw new HttpError(400, `the request body must be a JSON object, got ${typeName(body)}`, 'invalid_request_error', 'invalid_body');
  if (body.model !== undefined && body.model !== null) {
    if (typeof body.model !== 'string') throw badParam('model', `'model' must be a string, got ${typeName(body.model)}`, 'invalid_type');
    if (body.model !== limits.modelId) throw modelNotFound(body.model, limits.modelId);
  }
  for (const [key, isNoop] of unsupported) {
    const v = body[key];
    if (v !== undefined && v !== null && !isNoop(v)) throw badParam(key, `'${key}' is not supported by this server`, 'unsupported_parameter');
  }
  return body;
}

function modelNotFound(model: string, served: string): HttpError {
  return new HttpError(404, `The model '${model}' does not exist; this server serves '${served}'`, 'invalid_request_error', 'model_not_found', 'model');
}

/** Seeds the engine takes: whole numbers below 2^53 (exact in JSON and in a double; the native sampler's seed is a uint64). */
export const SEED_RANGE = 2 ** 53;

/**
 * A request's seed as the engine takes it, or undefined for a random one.
 * -1 is "random" (the llama.cpp / Ollama convention). Any other integer, as
 * OpenAI takes any int64, is reduced modulo 2^53 (two's complement, as an
 * int64 seed is a uint64 bit pattern): 0 .. 2^53-1 stay as they are, -2 is
 * 2^53-2, and so on, so distinct seeds stay distinct except where a 64-bit seed
 * cannot fit in 53 bits.
 */
export function engineSeed(seed: number | undefined): number | undefined {
  if (seed === undefined || seed === -1) return undefined;
  const r = seed % SEED_RANGE; // exact for doubles (fmod)
  return r < 0 ? r + SEED_RANGE : r + 0; // + 0 turns -0 into 0
}

/** Choice `index`'s seed: seed + index, wrapping at SEED_RANGE (computed without leaving the exact range). */
export function choiceSeed(seed: number, index: number): number {
  return index < SEED_RANGE - seed ? seed + index : index - (SEED_RANGE - seed);
}

/** max_tokens / max_completion_tokens, temperature, top_p, the extensions, penalties, seed, n and streaming. */
function parseCommon(body: Record<string, unknown>, limits: ValidationLimits): CommonRequest {
  const maxCompletion = optInteger(body, 'max_completion_tokens');
  const maxTokensField = optInteger(body, 'max_tokens');
  const maxKey = maxCompletion !== undefined ? 'max_completion_tokens' : 'max_tokens';
  const maxTokens = maxCompletion ?? maxTokensField ?? limits.defaultMaxTokens;
  if (maxTokens < 1) throw badParam(maxKey, `'${maxKey}' must be at least 1, got ${maxTokens}`);
  if (limits.maxTokensLimit !== undefined && maxTokens > limits.maxTokensLimit) {
    throw badParam(maxKey, `'${maxKey}' must be at most ${limits.maxTokensLimit} (the model's context length), got ${maxTokens}`);
  }

  let temperature = optNumber(body, 'temperature') ?? 1;
  if (temperature < 0 || temperature > 2) throw badParam('temperature', `'temperature' must be from 0 to 2, got ${temperature}`);
  let topP = optNumber(body, 'top_p') ?? 1;
  if (!(topP >= 0 && topP <= 1)) throw badParam('top_p', `'top_p' must be from 0 to 1, got ${topP}`);
  if (topP === 0) {
    // The smallest nucleus is the likeliest token alone: greedy, as OpenAI treats top_p 0
    // (the engine's sampler takes top_p in (0, 1], so it is switched off instead).
    temperature = 0;
    topP = 1;
  }
  const topK = optInteger(body, 'top_k');
  if (topK !== undefined && topK < 0) throw badParam('top_k', `'top_k' must be >= 0, got ${topK}`);
  const minP = optNumber(body, 'min_p');
  if (minP !== undefined && !(minP >= 0 && minP < 1)) throw badParam('min_p', `'min_p' must be in [0, 1), got ${minP}`);
  const repetitionPenalty = optNumber(body, 'repetition_penalty');
  if (repetitionPenalty !== undefined && !(repetitionPenalty > 0)) {
    throw badParam('repetition_penalty', `'repetition_penalty' must be > 0, got ${repetitionPenalty}`);
  }
  const penalty = (key: string) => {
    const v = optNumber(body, key);
    if (v !== undefined && !(v >= -2 && v <= 2)) throw badParam(key, `'${key}' must be from -2 to 2, got ${v}`);
    return v;
  };
  const presencePenalty = penalty('presence_penalty');
  const frequencyPenalty = penalty('frequency_penalty');
  const seed = engineSeed(optInteger(body, 'seed'));

  const n = optInteger(body, 'n') ?? 1;
  if (n < 1 || n > MAX_CHOICES) throw badParam('n', `'n' must be from 1 to ${MAX_CHOICES}, got ${n}`);

  const stream = optBoolean(body, 'stream') ?? false;
  let includeUsage = false;
  const so = body.stream_options;
  if (so !== undefined && so !== null) {
    if (!isObject(so)) throw badParam('stream_options', `'stream_options' must be an object, got ${typeName(so)}`, 'invalid_type');
    if (!stream) throw badParam('stream_options', "'stream_options' is only allowed when 'stream' is true");
    if (so.include_usage !== undefined && so.include_usage !== null && typeof so.include_usage !== 'boolean') {
      throw badParam('stream_options.include_usage', "'stream_options.include_usage' must be a boolean", 'invalid_type');
    }
    includeUsage = so.include_usage === true;
  }

  const sampling: CommonRequest['sampling'] = { temperature, topP };
  if (topK !== undefined) sampling.topK = topK;
  if (minP !== undefined) sampling.minP = minP;
  if (repetitionPenalty !== undefined) sampling.repetitionPenalty = repetitionPenalty;
  if (presencePenalty) sampling.presencePenalty = presencePenalty;
  if (frequencyPenalty) sampling.frequencyPenalty = frequencyPenalty;
  return { maxTokens, sampling, ...(seed !== undefined ? { seed } : {}), stop: parseStop(body.stop), n, stream, includeUsage };
}

function topLogprobsCount(body: Record<string, unknown>, key: string): number | undefined {
  const k = optInteger(body, key);
  if (k !== undefined && (k < 0 || k > MAX_TOP_LOGPROBS)) throw badParam(key, `'${key}' must be from 0 to ${MAX_TOP_LOGPROBS}, got ${k}`);
  return k;
}

/** Validates a parsed /v1/chat/completions body; throws HttpError (400 / 404) naming the parameter. */
export function parseChatCompletionRequest(body: unknown, limits: ValidationLimits): ChatCompletionRequest {
  const b = checkBody(body, limits, UNSUPPORTED);
  const messages = parseMessages(b.messages);
  const common = parseCommon(b, limits);
  const logprobs = optBoolean(b, 'logprobs') ?? false;
  const top = topLogprobsCount(b, 'top_logprobs');
  if (top !== undefined && !logprobs) throw badParam('top_logprobs', "'top_logprobs' needs 'logprobs': true");
  if (logprobs) common.sampling.logprobs = top ?? 0;
  const jsonSchema = parseResponseFormat(b.response_format);
  return { messages, ...common, logprobs, ...(jsonSchema ? { jsonSchema } : {}) };
}

/** Validates a parsed /v1/completions body; throws HttpError (400 / 404) naming the parameter. */
export function parseCompletionRequest(body: unknown, limits: ValidationLimits): CompletionRequest {
  const b = checkBody(body, limits, UNSUPPORTED_LEGACY);
  const prompts = parsePrompt(b.prompt);
  const common = parseCommon(b, limits);
  if (prompts.length * common.n > MAX_CHOICES) {
    throw badParam('n', `${prompts.length} prompts x n = ${common.n} is ${prompts.length * common.n} choices; at most ${MAX_CHOICES}`);
  }
  let suffix: string | undefined;
  if (b.suffix !== undefined && b.suffix !== null) {
    if (typeof b.suffix !== 'string') throw badParam('suffix', `'suffix' must be a string, got ${typeName(b.suffix)}`, 'invalid_type');
    suffix = b.suffix;
  }
  const logprobs = topLogprobsCount(b, 'logprobs');
  if (logprobs !== undefined) common.sampling.logprobs = logprobs;
  return { prompts, ...common, ...(suffix !== undefined ? { suffix } : {}), ...(logprobs !== undefined ? { logprobs } : {}) };
}

/** A string or an array of strings; token-id prompts are refused (the server takes text). */
function parsePrompt(v: unknown): string[] {
  if (v === undefined || v === null) throw badParam('prompt', "'prompt' is required", 'missing_required_parameter');
  if (typeof v === 'string') return [v];
  if (!Array.isArray(v)) throw badParam('prompt', `'prompt' must be a string or an array of strings, got ${typeName(v)}`, 'invalid_type');
  if (v.length === 0) throw badParam('prompt', "'prompt' must not be an empty array");
  if (v.every((p) => typeof p === 'string')) return v as string[];
  throw badParam('prompt', "'prompt' must be a string or an array of strings: token-id prompts are not supported, send the text", 'invalid_type');
}

/** The generate() parameters of choice `index`; a request without a seed gets a random one per choice. */
export function generateParamsFor(req: ChatCompletionRequest, index: number): Omit<GenerateParams, 'requestId'> {
  return {
    messages: req.messages,
    ...commonParams(req, index),
    ...(req.jsonSchema ? { jsonSchema: req.jsonSchema } : {}),
  };
}

/** The same for /v1/completions: choice `index` reads prompt floor(index / n). */
export function completionParamsFor(req: CompletionRequest, index: number): Omit<GenerateParams, 'requestId'> {
  return {
    prompt: req.prompts[Math.floor(index / req.n)],
    ...(req.suffix !== undefined ? { suffix: req.suffix } : {}),
    ...commonParams(req, index),
  };
}

function commonParams(req: CommonRequest, index: number): Omit<GenerateParams, 'requestId'> {
  return {
    maxTokens: req.maxTokens,
    sampling: { ...req.sampling, seed: req.seed !== undefined ? choiceSeed(req.seed, index) : crypto.randomInt(2 ** 32) },
    ...(req.stop.length > 0 ? { stop: req.stop } : {}),
  };
}

// ---------------------------------------------------------------------------
// Responses (pure)

/** One server-sent event carrying JSON (or the literal [DONE]). */
export function sseData(data: unknown): string {
  return `data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`;
}

export type OpenAiFinishReason = 'stop' | 'length';

export function openAiFinishReason(r: GenerateResult['finishReason']): OpenAiFinishReason {
  return r === 'length' ? 'length' : 'stop';
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

/**
 * Usage of choices made `n` per prompt (choice i reads prompt floor(i / n)):
 * each prompt counted once, as OpenAI does; cached tokens are each prompt's first choice's.
 */
export function usageOf(results: GenerateResult[], n = results.length): Usage {
  const firsts = results.filter((_, i) => i % Math.max(1, n) === 0);
  const prompt = firsts.reduce((s, r) => s + r.promptTokens, 0);
  const completion = results.reduce((s, r) => s + r.generatedTokens, 0);
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: firsts.reduce((s, r) => s + r.cachedPromptTokens, 0) },
  };
}

/** Chat logprobs: {content: [{token, logprob, bytes, top_logprobs}]}. */
export function chatLogprobs(entries: TokenLogprob[]) {
  return {
    content: entries.map((e) => ({
      token: e.token,
      logprob: e.logprob,
      bytes: e.bytes,
      top_logprobs: e.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes })),
    })),
    refusal: null,
  };
}

/**
 * Legacy completions logprobs: parallel lists, top alternatives as {token: logprob}
 * (alternatives that spell the same text keep the likeliest), text_offset from
 * `offset` (the characters of this choice's text before these tokens).
 */
export function completionLogprobs(entries: TokenLogprob[], offset = 0) {
  const textOffset: number[] = [];
  for (const e of entries) {
    textOffset.push(offset);
    offset += e.token.length;
  }
  return {
    tokens: entries.map((e) => e.token),
    token_logprobs: entries.map((e) => e.logprob),
    top_logprobs: entries.map((e) => {
      const top: Record<string, number> = {};
      for (const t of e.top) if (!(t.token in top)) top[t.token] = t.logprob;
      return top;
    }),
    text_offset: textOffset,
  };
}

export function completionBody(id: string, created: number, model: string, results: GenerateResult[]) {
  return {
    id,
    object: 'chat.completion' as const,
    created,
    model,
    choices: results.map((r, index) => ({
      index,
      message: { role: 'assistant' as const, content: r.text, refusal: null },
      logprobs: r.logprobs ? chatLogprobs(r.logprobs) : null,
      finish_reason: openAiFinishReason(r.finishReason),
    })),
    usage: usageOf(results),
    system_fingerprint: null,
  };
}

export function chunkBody(
  id: string,
  created: number,
  model: string,
  choices: Array<{ index: number; delta: { role?: 'assistant'; content?: string }; finish_reason: OpenAiFinishReason | null; logprobs?: TokenLogprob[] }>,
  usage?: Usage | null,
) {
  return {
    id,
    object: 'chat.completion.chunk' as const,
    created,
    model,
    system_fingerprint: null,
    choices: choices.map(({ logprobs, ...c }) => ({ ...c, logprobs: logprobs ? chatLogprobs(logprobs) : null })),
    ...(usage !== undefined ? { usage } : {}),
  };
}

/** A /v1/completions response; choices made `n` per prompt. */
export function textCompletionBody(id: string, created: number, model: string, results: GenerateResult[], n: number) {
  return {
    id,
    object: 'text_completion' as const,
    created,
    model,
    choices: results.map((r, index) => ({
      text: r.text,
      index,
      logprobs: r.logprobs ? completionLogprobs(r.logprobs) : null,
      finish_reason: openAiFinishReason(r.finishReason),
    })),
    usage: usageOf(results, n),
    system_fingerprint: null,
  };
}

/** One streamed /v1/completions event (OpenAI streams text_completion objects too). */
export function textCompletionChunk(
  id: string,
  created: number,
  model: string,
  choices: Array<{ index: number; text: string; finish_reason: OpenAiFinishReason | null; logprobs?: ReturnType<typeof completionLogprobs> }>,
  usage?: Usage | null,
) {
  return {
    id,
    object: 'text_completion' as const,
    created,
    model,
    system_fingerprint: null,
    choices: choices.map((c) => ({ text: c.text, index: c.index, logprobs: c.logprobs ?? null, finish_reason: c.finish_reason })),
    ...(usage !== undefined ? { usage } : {}),
  };
}

// ---------------------------------------------------------------------------
// Endpoints: what a request runs, and how its answers look

/** What serving one request needs: the choices to generate and the bodies and events of its answer. */
export interface CompletionRun {
  /** generate() parameters, one per choice, in choice order. */
  choices: Array<Omit<GenerateParams, 'requestId'>>;
  stream: boolean;
  includeUsage: boolean;
  body(results: GenerateResult[]): unknown;
  /** Stream events: a choice's first (if any), its text (with the tokens' logprobs when asked), its last, the usage. */
  opening(index: number): unknown;
  content(index: number, text: string, logprobs?: TokenLogprob[]): unknown;
  finish(index: number, reason: OpenAiFinishReason): unknown;
  usage(results: GenerateResult[]): unknown;
}

export function chatRun(req: ChatCompletionRequest, id: string, created: number, model: string): CompletionRun {
  const usageField = req.includeUsage ? null : undefined;
  return {
    choices: Array.from({ length: req.n }, (_, i) => generateParamsFor(req, i)),
    stream: req.stream,
    includeUsage: req.includeUsage,
    body: (results) => completionBody(id, created, model, results),
    opening: (index) => chunkBody(id, created, model, [{ index, delta: { role: 'assistant', content: '' }, finish_reason: null }], usageField),
    content: (index, content, logprobs) =>
      chunkBody(id, created, model, [{ index, delta: { content }, finish_reason: null, ...(logprobs ? { logprobs } : {}) }], usageField),
    finish: (index, reason) => chunkBody(id, created, model, [{ index, delta: {}, finish_reason: reason }], usageField),
    usage: (results) => chunkBody(id, created, model, [], usageOf(results)),
  };
}

export function textRun(req: CompletionRequest, id: string, created: number, model: string): CompletionRun {
  const usageField = req.includeUsage ? null : undefined;
  const choices = req.prompts.length * req.n;
  /** Characters of each choice's text streamed so far (logprobs' text_offset). */
  const offsets = new Array<number>(choices).fill(0);
  return {
    choices: Array.from({ length: choices }, (_, i) => completionParamsFor(req, i)),
    stream: req.stream,
    includeUsage: req.includeUsage,
    body: (results) => textCompletionBody(id, created, model, results, req.n),
    opening: () => undefined,
    content: (index, text, logprobs) => {
      const lp = logprobs ? completionLogprobs(logprobs, offsets[index]) : undefined;
      offsets[index] += text.length;
      return textCompletionChunk(id, created, model, [{ index, text, finish_reason: null, ...(lp ? { logprobs: lp } : {}) }], usageField);
    },
    finish: (index, reason) => textCompletionChunk(id, created, model, [{ index, text: '', finish_reason: reason }], usageField),
    usage: (results) => textCompletionChunk(id, created, model, [], usageOf(results, req.n)),
  };
}

// ---------------------------------------------------------------------------
// Metrics

const PREFIX = 'mlx_batch_';
const FINISH_REASONS = ['stop', 'length', 'cancelled', 'error'] as const;

/** Prometheus metrics on a registry of our own; engine values are copied from client.metrics() at scrape time. */
export class ServerMetrics {
  readonly registry = new Registry();
  private readonly requests = this.counter('requests_total', 'Generation requests finished in the engine, by finish reason', ['finish_reason']);
  private readonly promptTokens = this.counter('prompt_tokens_total', 'Prompt tokens of requests admitted to the batch (finished or running)');
  private readonly cachedPromptTokens = this.counter('cached_prompt_tokens_total', 'Prompt tokens whose KV came from a shared prefix');
  private readonly prefillTokens = this.counter('prefill_tokens_total', 'Prompt tokens run through prefill');
  private readonly generatedTokens = this.counter('generated_tokens_total', 'Tokens generated');
  private readonly decodeTokens = this.counter('decode_tokens_total', 'Tokens produced by batched decode steps');
  private readonly decodeSeconds = this.counter('decode_seconds_total', 'Time spent in batched decode steps');
  private readonly prefillSeconds = this.counter('prefill_seconds_total', 'Time spent in prefill calls');
  private readonly running = this.gauge('running_requests', 'Rows in the decoding batch (batch occupancy)');
  private readonly prefilling = this.gauge('prefilling_requests', 'Requests being prefilled');
  private readonly queued = this.gauge('queued_requests', 'Requests waiting for a batch slot or KV memory');
  private readonly maxBatch = this.gauge('max_batch', 'Most rows decoded together');
  private readonly kvBytes = this.gauge('kv_cache_bytes', 'KV cache bytes held by running requests (saved prefixes: prefix_cache_bytes)');
  private readonly kvBudget = this.gauge('kv_cache_budget_bytes', 'KV cache budget in bytes');
  private readonly prefixBytes = this.gauge('prefix_cache_bytes', 'Bytes held by saved shared prefixes');
  private readonly decodeTps = this.gauge('decode_tokens_per_second', 'Decode throughput over the last few seconds');
  private readonly prefillTps = this.gauge('prefill_tokens_per_second', 'Prefill throughput over the last few seconds');
  private readonly activeMemory = this.gauge('active_memory_bytes', 'MLX memory in use');
  private readonly peakMemory = this.gauge('peak_memory_bytes', 'Most MLX memory in use since the engine started (or its peak was reset)');
  private readonly uptime = this.gauge('engine_uptime_seconds', 'Seconds since the engine started');
  private readonly up = this.gauge('engine_up', '1 when the engine answered the last scrape, else 0');
  private readonly httpRequests = this.counter('http_requests_total', 'HTTP requests answered, by route and status code', ['route', 'code']);
  private readonly httpDisconnects = this.counter('http_client_disconnects_total', 'Completion requests (chat or text) whose client went away before the answer');
  readonly timeToFirstToken = new Histogram({
    name: `${PREFIX}time_to_first_token_seconds`,
    help: 'Time from the HTTP request to the first generated token',
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly requestDuration = new Histogram({
    name: `${PREFIX}http_request_duration_seconds`,
    help: 'Completion requests (chat or text), from request to the last byte',
    buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
    registers: [this.registry],
  });

  private counter<L extends string>(name: string, help: string, labelNames: L[] = []) {
    return new Counter<L>({ name: PREFIX + name, help, labelNames, registers: [this.registry] });
  }

  private gauge(name: string, help: string) {
    return new Gauge({ name: PREFIX + name, help, registers: [this.registry] });
  }

  countHttp(route: string, code: number): void {
    this.httpRequests.inc({ route, code: String(code) });
  }

  countDisconnect(): void {
    this.httpDisconnects.inc();
  }

  /** Copies a snapshot in (counters take the snapshot's cumulative values). */
  update(s: MetricsSnapshot | undefined, info?: ModelInfo): void {
    if (!s) {
      this.up.set(0);
      return;
    }
    this.up.set(1);
    const setCounter = (c: Counter<string>, v: number, labels?: Record<string, string>) => {
      if (labels) c.remove(labels);
      else c.reset();
      const value = Math.max(0, Number.isFinite(v) ? v : 0);
      if (labels) c.inc(labels, value);
      else c.inc(value);
    };
    for (const reason of FINISH_REASONS) setCounter(this.requests, s.requests?.[reason] ?? 0, { finish_reason: reason });
    setCounter(this.promptTokens, s.promptTokens);
    setCounter(this.cachedPromptTokens, s.cachedPromptTokens);
    setCounter(this.prefillTokens, s.prefillTokens);
    setCounter(this.generatedTokens, s.generatedTokens);
    setCounter(this.decodeTokens, s.decodeTokens);
    setCounter(this.decodeSeconds, s.decodeSeconds);
    setCounter(this.prefillSeconds, s.prefillSeconds);
    this.activeMemory.set(s.activeMemoryBytes ?? 0);
    this.peakMemory.set(s.peakMemoryBytes ?? 0);
    this.running.set(s.running);
    this.prefilling.set(s.prefilling);
    this.queued.set(s.queued);
    this.kvBytes.set(s.kvBytes);
    this.kvBudget.set(s.kvBudgetBytes);
    this.prefixBytes.set(s.prefixCacheBytes);
    this.decodeTps.set(s.decodeTokensPerSecond);
    this.prefillTps.set(s.prefillTokensPerSecond);
    this.uptime.set(s.uptimeSeconds);
    if (info) this.maxBatch.set(info.maxBatch);
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

// ---------------------------------------------------------------------------
// Server

function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new HttpError(413, `request body of ${declared} bytes is over the limit of ${limit} bytes`, 'invalid_request_error', 'request_too_large'));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    req.on('data', (c: Buffer) => {
      if (failed) return;
      size += c.length;
      if (size > limit) {
        failed = true;
        chunks.length = 0;
        reject(new HttpError(413, `request body is over the limit of ${limit} bytes`, 'invalid_request_error', 'request_too_large'));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (!failed) resolve(Buffer.concat(chunks));
    });
    req.on('error', (e) => {
      if (!failed) reject(e);
    });
  });
}

function parseJson(buf: Buffer): unknown {
  const text = buf.toString('utf8');
  if (text.trim() === '') throw new HttpError(400, 'the request body is empty; expected a JSON object', 'invalid_request_error', 'invalid_body');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `the request body is not valid JSON: ${(e as Error).message}`, 'invalid_request_error', 'invalid_json');
  }
}

/**
 * A server-sent-event response that respects backpressure: once res.write()
 * reports a full socket, later events wait for 'drain', and content deltas
 * waiting there are merged per choice, so a slow reader holds the text, not
 * one event per token. Created holding (before the response headers are
 * sent), it keeps everything the same way until release().
 */
class SseStream {
  lastWrite = Date.now();
  private readonly held: Array<{ index: number; text: string } | { sse: string }> = [];
  /** The socket is full: wait for 'drain'. */
  private blocked = false;
  private ending = false;

  constructor(
    private readonly res: http.ServerResponse,
    private readonly contentEvent: (index: number, text: string) => unknown,
    /** Nothing is written until release() (the headers are not sent yet). */
    private holding = false,
  ) {}

  private get waiting(): boolean {
    return this.blocked || this.holding;
  }

  event(data: unknown): void {
    this.push({ sse: sseData(data) });
  }

  /** Only when nothing waits: a comment is not worth queueing. */
  comment(text: string): void {
    if (!this.waiting) this.send(`: ${text}\n\n`);
  }

  content(index: number, text: string): void {
    if (this.waiting) {
      for (let k = this.held.length - 1; k >= 0; k--) {
        const h = this.held[k];
        if ('index' in h && h.index === index) {
          h.text += text;
          return;
        }
      }
    }
    this.push({ index, text });
  }

  /** Writes what was held since the stream was created (call once the headers are out). */
  release(): void {
    if (!this.holding) return;
    this.holding = false;
    this.flush();
  }

  /** Ends the response once everything held has been written. */
  end(): void {
    this.ending = true;
    if (!this.waiting) this.res.end();
  }

  private push(h: { index: number; text: string } | { sse: string }): void {
    if (this.waiting) this.held.push(h);
    else this.send(this.render(h));
  }

  private render(h: { index: number; text: string } | { sse: string }): string {
    return 'sse' in h ? h.sse : sseData(this.contentEvent(h.index, h.text));
  }

  private send(text: string): void {
    if (this.res.destroyed) return;
    this.lastWrite = Date.now();
    if (!this.res.write(text)) {
      this.blocked = true;
      this.res.once('drain', () => this.flush());
    }
  }

  private flush(): void {
    this.blocked = false;
    while (this.held.length > 0 && !this.blocked) this.send(this.render(this.held.shift()!));
    if (!this.blocked && this.ending) this.res.end();
  }
}

/** 503 once the engine's supervisor has given up: nothing will answer until the server is restarted. */
function engineUnavailable(reason: string): HttpError {
  return new HttpError(503, `the engine is not running: ${reason}`, 'server_error', 'engine_unavailable');
}

/** The HTTP error for a choice that ended in error or was cancelled while its client was still there. */
export function failureError(r: GenerateResult): HttpError {
  if (r.finishReason === 'error' && r.errorType === 'invalid_request') {
    return new HttpError(400, r.error ?? 'invalid request', 'invalid_request_error', r.errorCode ?? 'invalid_request', r.errorParam ?? null);
  }
  if (r.finishReason === 'error' && r.errorType === 'overloaded') {
    return new HttpError(429, r.error ?? 'the request queue is full', 'rate_limit_error', 'queue_full', null, {
      'Retry-After': String(RETRY_AFTER_SECONDS),
    });
  }
  if (r.finishReason === 'error') return new HttpError(500, `generation failed: ${r.error ?? 'unknown error'}`, 'server_error', 'generation_failed');
  return new HttpError(503, `generation was cancelled: ${r.error ?? 'the server is shutting down'}`, 'server_error', 'cancelled');
}

const ROUTES: Record<string, string[]> = {
  '/v1/chat/completions': ['POST'],
  '/v1/completions': ['POST'],
  '/v1/models': ['GET'],
  '/v1/models/{id}': ['GET'],
  '/metrics': ['GET'],
};

/** The route a path belongs to (its metrics label), and the model id of /v1/models/{id}. */
function routeOf(path: string): { route: string; modelId?: string } {
  const m = /^\/v1\/models\/(.+)$/.exec(path);
  if (m) {
    let id = m[1];
    try {
      id = decodeURIComponent(id);
    } catch {
      // kept as sent: it names no model we serve anyway
    }
    return { route: '/v1/models/{id}', modelId: id };
  }
  return { route: ROUTES[path] ? path : 'other' };
}

/**
 * The path a request target names, for routing: repeated slashes collapsed (a
 * client that joins a base URL ending in '/' with '/models' sends
 * '//v1/models'), trailing ones dropped, dot segments resolved; the query left
 * out. `shown` is the path as sent, for error messages. An absolute-form target
 * (http://host/path, as proxies send) routes by its path. A target that names
 * no path ('*', 'x') throws HttpError 400.
 */
export function requestPath(target: string): { path: string; shown: string } {
  const badTarget = () => new HttpError(400, `the request target ${JSON.stringify(target.slice(0, 200))} is not a path`, 'invalid_request_error', 'invalid_path');
  let raw = target;
  if (!raw.startsWith('/')) {
    let absolute: URL;
    try {
      absolute = new URL(raw);
    } catch {
      throw badTarget();
    }
    if (absolute.protocol !== 'http:' && absolute.protocol !== 'https:') throw badTarget();
    raw = absolute.pathname + absolute.search;
  }
  const shown = raw.replace(/[?#].*$/s, '') || '/';
  let path: string;
  try {
    // After the collapse the path starts with one '/', so it cannot be taken for a host.
    path = new URL(`http://127.0.0.1${shown.replace(/[/\\]{2,}/g, '/')}`).pathname;
  } catch {
    throw badTarget();
  }
  return { path: path.replace(/\/{2,}/g, '/').replace(/\/+$/, '') || '/', shown };
}

export function modelIdFromPath(modelPath: string): string {
  const base = modelPath.replace(/[\\/]+$/, '').split(/[\\/]/).pop() ?? modelPath;
  return base.replace(/\.gguf$/i, '');
}

export async function startOpenAiServer(options: OpenAiServerOptions): Promise<OpenAiServer> {
  const { client, token, modelId } = options;
  if (!token) throw new Error('startOpenAiServer: a non-empty token is required');
  const maxBody = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const streamHeaderGraceMs = options.streamHeaderGraceMs ?? DEFAULT_STREAM_HEADER_GRACE_MS;
  const streamAcceptTimeoutMs = options.streamAcceptTimeoutMs ?? DEFAULT_STREAM_ACCEPT_TIMEOUT_MS;
  const heartbeatMs = options.heartbeatMs ?? 15_000;
  const log = options.log ?? (() => {});
  const metrics = new ServerMetrics();
  const created = Math.floor(Date.now() / 1000);
  /** Generations in flight, so close() can cancel them. */
  const inflight = new Set<AbortController>();
  /** The port listened on (set once listening; the Host check needs it). */
  let port = 0;
  let closing = false;

  const sendJson = (res: http.ServerResponse, route: string, status: number, body: unknown, headers: Record<string, string> = {}) => {
    metrics.countHttp(route, status);
    if (res.headersSent || res.destroyed) {
      res.end();
      return;
    }
    const text = JSON.stringify(body);
    res.writeHead(status, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(text),
      ...(closing ? { Connection: 'close' } : {}),
      ...headers,
    });
    res.end(text);
  };

  const sendError = (res: http.ServerResponse, route: string, e: HttpError) => sendJson(res, route, e.status, e.body(), e.headers);

  const limits = (): ValidationLimits => ({
    modelId,
    defaultMaxTokens: options.defaultMaxTokens ?? DEFAULT_MAX_TOKENS,
    maxTokensLimit: client.info?.contextLength,
  });

  const readyToGenerate = () => {
    if (closing) throw new HttpError(503, 'the server is shutting down', 'server_error', 'shutting_down');
    if (client.failure) throw engineUnavailable(client.failure);
  };

  async function chatCompletions(req: http.IncomingMessage, res: http.ServerResponse, route: string) {
    const t0 = performance.now();
    const parsed = parseChatCompletionRequest(parseJson(await readBody(req, maxBody)), limits());
    readyToGenerate();
    const id = `chatcmpl-${crypto.randomBytes(12).toString('hex')}`;
    await serveCompletion(res, route, t0, chatRun(parsed, id, Math.floor(Date.now() / 1000), modelId));
  }

  async function textCompletions(req: http.IncomingMessage, res: http.ServerResponse, route: string) {
    const t0 = performance.now();
    const parsed = parseCompletionRequest(parseJson(await readBody(req, maxBody)), limits());
    readyToGenerate();
    const id = `cmpl-${crypto.randomBytes(12).toString('hex')}`;
    await serveCompletion(res, route, t0, textRun(parsed, id, Math.floor(Date.now() / 1000), modelId));
  }

  /** Runs a request's choices and answers them, whole or streamed. */
  async function serveCompletion(res: http.ServerResponse, route: string, t0: number, plan: CompletionRun) {
    const choices = plan.choices.length;
    const abort = new AbortController();
    inflight.add(abort);
    let clientGone = false;
    // 'close' on the response fires when it is done or when the connection dies first.
    res.on('close', () => {
      if (!res.writableFinished) {
        clientGone = true;
        if (!abort.signal.aborted) metrics.countDisconnect();
        abort.abort();
      }
    });
    let firstTokenSeen = false;
    const firstToken = () => {
      if (!firstTokenSeen) {
        firstTokenSeen = true;
        metrics.timeToFirstToken.observe((performance.now() - t0) / 1000);
      }
    };
    /** The first failed choice; the others are cancelled, since the answer is an error anyway. */
    let failure: GenerateResult | undefined;
    const run = (i: number, onDelta: (d: TokenDelta) => void, onPrefill?: () => void) =>
      client.generate(plan.choices[i], { signal: abort.signal, onDelta, ...(onPrefill ? { onPrefill } : {}) }).then((r) => {
        if (r.finishReason === 'error' || r.finishReason === 'cancelled') {
          // An error outranks the cancellations it causes in its siblings.
          if (!failure || (failure.finishReason === 'cancelled' && r.finishReason === 'error')) failure = r;
          abort.abort();
        }
        return r;
      });

    let stopTimers = () => {};
    try {
      if (!plan.stream) {
        const results = await Promise.all(Array.from({ length: choices }, (_, i) => run(i, firstToken)));
        if (clientGone) return;
        if (failure) throw client.failure ? engineUnavailable(client.failure) : failureError(failure);
        sendJson(res, route, 200, plan.body(results));
        return;
      }

      // Streaming: one SSE event per engine step and choice. The headers wait
      // until the engine has accepted every choice (its first event for each:
      // prefill progress or a token; a refusal such as context_length_exceeded
      // or an invalid schema comes before, however long the prompt takes to
      // tokenize), so a refused request gets its HTTP status and JSON body.
      // Then they go out with the first token or after a short grace period,
      // whichever comes first: a generation that fails at once still gets a
      // plain HTTP error. A backend that never says it accepted a request gets them after
      // streamAcceptTimeoutMs in any case, before client timeouts (undici:
      // 300 s); while nothing else is written, an SSE comment every heartbeatMs
      // keeps idle-read timeouts away. What comes before the headers is held
      // (content merged per choice) and written after them.
      const stream = new SseStream(res, (index, text) => plan.content(index, text), true);
      for (let i = 0; i < choices; i++) {
        const opening = plan.opening(i);
        if (opening !== undefined) stream.event(opening);
      }
      const openStream = () => {
        if (res.headersSent || clientGone || res.destroyed || failure) return;
        metrics.countHttp(route, 200);
        res.writeHead(200, {
          'Content-Type': 'text/event-stream; charset=utf-8',
          'Cache-Control': 'no-cache',
          ...(closing ? { Connection: 'close' } : {}),
          'X-Accel-Buffering': 'no',
        });
        stream.release();
      };
      /** Choices the engine has not accepted yet; until none is left, nothing is sent. */
      const accepted = new Array<boolean>(choices).fill(false);
      let unaccepted = choices;
      /** Whether an event (text, a choice's end) waits for the headers. */
      let eventsHeld = false;
      let graceTimer: NodeJS.Timeout | undefined;
      const accept = (i: number) => {
        if (accepted[i]) return;
        accepted[i] = true;
        if (--unaccepted > 0 || failure) return;
        if (eventsHeld) openStream();
        else graceTimer = setTimeout(openStream, streamHeaderGraceMs);
      };
      const acceptTimer = setTimeout(openStream, streamAcceptTimeoutMs);
      const heartbeat = setInterval(() => {
        if (res.headersSent && !clientGone && Date.now() - stream.lastWrite >= heartbeatMs) stream.comment('keep-alive');
      }, Math.max(10, Math.floor(heartbeatMs / 2)));
      stopTimers = () => {
        clearTimeout(acceptTimer);
        clearTimeout(graceTimer);
        clearInterval(heartbeat);
      };
      /** Sends (or holds) choice i's event: that choice has been accepted, since the engine made it. */
      const emit = (i: number, send: () => void) => {
        if (clientGone || res.destroyed) return;
        eventsHeld = true;
        accept(i);
        if (unaccepted === 0) openStream();
        send();
      };
      const streamed = Array.from({ length: choices }, () => '');
      const results = await Promise.all(
        Array.from({ length: choices }, async (_, i) => {
          const r = await run(i, (d) => {
            firstToken();
            if (failure) return;
            if (d.logprobs && d.logprobs.length > 0) {
              // Text and its tokens' logprobs in one event (never merged with others while the socket is full).
              streamed[i] += d.text;
              emit(i, () => stream.event(plan.content(i, d.text, d.logprobs)));
              return;
            }
            if (!d.text) {
              accept(i);
              return;
            }
            streamed[i] += d.text;
            emit(i, () => stream.content(i, d.text));
          }, () => accept(i));
          if (failure) return r;
          // Text the deltas did not carry (should be none), then this choice's last chunk.
          const rest = r.text.startsWith(streamed[i]) ? r.text.slice(streamed[i].length) : '';
          if (rest) emit(i, () => stream.content(i, rest));
          emit(i, () => stream.event(plan.finish(i, openAiFinishReason(r.finishReason))));
          return r;
        }),
      );
      if (clientGone) return;
      if (failure) {
        const error = client.failure ? engineUnavailable(client.failure) : failureError(failure);
        if (!res.headersSent) throw error;
        // Once the stream has started: an SSE error event after what it holds, and no [DONE].
        stream.event(error.body());
        stream.end();
        return;
      }
      // Every choice ended well, so each was accepted and the stream is open (unless the client left).
      openStream();
      if (plan.includeUsage) stream.event(plan.usage(results));
      stream.event('[DONE]');
      stream.end();
    } finally {
      stopTimers();
      inflight.delete(abort);
      if (!clientGone) metrics.requestDuration.observe((performance.now() - t0) / 1000);
    }
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse) {
    // The target as sent, for messages and logs; parsed inside the try, so a bad one is a JSON error.
    const target = req.url ?? '/';
    let route = 'other';
    try {
      let parsed: ReturnType<typeof requestPath> | HttpError;
      try {
        parsed = requestPath(target);
        route = routeOf(parsed.path).route;
      } catch (e) {
        parsed = e as HttpError; // answered after the Host and token checks, as any other route's errors
      }
      if (!allowedHost(req.headers.host, port)) {
        throw new HttpError(403, `the Host header ${JSON.stringify(req.headers.host ?? '')} is not allowed: ` +
          `use 127.0.0.1:${port}, localhost:${port} or [::1]:${port}`, 'invalid_request_error', 'forbidden_host');
      }
      if (!authorized(req.headers.authorization, token)) {
        throw new HttpError(401, 'Incorrect or missing API key: send "Authorization: Bearer <token>"', 'invalid_request_error', 'invalid_api_key', null, {
          'WWW-Authenticate': 'Bearer',
        });
      }
      if (parsed instanceof Error) throw parsed;
      const { path, shown } = parsed;
      const askedModel = routeOf(path).modelId;
      const methods = ROUTES[route];
      if (!methods) throw new HttpError(404, `no route ${req.method} ${shown}`, 'invalid_request_error', 'not_found');
      if (!methods.includes(req.method ?? '')) {
        throw new HttpError(405, `method ${req.method} is not allowed on ${path}; use ${methods.join(', ')}`, 'invalid_request_error', 'method_not_allowed', null, {
          Allow: methods.join(', '),
        });
      }
      const modelObject = { id: modelId, object: 'model', created, owned_by: 'mlx-batch' };
      switch (route) {
        case '/v1/models':
          sendJson(res, route, 200, { object: 'list', data: [modelObject] });
          return;
        case '/v1/models/{id}':
          if (askedModel !== modelId) throw modelNotFound(askedModel ?? '', modelId);
          sendJson(res, route, 200, modelObject);
          return;
        case '/metrics': {
          let snapshot: MetricsSnapshot | undefined;
          try {
            snapshot = await client.metrics();
          } catch (e) {
            log(`metrics: ${(e as Error).message}`);
          }
          metrics.update(snapshot, client.info);
          metrics.countHttp(route, 200);
          const text = await metrics.render();
          res.writeHead(200, { 'Content-Type': metrics.contentType, 'Content-Length': Buffer.byteLength(text) });
          res.end(text);
          return;
        }
        case '/v1/chat/completions':
          await chatCompletions(req, res, route);
          return;
        case '/v1/completions':
          await textCompletions(req, res, route);
          return;
      }
    } catch (e) {
      const err = e instanceof HttpError ? e : new HttpError(500, `internal error: ${(e as Error).message}`, 'server_error', 'internal_error');
      if (!(e instanceof HttpError)) log(`${req.method} ${JSON.stringify(target)}: ${(e as Error).stack ?? e}`);
      if (err.status === 413) {
        // Stop reading an oversized body: answer, then drop the connection.
        res.setHeader('Connection', 'close');
        res.on('finish', () => req.destroy());
      }
      if (res.headersSent) {
        if (!res.destroyed) {
          res.write(sseData(err.body()));
          res.end();
        }
        return;
      }
      if (req.readableEnded || err.status === 413) sendError(res, route, err);
      else {
        // Answer after the body is read, so the client sees the response instead
        // of a reset; a body over the limit is not worth reading: drop the connection.
        let drained = 0;
        req.on('data', (c: Buffer) => {
          drained += c.length;
          if (drained > maxBody) req.destroy();
        });
        req.resume();
        req.on('end', () => sendError(res, route, err));
        req.on('error', () => res.destroy());
      }
    }
  }

  const headersTimeout = options.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS;
  const requestTimeout = Math.max(headersTimeout, options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS);
  const server = http.createServer({
    headersTimeout,
    requestTimeout,
    // How often those two are checked (node's default, 30 s, would round short limits up to it).
    connectionsCheckingInterval: Math.max(100, Math.min(30_000, Math.floor(headersTimeout / 4))),
  }, (req, res) => {
    // While closing, drop each keep-alive connection as soon as its response is out.
    res.on('finish', () => {
      if (closing) setImmediate(() => server.closeIdleConnections());
    });
    handle(req, res).catch((e) => {
      log(`unhandled: ${(e as Error).stack ?? e}`);
      res.destroy();
    });
  });
  server.maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    const status = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
    if (socket.writable) socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\n\r\n`);
    else socket.destroy();
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, HOST, () => {
      server.off('error', reject);
      resolve();
    });
  });
  port = (server.address() as AddressInfo).port;
  const url = `http://${HOST}:${port}`;
  log(`listening on ${url}`);

  let closed: Promise<void> | undefined;
  return {
    url,
    port,
    host: HOST,
    metrics,
    close() {
      closed ??= new Promise<void>((resolve) => {
        closing = true;
        server.close(() => resolve());
        for (const a of inflight) a.abort();
        server.closeIdleConnections();
        // Responses of cancelled generations finish quickly; then drop whatever is left.
        const force = setTimeout(() => server.closeAllConnections(), 2000);
        force.unref();
        server.once('close', () => clearTimeout(force));
      });
      return closed;
    },
  };
}
