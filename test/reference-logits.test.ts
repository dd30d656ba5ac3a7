// Our logits against mlx-lm's for tiny random models of every architecture:
// prefill then 20 teacher-forced decode steps, alone and in batches.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { loadModelSpec } from '../src/engine/model-config.js';
import { createNativeEngine, type NativeEngine } from '../src/engine/native.js';
import { maxAbsDiff, referenceModels } from './support/fixtures.js';
import { readSafetensors, type Tensor } from './support/safetensors.js';

const TOLERANCE = 1e-4;
const PREFILL_CHUNK = 5; // small, so prompts cross chunk boundaries
const GREEDY = { temperature: 0, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, repetitionContextSize: 20, seed: 0 };

interface Reference {
  prompts: Int32Array[];
  decodeTokens: Int32Array[];
  prefillLogits: Float32Array[];
  decodeLogits: Float32Array[]; // (steps, vocab) per prompt
  steps: number;
  vocab: number;
}

function loadReference(dir: string): Reference {
  const t = readSafetensors(path.join(dir, 'reference.safetensors'));
  const get = (name: string): Tensor => {
    const v = t.get(name);
    if (!v) throw new Error(`${dir}: reference lacks ${name}`);
    return v;
  };
  const ref: Reference = { prompts: [], decodeTokens: [], prefillLogits: [], decodeLogits: [], steps: 0, vocab: 0 };
  for (let i = 0; t.has(`prompt_${i}`); i++) {
    ref.prompts.push(get(`prompt_${i}`).data as Int32Array);
    ref.decodeTokens.push(get(`decode_tokens_${i}`).data as Int32Array);
    ref.prefillLogits.push(get(`prefill_logits_${i}`).data as Float32Array);
    const d = get(`decode_logits_${i}`);
    ref.decodeLogits.push(d.data as Float32Array);
    [ref.steps, ref.vocab] = d.shape;
  }
  return ref;
}

async function prefillRow(engine: NativeEngine, id: number, prompt: Int32Array): Promise<Float32Array> {
  await engine.addSequence(id, GREEDY);
  let logits: Float32Array | undefined;
  for (let start = 0; start < prompt.length; start += PREFILL_CHUNK) {
    const last = start + PREFILL_CHUNK >= prompt.length;
    const r = await engine.prefill(id, prompt.subarray(start, start + PREFILL_CHUNK), last, last);
    if (last) logits = r.logits;
  }
  assert.ok(logits, `no prefill logits for row ${id}`);
  return logits;
}

/**
 * Runs rows through decode steps with teacher forcing. `joinAt[i]` is the
 * batch step at which row i is prefilled and joins; `stopAfter[i]` how many
 * decode steps it takes before it is removed (the others keep going).
 */
async function runBatch(engine: NativeEngine, ref: Reference, rows: number[], label: string,
  joinAt: number[] = rows.map(() => 0), stopAfter: number[] = rows.map(() => ref.steps)) {
  const done = new Map<number, number>(); // row -> decode steps taken
  let worst = 0;
  for (let step = 0; done.size < rows.length || [...done.entries()].some(([r, n]) => n < stopAfter[rows.indexOf(r)]); step++) {
    for (const [k, row] of rows.entries()) {
      if (joinAt[k] === step) {
        const logits = await prefillRow(engine, row, ref.prompts[row]);
        const diff = maxAbsDiff(logits, ref.prefillLogits[row]);
        worst = Math.max(worst, diff);
        assert.ok(diff <= TOLERANCE, `${label}: row ${row} prefill logits differ by ${diff}`);
        done.set(row, 0);
      }
    }
    const active = [...done.entries()].filter(([r, n]) => n < stopAfter[rows.indexOf(r)]);
    if (active.length === 0) continue;
    const inputs = active.map(([r, n]) => ({ id: r, token: ref.decodeTokens[r][n] }));
    const out = await engine.decode({ inputs, wantLogits: true });
    assert.equal(out.ids.length, active.length, `${label}: decoded rows`);
    for (let b = 0; b < out.ids.length; b++) {
      const row = out.ids[b];
      const n = done.get(row)!;
      const ours = out.logits!.subarray(b * ref.vocab, (b + 1) * ref.vocab);
      const theirs = ref.decodeLogits[row].subarray(n * ref.vocab, (n + 1) * ref.vocab);
      const diff = maxAbsDiff(ours, theirs);
      worst = Math.max(worst, diff);
      assert.ok(diff <= TOLERANCE, `${label}: row ${row} decode step ${n} logits differ by ${diff}`);
      done.set(row, n + 1);
      if (n + 1 >= stopAfter[rows.indexOf(row)]) await engine.remove(row);
    }
  }
  return worst;
}

