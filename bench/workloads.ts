// The minion workloads of bench:engine: many questions about the same file(s),
// and one long prompt among short ones. Each runs on the engine the way the
// scheduler drives it (the first question about a file saves it as a prefix,
// the others start from it), with prefix grouping on ("grouped") and off
// ("copied": every row copies the file's KV into its own cache, the path
// before grouping), in the same process, alternating per repeat.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { commonPrefixLength } from '../src/engine/prefix-cache.js';
import type { NativeEngine } from '../src/engine/native.js';
import { DEFAULT_SAMPLING } from '../src/engine/scheduler.js';
import type { Tokenizer } from '../src/engine/tokenizer.js';
import { median, syntheticFile } from './common.js';

const PREFILL_CHUNK = 256; // the scheduler's prompt tokens per engine call (PREFILL_CALL_TOKENS)

export const FILE_QUESTIONS = [
  'What does this file do?', 'Which functions write to the database?', 'Is there any error handling?',
  'What is the largest limit default?', 'Which function is the longest?', 'Are there any loops?',
  'What does the first function return?', 'Which tables are read?', 'Is any function not async?',
  'What is imported?', 'Name one function that refunds.', 'How are totals computed?',
  'Are there magic numbers?', 'What would you rename?', 'Is the code tested?', 'Summarize the file in one line.',
];

/** One request of a workload: a single user message. */
export interface WorkloadMessage {
  content: string;
  /** Messages with the same key share a prefix: the first saves it, the rest start from it. */
  file?: string;
}

interface Row {
  prompt: Int32Array;
  file?: string;
}

export interface Workload {
  name: string;
  description: string;
  rows: Row[];
}

export interface WorkloadRun {
  wall_s: number;
  prefill_s: number;
  decode_tps: number;
  peak_kv_bytes: number;
  prompt_tokens: number;
  prefilled_tokens: number;
}

function fileMessages(tokenizer: Tokenizer, seed: number, fileTokens: number, questions: number): WorkloadMessage[] {
  const file = syntheticFile(seed, fileTokens, tokenizer).text;
  return FILE_QUESTIONS.slice(0, questions).map((q) => ({
    content: `File: service-${seed}.ts\n\`\`\`ts\n${file}\n\`\`\`\n\nQuestion: ${q}`, file: `f${seed}`,
  }));
}

/** Short prompts of about `tokens` tokens each, all different. */
function shortMessages(tokenizer: Tokenizer, count: number, tokens: number): WorkloadMessage[] {
  return Array.from({ length: count }, (_, i) => ({ content: `What does this do?\n${syntheticFile(1000 + i, tokens - 30, tokenizer).text}` }));
}

/** The workloads as chat messages (bench:serve sends these; bench:engine tokenizes them). */
export function workloadMessages(tokenizer: Tokenizer, names: string[], fileTokens: number):
  Array<{ name: string; description: string; messages: WorkloadMessage[] }> {
  const all: Record<string, () => { description: string; messages: WorkloadMessage[] }> = {
    'same-file': () => ({ description: `16 questions about one ${fileTokens}-token file`, messages: fileMessages(tokenizer, 1, fileTokens, 16) }),
    'same-file-1': () => ({ description: `1 question about the same ${fileTokens}-token file`, messages: fileMessages(tokenizer, 1, fileTokens, 1) }),
    'four-files': () => ({
      description: `4 files of ${Math.round(fileTokens / 4)} tokens × 8 questions`,
      messages: [2, 3, 4, 5].flatMap((seed) => fileMessages(tokenizer, seed, Math.round(fileTokens / 4), 8)),
    }),
    mixed: () => ({
      description: `one ${fileTokens}-token prompt and fifteen 100-token prompts`,
      messages: [fileMessages(tokenizer, 6, fileTokens, 1)[0], ...shortMessages(tokenizer, 15, 100)],
    }),
    'short-16': () => ({ description: 'sixteen 100-token prompts', messages: shortMessages(tokenizer, 16, 100) }),
    'short-20': () => ({ description: 'twenty 100-token prompts (the seed benchmark\'s largest batch)', messages: shortMessages(tokenizer, 20, 100) }),
    'short-1': () => ({ description: 'the first of those prompts alone', messages: shortMessages(tokenizer, 1, 100) }),
  };
  return names.map((name) => {
    const make = all[name];
    if (!make) throw new Error(`unknown workload '${name}' (${Object.keys(all).join(', ')})`);
    return { name, ...make() };
  });
}

