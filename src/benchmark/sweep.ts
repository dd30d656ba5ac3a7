// The seed benchmark's sweep: the context-length sweep (documents of 5, 20 and
// 30 sentences at one batch size) and the batch-size sweep (1 to 20 questions
// about a 20-sentence document), each for every client and both modes.
import type { AskBackend } from '../ask/backend.js';
import { RepetitionGuard } from '../ask/backends/repetition-guard.js';
import { runMinionCase, TOKENS_PER_ANSWER } from './minions.js';
import type { MinionMode, MinionRun, SweepOptions } from './types.js';

export type { SweepOptions } from './types.js';

const WARM_UP_TOKENS = 16;

/** A sweep as planned: SweepOptions without the abort signal. */
export type SweepPlan = Omit<SweepOptions, 'signal'>;

/** The quick check: a short document, 1 and 5 questions, answers capped at 256 tokens (a few minutes on 2 cores). */
export const QUICK_SWEEP: SweepPlan = {
  contexts: [5], sizes: [1, 5], contextSweepSize: 5, sizeSweepContext: 5, modes: ['packed', 'channels'], seed: 1, tokensPerAnswer: 256,
};

/** A sweep given from outside (a command argument), checked like settings: whole numbers in range, known modes. */
export function parseSweepPlan(value: unknown): SweepPlan | undefined {
  if (!value || typeof value !== 'object') return undefined;
  const v = value as Record<string, unknown>;
  const ints = (x: unknown, max: number) => Array.isArray(x) && x.length > 0 && x.every((n) => Number.isInteger(n) && n >= 1 && n <= max) ? x as number[] : undefined;
  const int = (x: unknown, max: number) => Number.isInteger(x) && (x as number) >= 1 && (x as number) <= max ? x as number : undefined;
  const contexts = ints(v.contexts, 500);
  const sizes = ints(v.sizes, 64);
  const modes = Array.isArray(v.modes) && v.modes.length > 0 && v.modes.every((m) => m === 'packed' || m === 'channels') ? v.modes as MinionMode[] : undefined;
  const contextSweepSize = int(v.contextSweepSize, 64);
  const sizeSweepContext = int(v.sizeSweepContext, 500);
  const tokensPerAnswer = v.tokensPerAnswer === undefined ? DEFAULT_SWEEP.tokensPerAnswer : int(v.tokensPerAnswer, 4096);
  if (!contexts || !sizes || !modes || !contextSweepSize || !sizeSweepContext || (v.tokensPerAnswer !== undefined && !tokensPerAnswer)) return undefined;
  return { contexts, sizes, modes, contextSweepSize, sizeSweepContext, seed: int(v.seed, 2 ** 31) ?? 1, tokensPerAnswer };
}

export interface SweepClient {
  /** sequential | batched | server (or a peer's name). */
  name: string;
  backend: AskBackend;
}

export const DEFAULT_SWEEP: SweepPlan = {
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
  // Every client alike: a reply stuck in a loop ends there, not at the output cap.
  // A packed reply is a list of up to `widest` like items: more repeats than that make a loop.
  // (Channels go through runAsk, whose own guard cuts a single answer's loop sooner.)
  const widest = Math.max(...o.sizes, o.contextSweepSize);
  clients = clients.map((c) => ({ ...c, backend: new RepetitionGuard(c.backend, widest + 4) }));
  // Untimed: compiles each client's JSON schemas and touches its weights, so the
  // first timed cell does not carry a one-off cost the others do not.
  for (const client of clients) {
    for (const mode of o.modes) {
      if (o.signal?.aborted) return [];
      await runMinionCase({ client: client.name, backend: client.backend, mode, context: Math.min(...o.contexts), size: 1, seed: o.seed + 1,
        tokensPerAnswer: Math.min(o.tokensPerAnswer ?? TOKENS_PER_ANSWER, WARM_UP_TOKENS), signal: o.signal }).catch(() => undefined);
    }
  }
  const runs: MinionRun[] = [];
  const total = cells.length * clients.length;
  for (const [i, cell] of cells.entries()) {
    const order = i % 2 === 0 ? clients : [...clients].reverse();
    for (const client of order) {
      if (o.signal?.aborted) return runs;
      let run: MinionRun;
      try {
        run = await runMinionCase({ client: client.name, backend: client.backend, mode: cell.mode, context: cell.context, size: cell.size, seed: o.seed, tokensPerAnswer: o.tokensPerAnswer, signal: o.signal });
      } catch (e) {
        // Interrupted mid-run: the runs that ended are the result.
        if (o.signal?.aborted) return runs;
        throw e;
      }
      runs.push(run);
      onRun(run, runs.length, total);
    }
  }
  return runs;
}