interface GroupedRow {
  id: number;
  prompt: number;
  /** Start after this many tokens of a saved prefix of the same prompt. */
  from?: { handle: number; length: number };
  /** Save the whole prompt as a prefix on its last chunk: the row then reads its own block. */
  save?: boolean;
  joinAt: number;
  stopAfter: number;
}

/** Saves the first `length` tokens of a prompt as a prefix, from a row that then leaves. */
async function savedPrefix(engine: NativeEngine, prompt: Int32Array, length: number): Promise<number> {
  await engine.addSequence(900, GREEDY);
  await engine.prefill(900, prompt.subarray(0, length), false);
  const saved = await engine.savePrefix(900);
  assert.equal(saved.length, length);
  await engine.remove(900);
  return saved.handle;
}

/**
 * Rows in prefix groups of different sizes, with uneven prefix lengths inside a
 * group, rows without a prefix, joins and leaves mid-run: every row's logits
 * must equal mlx-lm's for its prompt at every step.
 */
async function runGrouped(engine: NativeEngine, ref: Reference, rows: GroupedRow[], label: string): Promise<void> {
  const steps = new Map<number, number>(); // row id -> decode steps taken
  const byId = new Map(rows.map((r) => [r.id, r]));
  for (let step = 0; rows.some((r) => (steps.get(r.id) ?? -1) < r.stopAfter); step++) {
    for (const row of rows.filter((r) => r.joinAt === step)) {
      const prompt = ref.prompts[row.prompt];
      const start = row.from?.length ?? 0;
      await engine.addSequence(row.id, GREEDY, row.from && { ...row.from, tokens: prompt.subarray(0, start) });
      let logits: Float32Array | undefined;
      for (let at = start; at < prompt.length; at += PREFILL_CHUNK) {
        const last = at + PREFILL_CHUNK >= prompt.length;
        const r = await engine.prefill(row.id, prompt.subarray(at, at + PREFILL_CHUNK), last, last, undefined, last && row.save);
        if (last) logits = r.logits;
      }
      const diff = maxAbsDiff(logits!, ref.prefillLogits[row.prompt]);
      assert.ok(diff <= TOLERANCE, `${label}: row ${row.id} prefill logits differ by ${diff}`);
      steps.set(row.id, 0);
    }
    const active = [...steps.entries()].filter(([id, n]) => n < byId.get(id)!.stopAfter);
    if (active.length === 0) continue;
    const out = await engine.decode({
      inputs: active.map(([id, n]) => ({ id, token: ref.decodeTokens[byId.get(id)!.prompt][n] })), wantLogits: true,
    });
    assert.equal(out.ids.length, active.length, `${label}: decoded rows at step ${step}`);
    for (let b = 0; b < out.ids.length; b++) {
      const row = byId.get(out.ids[b])!;
      const n = steps.get(row.id)!;
      const diff = maxAbsDiff(out.logits!.subarray(b * ref.vocab, (b + 1) * ref.vocab),
        ref.decodeLogits[row.prompt].subarray(n * ref.vocab, (n + 1) * ref.vocab));
      assert.ok(diff <= TOLERANCE, `${label}: row ${row.id} decode step ${n} logits differ by ${diff}`);
      steps.set(row.id, n + 1);
      if (n + 1 >= row.stopAfter) await engine.remove(row.id);
    }
  }
}

const models = referenceModels();

// Quantized folders run both ways: dequantized to float32 (the CPU default)
// and kept quantized (the GPU default). Float32 runs again with the attention
// ops the GPU runs (fused SDPA, boolean masks, MLX's softmax parts) in place of
// the CPU's own kernels, so that path is checked on a machine without a GPU.
const runs = [...models].flatMap(([name, dir]) => [
  ...(/_q\d$/.test(name) ? (['float32', 'quantized'] as const) : (['float32'] as const))
    .map((weights) => ({ name, dir, weights, generic: false })),
  { name, dir, weights: 'float32' as const, generic: true },
]);

