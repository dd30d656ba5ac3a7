// One interface for whatever answers the jobs: the built-in engine through the
// sidecar (backends/sidecar.ts) or any OpenAI-compatible server (backends/openai.ts).
import type { ChatMessage, TokenCountItem } from '../engine/protocol.js';

export interface CompletionRequest {
  /** Unique among the requests in flight. */
  id: string;
  messages: ChatMessage[];
  maxTokens: number;
  temperature: number;
  /** Constrained output where the backend supports it; the reply is parsed either way. */
  jsonSchema?: Record<string, unknown>;
  signal?: AbortSignal;
  /** New text as it is generated. */
  onDelta?: (text: string, tokens: number) => void;
  /** While the prompt is being read: tokens done (reused included) of the prompt's total. */
  onPrefill?: (done: number, total: number) => void;
}

export interface Completion {
  text: string;
  /** 'loop': the reply fell into a loop and was stopped there (RepetitionGuard); `error` says after how much. */
  finishReason: 'stop' | 'length' | 'loop' | 'cancelled' | 'error';
  error?: string;
  promptTokens: number;
  /** Prompt tokens reused from a cached prefix. */
  cachedTokens: number;
  generatedTokens: number;
}

export interface AskBackend {
  /** For reports: "built-in engine" or the server's URL. */
  readonly label: string;
  /** The model path (built-in) or the server's model name. */
  readonly model: string;
  readonly contextLength: number;
  /** Requests worth keeping in flight at once. */
  readonly concurrency: number;
  /** Exact counts where the backend has the model's tokenizer, estimates otherwise. */
  countTokens(items: TokenCountItem[]): Promise<number[]>;
  /** Never rejects: failures end as finishReason 'error' with the reason. */
  complete(request: CompletionRequest): Promise<Completion>;
}