export function buildWorkloads(tokenizer: Tokenizer, names: string[], fileTokens: number): Workload[] {
  return workloadMessages(tokenizer, names, fileTokens).map(({ name, description, messages }) => ({
    name, description,
    rows: messages.map((m) => ({
      prompt: Int32Array.from(tokenizer.encode(
        tokenizer.applyChatTemplate([{ role: 'user', content: m.content }], { addGenerationPrompt: true }), { addSpecialTokens: false })),
      file: m.file,
    })),
  }));
}

type SavedPrefixes = Map<string, { handle: number; tokens: Int32Array }>;

/** Prefills every row, sharing as the scheduler does; `each` runs after each row. Returns the saved prefixes and tokens prefilled. */
async function prefillRows(engine: NativeEngine, w: Workload, each: () => Promise<void> = async () => undefined) {
  const saved: SavedPrefixes = new Map();
  let prefilled = 0;
  for (const [id, row] of w.rows.entries()) {
    const from = row.file ? saved.get(row.file) : undefined;
    const reuse = from ? Math.min(commonPrefixLength(from.tokens, row.prompt), row.prompt.length - 1) : 0;
    // The prompt's length, as the scheduler gives it: its KV buffers are sized once, not grown chunk by chunk.
    await engine.addSequence(id, DEFAULT_SAMPLING, from && { handle: from.handle, length: reuse, tokens: row.prompt.subarray(0, reuse) },
      row.prompt.length - reuse);
    for (let at = reuse; at < row.prompt.length; at += PREFILL_CHUNK) {
      const last = at + PREFILL_CHUNK >= row.prompt.length;
      const r = await engine.prefill(id, row.prompt.subarray(at, at + PREFILL_CHUNK), last, false, undefined,
        last && row.file !== undefined && !from);
      if (r.saved) saved.set(row.file!, { handle: r.saved.handle, tokens: row.prompt });
      prefilled += Math.min(PREFILL_CHUNK, row.prompt.length - at);
    }
    await each();
  }
  return { saved, prefilled };
}

async function releaseRows(engine: NativeEngine, w: Workload, saved: SavedPrefixes) {
  for (const id of w.rows.keys()) await engine.remove(id);
  for (const s of saved.values()) await engine.dropPrefix(s.handle);
}

/** One end-to-end run: prefill every row (sharing as the scheduler does), then maxTokens per row. */
export async function runWorkload(engine: NativeEngine, w: Workload, maxTokens: number): Promise<WorkloadRun> {
  await engine.resetPeakMemory();
  let peakKv = 0;
  const sample = async () => {
    const s = await engine.stats();
    peakKv = Math.max(peakKv, s.kvBytes + s.prefixBytes);
  };
  const start = performance.now();
  const { saved, prefilled } = await prefillRows(engine, w, sample);
  const prefillEnd = performance.now();
  let decoded = 0;
  for (let step = 1; step < maxTokens; step++) {
    decoded += (await engine.decode()).tokens.length;
    await sample();
  }
  const end = performance.now();
  await releaseRows(engine, w, saved);
  return {
    wall_s: (end - start) / 1000,
    prefill_s: (prefillEnd - start) / 1000,
    decode_tps: decoded / ((end - prefillEnd) / 1000),
    peak_kv_bytes: peakKv,
    prompt_tokens: w.rows.reduce((n, r) => n + r.prompt.length, 0),
    prefilled_tokens: prefilled,
  };
}

/**
 * Decode speed of workload `a` over workload `b`, each held by its own engine:
 * both prefill, then decode alternates `block` steps of one with `block` of the
 * other (which goes first alternates too), for maxTokens steps each. Each pair
 * of blocks runs at the same context length, a fraction of a second apart, so
 * the machine's drift (tens of percent within minutes here) cancels in its
 * ratio. Returns each pair's ratio of aggregate decode tok/s.
 */
