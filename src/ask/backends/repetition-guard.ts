// Cuts a reply that has fallen into a loop. A small model without constrained
// output (mlx_lm.server has none) can repeat one sentence until the output cap:
// thousands of tokens that can never become an answer. Any backend can be
// wrapped; the reply ends as a 'loop' that says so, with what was generated.
import type { AskBackend, Completion, CompletionRequest } from '../backend.js';

/** A loop: one unit of up to MAX_PERIOD characters, repeated `minRepeats` times back to back, over MIN_LOOP_CHARS at least. */
const MIN_LOOP_CHARS = 120;
const MAX_PERIOD = 160;
const DEFAULT_MIN_REPEATS = 4;

/**
 * True when `text` ends with one piece of text repeated back to back. Numbers
 * count as alike, so a numbered list of one line ("12. In which year ...?",
 * "13. In which year ...?") is a loop too.
 */
export function endsInLoop(text: string, minRepeats = DEFAULT_MIN_REPEATS): boolean {
  const tail = text.slice(-(minRepeats * MAX_PERIOD + 64)).replace(/\d+/g, '#');
  for (let p = 1; p <= MAX_PERIOD; p++) {
    const span = Math.max(minRepeats * p, MIN_LOOP_CHARS);
    if (span > tail.length) return false;
    let periodic = true;
    for (let i = tail.length - span; i < tail.length - p; i++) {
      if (tail.charCodeAt(i) !== tail.charCodeAt(i + p)) {
        periodic = false;
        break;
      }
    }
    if (periodic) return true;
  }
  return false;
}

export class RepetitionGuard implements AskBackend {
  /**
   * `minRepeats`: repeats that make a loop. A JSON list of N like items
   * (`{"answer": null}, ` N times) is a valid reply, so a caller asking for
   * lists of up to N gives more than N.
   */
  constructor(private readonly inner: AskBackend, private readonly minRepeats = DEFAULT_MIN_REPEATS) {}

  get label(): string {
    return this.inner.label;
  }

  get model(): string {
    return this.inner.model;
  }

  get contextLength(): number {
    return this.inner.contextLength;
  }

  get concurrency(): number {
    return this.inner.concurrency;
  }

  countTokens(...args: Parameters<AskBackend['countTokens']>): ReturnType<AskBackend['countTokens']> {
    return this.inner.countTokens(...args);
  }

  async complete(request: CompletionRequest): Promise<Completion> {
    const stop = new AbortController();
    // AbortSignal.any, not a listener on the caller's signal: one signal serves every request of a run.
    const signal = request.signal ? AbortSignal.any([request.signal, stop.signal]) : stop.signal;
    let text = '';
    let looped = false;
    let sinceCheck = 0;
    const reply = await this.inner.complete({
      ...request,
      signal,
      onDelta: (piece, tokens) => {
        request.onDelta?.(piece, tokens);
        text += piece;
        // Checking every ~32 characters keeps the cost small on long replies.
        sinceCheck += piece.length;
        if (!looped && sinceCheck >= 32) {
          sinceCheck = 0;
          if (endsInLoop(text, this.minRepeats)) {
            looped = true;
            stop.abort();
          }
        }
      },
    });
    if (!looped || request.signal?.aborted) return reply;
    return { ...reply, finishReason: 'loop', error: `the reply repeats itself; stopped after ${reply.generatedTokens} tokens` };
  }
}
