// The seed benchmark's sweep: the context-length sweep (documents of 5, 20 and
// 30 sentences at one batch size) and the batch-size sweep (1 to 20 questions
// about a 20-sentence document), each for every client and both modes.
import type { AskBackend } from '../ask/backend.js';
import { runMinionCase, type MinionMode, type MinionRun } from './minions.js';

export interface SweepClient {
  /** sequential | batched | server (or a peer's name). */
  name: string;
  backend: AskBackend;
}

export interface SweepOptions {
  contexts: number[];
  sizes: number[];
  /** Batch size of the context-length sweep. */
  contextSweepSize: number;
  /** Document length of the batch-size sweep. */
  sizeSweepContext: number;
  modes: MinionMode[];
  seed: number;
  /** Output cap per answer (default: the seed's 1000). */
  tokensPerAnswer?: number;
  signal?: AbortSignal;
}

export const DEFAULT_SWEEP: Omit<SweepOptions, 'signal'> = {
  contexts: [5, 20, 30], sizes: [1, 5, 10, 15, 20], contextSweepSize: 5, sizeSweepContext: 20, modes: ['packed', 'channels'], seed: 1,
};

export interface SweepCell {
  sweep: 'context' | 'size';
  context: number;
  size: number;
  mode: MinionMode;
}

/** Every cell, in run order; a cell in both sweeps (20 sentences x 5 questions) runs once and counts for both. */
export function sweepCells(o: Pick<SweepOptions, 'contexts' | 'sizes' | 'contextSweepSize' | 'sizeSweepContext' | 'modes'>): SweepCell[] {
  const cells: SweepCell[] = [];
  const seen = new Set<string>();
  const add = (sweep: SweepCell['sweep'], context: number, size: number) => {
    for (const mode of o.modes) {
      const key = `${context}:${size}:${mode}`;
      if (seen.has(key)) continue;
      seen.add(key);
      cells.push({ sweep, context, size, mode });
    }
  };
  for (const c of o.contexts) add('context', c, o.contextSweepSize);
  for (const s of o.sizes) add('size', o.sizeSweepContext, s);
  return cells;
}

/** Runs every cell on every client (clients alternate order per cell, so machine drift hits all). */
export async function runSweep(clients: SweepClient[], o: SweepOptions, onRun: (run: MinionRun, done: number, total: number) => void): Promise<MinionRun[]> {
  const cells = sweepCells(o);
  const runs: MinionRun[] = [];
  const total = cells.length * clients.length;
  for (const [i, cell] of cells.entries()) {
    const order = i % 2 === 0 ? clients : [...clients].reverse();
    for (const client of order) {
      if (o.signal?.aborted) return runs;
      const run = await runMinionCase({ client: client.name, backend: client.backend, mode: cell.mode, context: cell.context, size: cell.size, seed: o.seed, tokensPerAnswer: o.tokensPerAnswer, signal: o.signal });
      runs.push(run);
      onRun(run, runs.length, total);
    }
  }
  return runs;
}
