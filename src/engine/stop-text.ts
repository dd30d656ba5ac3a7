// Stop strings while streaming: cut the text before the first stop string, and
// hold back a tail that could still become one.

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
