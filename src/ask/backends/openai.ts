// Any OpenAI-compatible chat server (our own `mlx-batch serve`, mlx_lm.server,
// Ollama, llama.cpp's server, LM Studio), streamed over SSE. The JSON schema
// goes as response_format json_schema (OpenAI, mlx_lm, vLLM, Ollama) until the
// server refuses it, then as json_object with a schema (llama-cpp-python), then
// not at all: the JSON is parsed from the text (prompt.ts extractJsonObject),
// and an unparseable reply is an error job, never dropped.
import type { TokenCountItem } from '../../engine/protocol.js';
import type { AskBackend, Completion, CompletionRequest } from '../backend.js';
import { estimateTokens } from './token-estimate.js';

export interface OpenAiBackendOptions {
  /** The server's base URL, with or without the trailing /v1. */
  url: string;
  model: string;
  apiKey?: string;
  /** Requests in flight at once. */
  concurrency: number;
  /** The model's context in tokens (servers do not say; used for chunk sizes). */
  contextLength: number;
}

/** A chat template's per-message tokens, roughly. */
const TOKENS_PER_MESSAGE_ESTIMATE = 8;

type SchemaStyle = 'json_schema' | 'json_object' | 'none';
const NEXT_STYLE: Record<SchemaStyle, SchemaStyle> = { json_schema: 'json_object', json_object: 'none', none: 'none' };

export class OpenAiBackend implements AskBackend {
  readonly label: string;
  readonly model: string;
  readonly contextLength: number;
  readonly concurrency: number;
  private readonly endpoint: string;
  /** How the schema is sent; steps down each time the server refuses one. */
  private schemaStyle: SchemaStyle = 'json_schema';

  constructor(private readonly options: OpenAiBackendOptions) {
    let base: URL;
    try {
      base = new URL(options.url);
    } catch {
      throw new Error(`--backend-url: '${options.url}' is not a URL (e.g. http://127.0.0.1:8080/v1)`);
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') throw new Error(`--backend-url: '${options.url}' is not an http(s) URL`);
    const root = base.href.replace(/\/+$/, '');
    this.endpoint = `${root.endsWith('/v1') ? root : `${root}/v1`}/chat/completions`;
    this.label = root;
    this.model = options.model;
    this.contextLength = options.contextLength;
    this.concurrency = options.concurrency;
  }

  async countTokens(items: TokenCountItem[]): Promise<number[]> {
    // Without the model's tokenizer: an estimate that errs high, so chunks fit the server's context.
    return items.map((item) => 'messages' in item
      ? item.messages.reduce((n, m) => n + TOKENS_PER_MESSAGE_ESTIMATE + estimateTokens(m.content), 0)
      : estimateTokens(item.text));
  }

  async complete(request: CompletionRequest): Promise<Completion> {
    let response: Response;
    try {
      for (;;) {
        const style = request.jsonSchema === undefined ? 'none' : this.schemaStyle;
        response = await this.post(request, style);
        // 400 from most servers, 422 or even 500 from pydantic-validated ones, when response_format is not understood.
        if (style === 'none' || response.ok) break;
        const body = await response.text();
        if (!/response_format|json_schema|json_object/i.test(body)) return this.failed(refusal(response.status, body));
        if (this.schemaStyle === style) this.schemaStyle = NEXT_STYLE[style];
      }
    } catch (e) {
      if (request.signal?.aborted) return { ...this.failed('cancelled'), finishReason: 'cancelled' };
      return this.failed(`cannot reach ${this.endpoint}: ${(e as Error).message}`);
    }
    if (!response.ok) {
      const body = await response.text().catch(() => '');
      return this.failed(refusal(response.status, body));
    }
    return this.readStream(response, request);
  }

  private post(request: CompletionRequest, style: SchemaStyle): Promise<Response> {
    const body = {
      model: this.options.model,
      messages: request.messages,
      max_tokens: request.maxTokens,
      temperature: request.temperature,
      stream: true,
      stream_options: { include_usage: true },
      ...(style === 'json_schema' ? { response_format: { type: 'json_schema', json_schema: { name: 'answer', schema: request.jsonSchema, strict: true } } } : {}),
      ...(style === 'json_object' ? { response_format: { type: 'json_object', schema: request.jsonSchema } } : {}),
    };
    return fetch(this.endpoint, {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json',
        ...(this.options.apiKey ? { Authorization: `Bearer ${this.options.apiKey}` } : {}),
      },
      body: JSON.stringify(body),
      signal: request.signal,
    });
  }

  private async readStream(response: Response, request: CompletionRequest): Promise<Completion> {
    let text = '';
    let chunks = 0;
    let finish: string | null = null;
    let usage: { prompt_tokens?: number; completion_tokens?: number; prompt_tokens_details?: { cached_tokens?: number } } | undefined;
    const decoder = new TextDecoder();
    let pending = '';
    try {
      for await (const bytes of response.body as unknown as AsyncIterable<Uint8Array>) {
        pending += decoder.decode(bytes, { stream: true });
        const events = pending.split(/\r?\n\r?\n/);
        pending = events.pop()!;
        for (const event of events) {
          const data = event.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
          if (data === '' || data === '[DONE]') continue;
          const chunk = JSON.parse(data);
          if (chunk.error) return this.failed(`the server reported: ${chunk.error.message ?? JSON.stringify(chunk.error)}`);
          if (chunk.usage) usage = chunk.usage;
          const choice = chunk.choices?.[0];
          if (!choice) continue;
          const piece: string = choice.delta?.content ?? '';
          if (piece) {
            text += piece;
            chunks++;
            request.onDelta?.(piece, 1);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    } catch (e) {
      if (request.signal?.aborted) return { ...this.partial(text, usage, chunks), finishReason: 'cancelled', error: 'cancelled' };
      return { ...this.partial(text, usage, chunks), finishReason: 'error', error: `the stream broke off: ${(e as Error).message}` };
    }
    const finishReason = finish === 'length' ? 'length' : 'stop';
    return { ...this.partial(text, usage, chunks), finishReason };
  }

  private partial(text: string, usage: { prompt_tokens?: number; completion_tokens?: number; prompt_tokens_details?: { cached_tokens?: number } } | undefined,
    chunks: number): Omit<Completion, 'finishReason'> {
    return {
      text,
      promptTokens: usage?.prompt_tokens ?? 0,
      cachedTokens: usage?.prompt_tokens_details?.cached_tokens ?? 0,
      // Servers that send no usage: one content chunk is about one token.
      generatedTokens: usage?.completion_tokens ?? chunks,
    };
  }

  private failed(error: string): Completion {
    return { text: '', finishReason: 'error', error, promptTokens: 0, cachedTokens: 0, generatedTokens: 0 };
  }
}

/** A refused request, with what to change when the server says the prompt is over its context. */
function refusal(status: number, body: string): string {
  const overContext = status < 500 && /context|too long|maximum.*tokens|exceed/i.test(body);
  return `the server answered ${status}: ${body.slice(0, 300)}` + (overContext
    ? ' (the prompt is over the model\'s context: set the backend\'s context length, --backend-context or mlxBatch.server.contextLength, to what the server loads)'
    : '');
}