export async function interleavedDecodeRatios(a: { engine: NativeEngine; w: Workload }, b: { engine: NativeEngine; w: Workload },
  maxTokens: number, block: number): Promise<number[]> {
  const heldA = await prefillRows(a.engine, a.w), heldB = await prefillRows(b.engine, b.w);
  const tps = async (side: typeof a) => {
    const t0 = performance.now();
    let tokens = 0;
    for (let i = 0; i < block; i++) tokens += (await side.engine.decode()).tokens.length;
    return tokens / ((performance.now() - t0) / 1000);
  };
  const ratios: number[] = [];
  for (let step = 1, pair = 0; step + block <= maxTokens; step += block, pair++) {
    if (pair % 2 === 0) {
      const x = await tps(a);
      ratios.push(x / (await tps(b)));
    } else {
      const y = await tps(b);
      ratios.push((await tps(a)) / y);
    }
  }
  await releaseRows(a.engine, a.w, heldA.saved);
  await releaseRows(b.engine, b.w, heldB.saved);
  return ratios;
}

/**
 * Seconds to prefill `prompt` as one fresh row, in the scheduler's calls of
 * PREFILL_CHUNK tokens; the row is added first with the prompt's length, as
 * the scheduler adds a request (the KV is sized once), and removed after.
 */
export async function prefillSeconds(engine: NativeEngine, prompt: Int32Array, id: number): Promise<number> {
  await engine.addSequence(id, DEFAULT_SAMPLING, undefined, prompt.length);
  const start = performance.now();
  for (let at = 0; at < prompt.length; at += PREFILL_CHUNK) {
    const end = Math.min(prompt.length, at + PREFILL_CHUNK);
    await engine.prefill(id, prompt.subarray(at, end), end === prompt.length, false);
  }
  const seconds = (performance.now() - start) / 1000;
  await engine.remove(id);
  return seconds;
}

/** How far two engines' logits agree over a workload's decode steps (compareDecodeLogits). */
export interface LogitsAgreement {
  steps: number;
  compared: number;
  differing: number;
  max_abs_diff: number;
  /** The first step whose greedy tokens differ; the comparison stops there. */
  tokens_differ_at?: number;
}

/**
 * Whether two engines compute the same logits, bit for bit, on workload `w`:
 * both prefill its rows (sharing as the scheduler does), then decode up to
 * `steps` steps returning logits, compared value by value. Two builds of a
 * kernel that only reorder work should agree exactly.
 */
export async function compareDecodeLogits(a: NativeEngine, b: NativeEngine, w: Workload, steps: number): Promise<LogitsAgreement> {
  const heldA = await prefillRows(a, w), heldB = await prefillRows(b, w);
  const out: LogitsAgreement = { steps: 0, compared: 0, differing: 0, max_abs_diff: 0 };
  try {
    for (let step = 0; step < steps; step++) {
      const [ra, rb] = [await a.decode({ wantLogits: true }), await b.decode({ wantLogits: true })];
      const la = ra.logits!, lb = rb.logits!;
      if (la.length !== lb.length) throw new Error(`logits of ${la.length} and ${lb.length} values at step ${step}`);
      for (let i = 0; i < la.length; i++) {
        if (Object.is(la[i], lb[i])) continue;
        out.differing++;
        out.max_abs_diff = Math.max(out.max_abs_diff, Number.isNaN(la[i] - lb[i]) ? Infinity : Math.abs(la[i] - lb[i]));
      }
      out.compared += la.length;
      out.steps++;
      if (ra.tokens.some((t, i) => t !== rb.tokens[i])) {
        out.tokens_differ_at = step;
        break;
      }
    }
  } finally {
    await releaseRows(a, w, heldA.saved);
    await releaseRows(b, w, heldB.saved);
  }
  return out;
}

export interface PeerRun { decode_tps: number; wall_s: number; peak_memory_bytes: number }

/** mlx-lm's batch_generate on the same prompts (no prefix sharing: it prefills every row). */
export function mlxLmWorkload(python: string, script: string, model: string, w: Workload, maxTokens: number,
  repeats: number, tmp: string): PeerRun[] {
  const file = path.join(tmp, `${w.name}.json`);
  fs.writeFileSync(file, JSON.stringify(w.rows.map((r) => Array.from(r.prompt))));
  const out = execFileSync(python, [script, '--model', model, '--batch-sizes', String(w.rows.length),
    '--max-tokens', String(maxTokens), '--repeats', String(repeats), '--prompt-file', file, '--warm-up-prompt-tokens', '256'],
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 << 20 });
  return JSON.parse(out).results[0].repeats as PeerRun[];
}

export function summarize(runs: WorkloadRun[]) {
  return {
    runs,
    wall_s: median(runs.map((r) => r.wall_s)),
    decode_tps: median(runs.map((r) => r.decode_tps)),
    peak_kv_bytes: median(runs.map((r) => r.peak_kv_bytes)),
  };
}
