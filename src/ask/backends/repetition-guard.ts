// Cuts a reply that has fallen into a loop. A small model without constrained
// output (mlx_lm.server has none) can repeat one sentence until the output cap:
// thousands of tokens that can never become an answer. Any backend can be
// wrapped; the reply ends as a 'loop' that says so, with what was generated.
import type { AskBackend, Completion, CompletionRequest } from '../backend.js';

/** A loop: one unit of up to MAX_PERIOD characters, repeated `minRepeats` times back to back, over MIN_LOOP_CHARS at least. */
const MIN_LOOP_CHARS = 120;
/**
 * The same unit repeated character for character (numbers included) is a
 * loop from MIN_EXACT_LOOP_CHARS on. A loop of a short unit inside an answer
 * field ("2019-01-01 (" again and again) is then caught before the field's
 * 120-character cap ends it; lists of different numbers or dates stay text.
 */
const MIN_EXACT_LOOP_CHARS = 32;
const MAX_PERIOD = 160;
const DEFAULT_MIN_REPEATS = 4;

/** Whether the last `span` characters of `s` repeat with period `p`. */
function periodicTail(s: string, p: number, span: number): boolean {
  for (let i = s.length - span; i < s.length - p; i++) {
    if (s.charCodeAt(i) !== s.charCodeAt(i + p)) return false;
  }
  return true;
}

/**
 * True when `text` ends with one piece of text repeated back to back. Numbers
 * count as alike over MIN_LOOP_CHARS, so a numbered list of one line
 * ("12. In which year ...?", "13. In which year ...?") is a loop too. Units
 * without a letter or digit (rules, indentation) are never loops.
 */
export function endsInLoop(text: string, minRepeats = DEFAULT_MIN_REPEATS): boolean {
  const raw = text.slice(-(minRepeats * MAX_PERIOD + 64));
  const tail = raw.replace(/\d+/g, '#');
  const meaningful = (s: string, p: number) => /[\p{L}\p{N}#]/u.test(s.slice(s.length - p));
  for (let p = 1; p <= MAX_PERIOD; p++) {
    const exact = Math.max(minRepeats * p, MIN_EXACT_LOOP_CHARS);
    if (exact <= raw.length && periodicTail(raw, p, exact) && meaningful(raw, p)) return true;
    const alike = Math.max(minRepeats * p, MIN_LOOP_CHARS);
    if (alike <= tail.length && periodicTail(tail, p, alike) && meaningful(tail, p)) return true;
    if (exact > raw.length) return false;
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