for (const { name, dir, weights, generic } of runs) {
  describe(`reference logits: ${name} (${weights} weights${generic ? ', GPU attention ops' : ''})`, () => {
    let engine: NativeEngine;
    let ref: Reference;
    before(async () => {
      engine = createNativeEngine();
      // Blocks from 10 tokens (not 256), so these 3-25-token prompts take every
      // path: shared prefixes read in place (10-16 tokens), shorter ones copied
      // into the row (4-9), prompts of 12+ as blocks of their own, 3 and 7 in
      // the batch's own columns.
      await engine.load(await loadModelSpec(dir), { weights, device: 'cpu', minBlockTokens: 10, genericAttention: generic });
      ref = loadReference(dir);
    });
    after(async () => engine.close());

    test('batch 1: each prompt alone, prefill + 20 decode steps', async () => {
      for (let row = 0; row < ref.prompts.length; row++) await runBatch(engine, ref, [row], `${name} alone`);
    });

    test('batch of 5 prompts of different lengths', async () => {
      const rows = ref.prompts.map((_, i) => i);
      await runBatch(engine, ref, rows, `${name} batch`);
      assert.equal((await engine.stats()).decodingRows, 0);
    });

    test('rows started from a saved prefix match rows prefilled from scratch', async () => {
      // Row 100 prefills the first 10 tokens of the longest prompt and saves them;
      // rows then start from 4 and from 10 of those tokens and prefill the rest.
      const row = ref.prompts.length - 1;
      const prompt = ref.prompts[row];
      await engine.addSequence(100, GREEDY);
      await engine.prefill(100, prompt.subarray(0, 10), false);
      const saved = await engine.savePrefix(100);
      assert.equal(saved.length, 10);
      await engine.remove(100);
      for (const [k, reuse] of [4, 10].entries()) {
        const id = 200 + k;
        await engine.addSequence(id, GREEDY, { handle: saved.handle, length: reuse, tokens: prompt.subarray(0, reuse) });
        const r = await engine.prefill(id, prompt.subarray(reuse), true, true);
        const diff = maxAbsDiff(r.logits!, ref.prefillLogits[row]);
        assert.ok(diff <= TOLERANCE, `${name}: prefix ${reuse} prefill logits differ by ${diff}`);
      }
      // Both decode together and keep matching; the saved prefix stays intact.
      for (let n = 0; n < 5; n++) {
        const out = await engine.decode({ inputs: [200, 201].map((id) => ({ id, token: ref.decodeTokens[row][n] })), wantLogits: true });
        for (let b = 0; b < 2; b++) {
          const diff = maxAbsDiff(out.logits!.subarray(b * ref.vocab, (b + 1) * ref.vocab),
            ref.decodeLogits[row].subarray(n * ref.vocab, (n + 1) * ref.vocab));
          assert.ok(diff <= TOLERANCE, `${name}: prefix row decode step ${n} differs by ${diff}`);
        }
      }
      await engine.remove(200);
      await engine.remove(201);
      await engine.addSequence(300, GREEDY, { handle: saved.handle, length: 10, tokens: prompt.subarray(0, 10) });
      const again = await engine.prefill(300, prompt.subarray(10), true, true);
      assert.ok(maxAbsDiff(again.logits!, ref.prefillLogits[row]) <= TOLERANCE, 'saved prefix changed after reuse');
      await engine.remove(300);
      await engine.dropPrefix(saved.handle);
      assert.equal((await engine.stats()).prefixes, 0);
    });

    test('prefix groups of different sizes, uneven prefixes, joins and leaves', async () => {
      // The reference models' sliding window is 8 tokens: prefixes of 9-16 tokens cross it.
      const longest = ref.prompts.length - 1;
      const a = await savedPrefix(engine, ref.prompts[longest], 16);
      const b = await savedPrefix(engine, ref.prompts[longest - 1], 12);
      const rows: GroupedRow[] = [
        { id: 10, prompt: longest, from: { handle: a, length: 16 }, joinAt: 0, stopAfter: 20 },
        { id: 11, prompt: longest, from: { handle: a, length: 9 }, joinAt: 0, stopAfter: 6 },
        { id: 12, prompt: longest, from: { handle: a, length: 16 }, joinAt: 3, stopAfter: 12 },
        { id: 13, prompt: longest - 1, from: { handle: b, length: 12 }, joinAt: 0, stopAfter: 10 },
        { id: 14, prompt: longest - 1, from: { handle: b, length: 5 }, joinAt: 5, stopAfter: 14 },
        { id: 15, prompt: 0, joinAt: 0, stopAfter: 20 },
        { id: 16, prompt: 2, save: true, joinAt: 1, stopAfter: 15 },
        { id: 17, prompt: 1, joinAt: 2, stopAfter: 8 },
      ];
      await runGrouped(engine, ref, rows, `${name} grouped`);
      const stats = await engine.stats();
      assert.equal(stats.decodingRows, 0);
      assert.equal(stats.kvBytes, 0, 'every row gone: no KV left but the saved prefixes');
      assert.equal(stats.prefixes, 3);
      for (const handle of [a, b]) await engine.dropPrefix(handle);
    });

    test('a large group: nine rows of one prefix, uneven lengths, decoding together', async () => {
      // 9 rows x 2 query heads per kv head fill a vector of 16 queries: the
      // block kernel's path, each row seeing its own length of the block.
      const longest = ref.prompts.length - 1;
      const a = await savedPrefix(engine, ref.prompts[longest], 16);
      const lengths = [16, 16, 15, 14, 13, 12, 11, 10, 16];
      const rows: GroupedRow[] = lengths.map((length, i) => ({
        id: 30 + i, prompt: longest, from: { handle: a, length }, joinAt: i < 7 ? 0 : 2, stopAfter: 6 + (i % 4) * 3,
      }));
      await runGrouped(engine, ref, rows, `${name} large group`);
      assert.equal((await engine.stats()).kvBytes, 0);
      await engine.dropPrefix(a);
    });

    test('short prompts prefilled in one batch, with and without a prefix, then decoding with the batch', async () => {
      const longest = ref.prompts.length - 1;
      const a = await savedPrefix(engine, ref.prompts[longest], 16);
      // A row already decoding, so the batch-prefilled rows join a running batch.
      await prefillRow(engine, 30, ref.prompts[1]);
      await engine.decode({ inputs: [{ id: 30, token: ref.decodeTokens[1][0] }] });
      const rows = [
        { id: 20, prompt: longest, start: 16 }, { id: 21, prompt: 0, start: 0 }, { id: 22, prompt: longest - 1, start: 0 },
        { id: 23, prompt: longest, start: 10 }, { id: 24, prompt: 2, start: 0 },
      ];
      for (const r of rows) {
        const p = ref.prompts[r.prompt];
        await engine.addSequence(r.id, GREEDY, r.start > 0 ? { handle: a, length: r.start, tokens: p.subarray(0, r.start) } : undefined);
      }
      const results = await engine.prefillBatch(rows.map((r) => ({ id: r.id, tokens: ref.prompts[r.prompt].subarray(r.start) })), true);
      for (const [k, r] of rows.entries()) {
        const diff = maxAbsDiff(results[k].logits!, ref.prefillLogits[r.prompt]);
        assert.ok(diff <= TOLERANCE, `${name}: batch-prefilled row ${r.id} logits differ by ${diff}`);
      }
      const all = [{ id: 30, prompt: 1, step: 1 }, ...rows.map((r) => ({ id: r.id, prompt: r.prompt, step: 0 }))];
      for (let n = 0; n < 10; n++) {
        const out = await engine.decode({ inputs: all.map((r) => ({ id: r.id, token: ref.decodeTokens[r.prompt][r.step] })), wantLogits: true });
        for (let b = 0; b < out.ids.length; b++) {
          const r = all.find((x) => x.id === out.ids[b])!;
          const diff = maxAbsDiff(out.logits!.subarray(b * ref.vocab, (b + 1) * ref.vocab),
            ref.decodeLogits[r.prompt].subarray(r.step * ref.vocab, (r.step + 1) * ref.vocab));
          assert.ok(diff <= TOLERANCE, `${name}: row ${r.id} decode step ${r.step} logits differ by ${diff}`);
          r.step++;
        }
      }
      for (const r of all) await engine.remove(r.id);
      await engine.dropPrefix(a);
      assert.equal((await engine.stats()).kvBytes, 0);
    });

    test('rows joining mid-batch and one leaving early', async () => {
      const rows = ref.prompts.map((_, i) => i);
      // Long prompts join late (padding on the batch side), one row stops early.
      await runBatch(engine, ref, rows, `${name} staggered`, [0, 0, 3, 5, 9], [20, 8, 20, 20, 20]);
      assert.equal((await engine.stats()).decodingRows, 0);
    });
  });
}
