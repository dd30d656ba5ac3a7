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
  contexts: [5], sizes: [1, 5], contextSweepSize: 5, sizeSweepContext: 5, modes: ['packed', 'channels'], seed: 1, tokensPerAnswer: 256, targetRepeats: 1,
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
  const targetRepeats = v.targetRepeats === undefined ? DEFAULT_SWEEP.targetRepeats : int(v.targetRepeats, MAX_TARGET_REPEATS);
  if (!contexts || !sizes || !modes || !contextSweepSize || !sizeSweepContext || (v.tokensPerAnswer !== undefined && !tokensPerAnswer) ||
    (v.targetRepeats !== undefined && !targetRepeats)) return undefined;
  return { contexts, sizes, modes, contextSweepSize, sizeSweepContext, seed: int(v.seed, 2 ** 31) ?? 1, tokensPerAnswer, targetRepeats };
}

export interface SweepClient {
  /** sequential | batched | server (or a peer's name). */
  name: string;
  backend: AskBackend;
  /** Waits until the client's server has stopped working, before another client's run. */
  settle?: () => Promise<void>;
}

export const DEFAULT_SWEEP: SweepPlan = {
  contexts: [5, 20, 30], sizes: [1, 5, 10, 15, 20], contextSweepSize: 5, sizeSweepContext: 20, modes: ['packed', 'channels'], seed: 1,
  targetRepeats: 3,
};

export const MAX_TARGET_REPEATS = 20;

/** The cell of the 5× target (channels, the batch-size sweep's largest size), if the plan has it. */
export function targetCell(o: Pick<SweepOptions, 'sizes' | 'sizeSweepContext' | 'modes'>): SweepCell | undefined {
  return o.modes.includes('channels') ? { sweep: 'size', context: o.sizeSweepContext, size: Math.max(...o.sizes), mode: 'channels' } : undefined;
}

/** The two clients the 5× target compares. */
const TARGET_CLIENTS = ['sequential', 'batched'];

/** Runs a sweep makes with these clients: every cell on each, and the target cell's repeats. */
export function sweepRunCount(o: Omit<SweepOptions, 'signal'>, clients: string[]): number {
  const repeats = targetCell(o) && TARGET_CLIENTS.every((c) => clients.includes(c)) ? Math.max(1, o.targetRepeats ?? 1) - 1 : 0;
  return sweepCells(o).length * clients.length + repeats * TARGET_CLIENTS.length;
}

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
  const total = sweepRunCount(o, clients.map((c) => c.name));
  // false once interrupted: the runs that ended are the result.
  const measure = async (client: SweepClient, cell: SweepCell, repeat?: number): Promise<boolean> => {
    if (o.signal?.aborted) return false;
    // A server can go on with a stream its client stopped reading (a loop cut
    // short): that work must not land in the next run's time.
    await Promise.all(clients.map((c) => c.settle?.()));
    let run: MinionRun;
    try {
      run = await runMinionCase({ client: client.name, backend: client.backend, mode: cell.mode, context: cell.context, size: cell.size, seed: o.seed, tokensPerAnswer: o.tokensPerAnswer, signal: o.signal });
    } catch (e) {
      if (o.signal?.aborted) return false;
      throw e;
    }
    // Cut short by the interrupt (its requests cancelled, or failed as a
    // terminal's Ctrl-C reached a server too): not a measurement.
    if (o.signal?.aborted) return false;
    if (repeat !== undefined) run.repeat = repeat;
    runs.push(run);
    onRun(run, runs.length, total);
    return true;
  };
  for (const [i, cell] of cells.entries()) {
    const order = i % 2 === 0 ? clients : [...clients].reverse();
    for (const client of order) if (!(await measure(client, cell))) return runs;
  }
  // The 5× target compares two runs minutes apart on a machine whose speed
  // drifts by tens of percent: its cell runs again, the two clients back to
  // back (which goes first alternates), and the target takes the median.
  const cell = targetCell(o);
  const pair = TARGET_CLIENTS.map((name) => clients.find((c) => c.name === name));
  if (cell && pair.every((c) => c !== undefined)) {
    for (let repeat = 1; repeat < (o.targetRepeats ?? 1); repeat++) {
      for (const client of repeat % 2 === 1 ? [...pair].reverse() : pair) if (!(await measure(client!, cell, repeat))) return runs;
    }
  }
  return runs;
}
