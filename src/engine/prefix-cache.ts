// Saved KV prefixes of earlier prompts, so a request that starts with the same
// tokens (the same file asked many questions, the same system prompt) reuses
// their keys/values instead of prefilling them again. LRU under a byte cap.
import type { NativeEngine, SavedPrefix } from './native.js';

/** Shorter shared prefixes are not worth a lookup or an entry. */
export const MIN_SHARED_TOKENS = 32;

export interface PrefixEntry extends SavedPrefix {
  tokens: Int32Array;
  lastUsed: number;
}

export interface PrefixMatch {
  entry: PrefixEntry;
  /** Tokens of the entry to reuse: always leaves at least one prompt token to prefill. */
  length: number;
}

export function commonPrefixLength(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

export class PrefixCache {
  private readonly entries: PrefixEntry[] = [];
  private clock = 0;

  constructor(
    private readonly engine: NativeEngine,
    readonly capacityBytes: number,
  ) {}

  get enabled(): boolean {
    return this.capacityBytes > 0;
  }

  get bytes(): number {
    return this.entries.reduce((sum, e) => sum + e.bytes, 0);
  }

  get size(): number {
    return this.entries.length;
  }

  /** The entry sharing the longest prefix with `prompt`, if long enough. */
  lookup(prompt: ArrayLike<number>): PrefixMatch | undefined {
    let best: PrefixMatch | undefined;
    for (const entry of this.entries) {
      const length = Math.min(commonPrefixLength(entry.tokens, prompt), prompt.length - 1);
      if (length >= MIN_SHARED_TOKENS && (!best || length > best.length)) best = { entry, length };
    }
    if (best) best.entry.lastUsed = ++this.clock;
    return best;
  }

  /** Keeps a saved prefix; evicts least recently used entries over the cap. */
  async add(saved: SavedPrefix, tokens: Int32Array): Promise<void> {
    // An entry that is a prefix of the new one adds nothing the new one lacks.
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const e = this.entries[i];
      if (e.tokens.length <= tokens.length && commonPrefixLength(e.tokens, tokens) === e.tokens.length) {
        this.entries.splice(i, 1);
        await this.engine.dropPrefix(e.handle);
      }
    }
    this.entries.push({ ...saved, tokens, lastUsed: ++this.clock });
    this.entries.sort((a, b) => b.lastUsed - a.lastUsed);
    while (this.entries.length > 0 && this.bytes > this.capacityBytes) {
      await this.engine.dropPrefix(this.entries.pop()!.handle);
    }
  }

  async clear(): Promise<void> {
    for (const e of this.entries.splice(0)) await this.engine.dropPrefix(e.handle);
  }
}
