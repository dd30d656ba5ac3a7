// The built-in engine: jobs go to the sidecar's continuous-batching scheduler,
// which reuses each chunk's prefix across its questions.
import type { SidecarClient } from '../../engine/client.js';
import type { ModelInfo, TokenCountItem } from '../../engine/protocol.js';
import type { AskBackend, Completion, CompletionRequest } from '../backend.js';

// Job ids repeat across runs (the same question about the same chunk), and two
// runs may share the engine: each call gets an id of its own on the wire.
let calls = 0;

export class SidecarBackend implements AskBackend {
  readonly label = 'built-in engine';
  readonly model: string;
  readonly contextLength: number;
  readonly concurrency: number;

  constructor(
    private readonly client: SidecarClient,
    info: ModelInfo,
  ) {
    this.model = info.modelPath;
    this.contextLength = info.contextLength;
    // Twice the batch: the scheduler always has the next rows queued when a row leaves.
    this.concurrency = info.maxBatch * 2;
  }

  countTokens(items: TokenCountItem[]): Promise<number[]> {
    return this.client.countTokens(items);
  }

  async complete(request: CompletionRequest): Promise<Completion> {
    const r = await this.client.generate({
      requestId: `${request.id}@${++calls}`,
      messages: request.messages,
      maxTokens: request.maxTokens,
      sampling: { temperature: request.temperature, seed: 0 },
      ...(request.jsonSchema ? { jsonSchema: request.jsonSchema } : {}),
    }, {
      signal: request.signal,
      onDelta: (d) => request.onDelta?.(d.text, d.tokens),
      onPrefill: (p) => {
        if (!p.queued) request.onPrefill?.(p.prefilledTokens, p.promptTokens); // a queued job is not reading yet
      },
    });
    return {
      text: r.text,
      finishReason: r.finishReason,
      ...(r.error !== undefined ? { error: r.error } : {}),
      promptTokens: r.promptTokens,
      cachedTokens: r.cachedPromptTokens,
      generatedTokens: r.generatedTokens,
    };
  }
}
