// The one protocol between the sidecar process (src/engine/sidecar.ts) and
// whoever drives it (SidecarClient in the CLI, the HTTP server, the VS Code
// extension): JSON-RPC over the Node IPC channel, typed here.
import { NotificationType, RequestType, RequestType0 } from 'vscode-jsonrpc';

import type { SamplingParams } from './native.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | string;
  content: string;
  [key: string]: unknown;
}

/** How the sidecar loads its model and schedules requests. */
export interface EngineSettings {
  /** A .gguf file or a model folder; default: the project's default model. */
  modelPath?: string;
  weights?: 'auto' | 'float32' | 'float16' | 'bfloat16' | 'quantized';
  device?: 'auto' | 'cpu' | 'gpu';
  /** Most rows decoded together (1 = one request at a time). */
  maxBatch?: number;
  /** Prompt tokens prefilled per scheduler step, across requests (decode rows keep streaming between). */
  prefillTokensPerStep?: number;
  /** KV cache budget in bytes; default derived from the machine's memory. */
  kvBudgetBytes?: number;
  /** Byte cap of saved shared prefixes (LRU). 0 disables prefix reuse. */
  prefixCacheBytes?: number;
  /** Most requests waiting for a batch slot; more are refused at once (errorType 'overloaded'). Default: no limit. */
  maxQueuedRequests?: number;
}

export interface ModelInfo {
  modelPath: string;
  architecture: string;
  device: 'cpu' | 'gpu';
  weights: string;
  /** GGUF: how many matrices stayed quantized and how many became dense, by type. */
  weightsNote?: string;
  contextLength: number;
  vocabSize: number;
  kvBytesPerToken: number;
  kvBudgetBytes: number;
  prefixCacheBytes: number;
  maxBatch: number;
  loadSeconds: number;
}

export interface GenerateParams {
  /** Chosen by the caller, unique among its requests in flight. */
  requestId: string;
  /** Chat messages, rendered with the model's chat template... */
  messages?: ChatMessage[];
  /** ...or a raw prompt, tokenized as is (BOS/EOS as the tokenizer's post-processor adds them, no chat template). */
  prompt?: string;
  /** With `prompt`: fill in the middle between prompt and suffix (needs the tokenizer's FIM tokens). */
  suffix?: string;
  /**
   * Most tokens to generate; cut to what the context leaves after the prompt
   * (finishReason 'length' there). A prompt that fills the context alone is an
   * error with errorCode 'context_length_exceeded'.
   */
  maxTokens: number;
  sampling?: Partial<SamplingParams>;
  stop?: string[];
  /** Constrained output: the text will parse and validate against this JSON schema. */
  jsonSchema?: Record<string, unknown>;
}

export type FinishReason = 'stop' | 'length' | 'cancelled' | 'error';

export interface GenerateResult {
  requestId: string;
  text: string;
  finishReason: FinishReason;
  /** Why, when finishReason is 'error' (or what cancelled it). */
  error?: string;
  /**
   * 'invalid_request': the request itself can never run as given (HTTP 400);
   * 'overloaded': the queue was full, try again later (HTTP 429); 'server': it failed while running.
   */
  errorType?: 'invalid_request' | 'overloaded' | 'server';
  /** An invalid request's OpenAI error code ('context_length_exceeded') and the parameter at fault, when known. */
  errorCode?: string;
  errorParam?: string;
  promptTokens: number;
  /** Prompt tokens whose KV came from a shared prefix instead of prefill. */
  cachedPromptTokens: number;
  generatedTokens: number;
  /** One per generated token (EOS included), when sampling.logprobs asked for them. */
  logprobs?: TokenLogprob[];
  /** queuedMs: until admitted to the batch; firstTokenMs and totalMs: from arrival. */
  timings: { queuedMs: number; firstTokenMs: number; totalMs: number };
}

/** Something to count the tokens of: raw text (no special tokens added), or chat messages through the template. */
export type TokenCountItem = { text: string } | { messages: ChatMessage[] };

/** Where a request's prompt stands while it is being read (prefilled); sent once per engine step, and once when it is queued. */
export interface PrefillProgress {
  requestId: string;
  promptTokens: number;
  /** Prompt tokens done so far, reused ones included. */
  prefilledTokens: number;
  /** Of those, tokens reused from a shared prefix. */
  cachedTokens: number;
  /** Sent once when the request is accepted (tokenized, its schema compiled) and queued: reading has not begun. */
  queued?: true;
}

/** A token's text and UTF-8 bytes with its log-probability (of the model's raw distribution). */
export interface TokenAlternative {
  token: string;
  logprob: number;
  bytes: number[];
}

/** A generated token and the most likely alternatives at its position. */
export interface TokenLogprob extends TokenAlternative {
  top: TokenAlternative[];
}

/** New text of one request; sent batched, one notification per engine step. */
export interface TokenDelta {
  requestId: string;
  text: string;
  tokens: number;
  /** The tokens' logprobs, when the request asked for them. */
  logprobs?: TokenLogprob[];
}

export interface MetricsSnapshot {
  requests: Record<FinishReason, number>;
  promptTokens: number;
  cachedPromptTokens: number;
  prefillTokens: number;
  generatedTokens: number;
  running: number;
  prefilling: number;
  queued: number;
  /** KV held by the running rows; saved prefixes are in prefixCacheBytes. */
  kvBytes: number;
  kvBudgetBytes: number;
  prefixCacheBytes: number;
  /** Over the last few seconds of work. */
  decodeTokensPerSecond: number;
  prefillTokensPerSecond: number;
  /** Cumulative time spent in batched decode steps and in prefill calls, and tokens from decode steps. */
  decodeSeconds: number;
  prefillSeconds: number;
  decodeTokens: number;
  activeMemoryBytes: number;
  peakMemoryBytes: number;
  uptimeSeconds: number;
}

export const Requests = {
  load: new RequestType<EngineSettings, ModelInfo, void>('model/load'),
  generate: new RequestType<GenerateParams, GenerateResult, void>('generate'),
  countTokens: new RequestType<{ items: TokenCountItem[] }, number[], void>('tokenizer/count'),
  metrics: new RequestType0<MetricsSnapshot, void>('metrics'),
  resetPeakMemory: new RequestType0<void, void>('metrics/resetPeakMemory'),
  shutdown: new RequestType0<void, void>('shutdown'),
};

export const Notifications = {
  cancel: new NotificationType<{ requestId: string }>('generate/cancel'),
  tokens: new NotificationType<{ deltas: TokenDelta[] }>('generate/tokens'),
  prefill: new NotificationType<{ progress: PrefillProgress[] }>('generate/prefill'),
};
