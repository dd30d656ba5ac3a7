// Greedy picks from a shortlist of the output projection's columns
// (native/src/cpu_greedy_head.cpp) against the full logits, on the default
// model: the same token at every step, for batches of 1 to 33 rows (tiles of
// 10, passes of 32, slices of k that change at 20 rows), plain and under
// bitmasks (dense, sparse, allowing only low-ranked tokens, allowing none,
// shorter than the vocabulary), with rows joining and leaving.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { defaultModelPath } from '../src/engine/engine-session.js';
import { loadModelSpec } from '../src/engine/model-config.js';
import { createNativeEngine, type NativeEngine } from '../src/engine/native.js';
import { DEFAULT_SAMPLING } from '../src/engine/scheduler.js';
import { Tokenizer } from '../src/engine/tokenizer.js';

const QUESTIONS = ['What is the capital of France?', 'Write a haiku about rain.', 'Explain recursion briefly.', 'List three fruits.',
  'Who wrote Hamlet?', 'What is 12 times 7?', 'Name a primary color.', 'Reply in JSON: {"city": ...} for the capital of Peru.'];

let shortlist: NativeEngine;
let full: NativeEngine;
let prompts: Int32Array[];
let vocab: number;

before(async () => {
  const spec = await loadModelSpec(defaultModelPath());
  vocab = spec.vocabSize;
  const tokenizer = await Tokenizer.fromModel(defaultModelPath());
  prompts = QUESTIONS.map((q) => Int32Array.from(tokenizer.encode(
    tokenizer.applyChatTemplate([{ role: 'user', content: q }], { addGenerationPrompt: true }), { addSpecialTokens: false })));
  shortlist = createNativeEngine();
  full = createNativeEngine();
  await shortlist.load(spec, { weights: 'float32', device: 'cpu' });
  await full.load(spec, { weights: 'float32', device: 'cpu', greedyShortlist: false });
});
after(async () => {
  await shortlist?.close();
  await full?.close();
});

/** A deterministic pseudo-random stream. */
function lcg(seed: number) {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
}

function maskOf(tokens: Iterable<number>, words = Math.ceil(vocab / 32)): Int32Array {
  const m = new Int32Array(words);
  for (const t of tokens) if (t >> 5 < words) m[t >> 5] |= 1 << (t & 31);
  return m;
}

/** The first index of the largest allowed logit, as the host sampler picks a greedy row. */
function maskedArgmax(logits: Float32Array, mask: Int32Array | undefined): number {
  let best = -1;
  for (let t = 0; t < logits.length; t++) {
    const ok = !mask || ((t >> 5) < mask.length && ((mask[t >> 5] >>> (t & 31)) & 1) === 1);
    if (ok && (best < 0 || logits[t] > logits[best])) best = t;
  }
  return best < 0 ? 0 : best;
}

type MaskKind = 'none' | 'dense' | 'sparse' | 'low-ranked' | 'nothing' | 'short';

/**
 * Runs the same rows on both engines, step by step with the same masks, and
 * checks each step's tokens against each other and against the full logits.
 * Rows from `joinAt` join after that step; every third row leaves at `leaveAt`.
 */
async function compare(rows: number, steps: number, kinds: MaskKind[], opts: { joinAt?: number; leaveAt?: number } = {}) {
  const rand = lcg(rows * 7919 + steps);
  const previous = new Map<number, Float32Array>();
  const live = new Set<number>();
  const add = async (id: number) => {
    const p = prompts[id % prompts.length];
    for (const e of [shortlist, full]) {
      await e.addSequence(id, DEFAULT_SAMPLING, undefined, p.length);
      await e.prefill(id, p, true);
    }
    live.add(id);
  };
  const firstRows = opts.joinAt === undefined ? rows : Math.ceil(rows / 2);
  for (let id = 0; id < firstRows; id++) await add(id);
  let picked = 0;
  for (let step = 0; step < steps; step++) {
    if (step === opts.joinAt) for (let id = firstRows; id < rows; id++) await add(id);
    if (step === opts.leaveAt) {
      for (const id of [...live].filter((id) => id % 3 === 1)) {
        await shortlist.remove(id);
        await full.remove(id);
        live.delete(id);
      }
    }
    const masks: Array<{ id: number; bitmask: Int32Array }> = [];
    for (const id of live) {
      const kind = kinds[(id + step) % kinds.length];
      if (kind === 'none') continue;
      let bitmask: Int32Array;
      if (kind === 'dense') bitmask = maskOf(Array.from({ length: vocab }, (_, t) => t).filter(() => rand() < 0.5));
      else if (kind === 'sparse') bitmask = maskOf(Array.from({ length: 40 }, () => Math.floor(rand() * vocab)));
      else if (kind === 'nothing') bitmask = new Int32Array(Math.ceil(vocab / 32));
      else if (kind === 'short') bitmask = maskOf(Array.from({ length: 3000 }, (_, t) => t), 100); // tokens 0..3199 only
      else {
        // The tokens the previous step ranked 2,000th to 2,100th for this row: a pick far below the top.
        const last = previous.get(id);
        if (!last) continue;
        const order = Array.from(last.keys()).sort((a, b) => last[b] - last[a]);
        bitmask = maskOf(order.slice(2000, 2100));
      }
      masks.push({ id, bitmask });
    }
    const a = await shortlist.decode({ masks });
    const b = await full.decode({ masks, wantLogits: true });
    assert.deepEqual(a.ids, b.ids);
    assert.equal(b.logits!.length, b.ids.length * vocab);
    assert.deepEqual(a.tokens, b.tokens, `step ${step}: shortlist picks against the full path's`);
    b.ids.forEach((id, i) => {
      const logits = b.logits!.subarray(i * vocab, (i + 1) * vocab);
      assert.equal(b.tokens[i], maskedArgmax(logits, masks.find((m) => m.id === id)?.bitmask), `step ${step}, row ${id}`);
      previous.set(id, Float32Array.from(logits));
    });
    picked += a.tokens.length;
  }
  for (const id of live) {
    await shortlist.remove(id);
    await full.remove(id);
  }
  return picked;
}

describe('greedy picks from a shortlist of the output projection', () => {
  for (const rows of [1, 7, 16, 20, 33]) {
    test(`${rows} row(s), no masks: the full path's tokens`, async () => {
      assert.ok(await compare(rows, 16, ['none']) >= rows * 16);
    });
  }

  test('16 rows under masks: dense, sparse, low-ranked, none allowed, shorter than the vocabulary', async () => {
    await compare(16, 16, ['dense', 'sparse', 'low-ranked', 'nothing', 'short', 'none']);
  });

  test('rows join and leave between steps, under masks', async () => {
    await compare(21, 14, ['none', 'sparse', 'dense'], { joinAt: 4, leaveAt: 9 });
  });

  test('asking for logits still gives every logit, the same as the full path', async () => {
    for (const e of [shortlist, full]) {
      await e.addSequence(900, DEFAULT_SAMPLING);
      await e.prefill(900, prompts[0], true);
    }
    const a = await shortlist.decode({ wantLogits: true });
    const b = await full.decode({ wantLogits: true });
    assert.equal(a.logits!.length, vocab);
    assert.deepEqual(a.logits, b.logits);
    assert.deepEqual(a.tokens, b.tokens);
    for (const e of [shortlist, full]) await e.remove(900);
  });
});
