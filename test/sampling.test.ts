// Per-row sampling on the default model: each setting does what it says, a
// seed reproduces its row, and rows with different settings share a batch
// without changing each other.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { openModel, type ModelSession } from '../src/engine/engine-session.js';
import type { SamplingParams } from '../src/engine/native.js';

const GREEDY: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, repetitionContextSize: 20, seed: 0 };
let s: ModelSession;
let prompt: Int32Array;
let probs: Float64Array;
let best: number;
let nextId = 1;

function chat(content: string): Int32Array {
  const text = s.tokenizer.applyChatTemplate([{ role: 'user', content }], { addGenerationPrompt: true });
  return Int32Array.from(s.tokenizer.encode(text, { addSpecialTokens: false }));
}

/** The first token sampled for `prompt` with these settings. */
async function first(params: Partial<SamplingParams>): Promise<number> {
  const id = nextId++;
  await s.engine.addSequence(id, { ...GREEDY, ...params });
  const r = await s.engine.prefill(id, prompt, true);
  await s.engine.remove(id);
  return r.token!;
}

async function generate(rows: Array<{ ids: Int32Array; params: Partial<SamplingParams> }>, steps: number): Promise<string[]> {
  const out = new Map<number, number[]>();
  const order: number[] = [];
  for (const row of rows) {
    const id = nextId++;
    order.push(id);
    await s.engine.addSequence(id, { ...GREEDY, ...row.params });
    out.set(id, [(await s.engine.prefill(id, row.ids, true)).token!]);
  }
  for (let i = 0; i < steps; i++) {
    const d = await s.engine.decode();
    d.ids.forEach((id, k) => out.get(id)!.push(d.tokens[k]));
  }
  for (const id of order) await s.engine.remove(id);
  return order.map((id) => s.tokenizer.decode(out.get(id)!));
}

before(async () => {
  s = await openModel();
  prompt = chat('Hello!');
  await s.engine.addSequence(0, GREEDY);
  const logits = (await s.engine.prefill(0, prompt, true, true)).logits!;
  await s.engine.remove(0);
  const max = Math.max(...logits);
  probs = Float64Array.from(logits, (l) => Math.exp(l - max));
  const z = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / z);
  best = probs.indexOf(Math.max(...probs));
});
after(async () => s.close());

test('temperature 1 draws tokens with the softmax probabilities', async () => {
  const n = 200;
  let hits = 0;
  for (let seed = 0; seed < n; seed++) if ((await first({ temperature: 1, seed })) === best) hits++;
  const p = probs[best];
  const sigma = Math.sqrt((p * (1 - p)) / n);
  assert.ok(p < 0.99, 'the prompt leaves room for other tokens');
  assert.ok(Math.abs(hits / n - p) < 4 * sigma, `top token drawn ${hits}/${n} times, softmax says ${p.toFixed(3)}`);
});

test('top-k 1, a tiny top-p and a high min-p all reduce to the best token', async () => {
  for (let seed = 0; seed < 20; seed++) {
    assert.equal(await first({ temperature: 1.5, topK: 1, seed }), best);
    assert.equal(await first({ temperature: 1.5, topP: 0.01, seed }), best);
    assert.equal(await first({ temperature: 1.5, minP: 0.9, seed }), best);
  }
});

test('a seed reproduces its row; other seeds differ', async () => {
  const ids = chat('Tell me a story about a robot.');
  const [a, b, c] = await generate([
    { ids, params: { temperature: 1, seed: 42 } },
    { ids, params: { temperature: 1, seed: 42 } },
    { ids, params: { temperature: 1, seed: 43 } },
  ], 24);
  assert.equal(a, b);
  assert.notEqual(a, c);
});

test('the repetition penalty breaks a greedy loop', async () => {
  const ids = chat('Write a haiku about rain.');
  const [plain, penalized] = await generate([
    { ids, params: {} },
    { ids, params: { repetitionPenalty: 1.5 } },
  ], 40);
  const count = (t: string) => t.split('gentle rain').length - 1;
  assert.ok(count(plain) >= 3, `the greedy text loops: ${JSON.stringify(plain)}`);
  assert.ok(count(penalized) < count(plain), `penalized: ${JSON.stringify(penalized)}`);
});

test('greedy rows are unchanged by sampled rows in the same batch', async () => {
  const ids = chat('What is the capital of France?');
  const [alone] = await generate([{ ids, params: {} }], 16);
  const mixed = await generate([
    { ids: chat('Tell me a joke.'), params: { temperature: 0.9, topP: 0.9, seed: 1 } },
    { ids, params: {} },
    { ids: chat('Name a color.'), params: { temperature: 1.2, topK: 40, minP: 0.05, seed: 2 } },
  ], 16);
  assert.equal(mixed[1], alone);
  assert.match(alone, /Paris/);
});

const argmaxOf = (v: ArrayLike<number>) => {
  let best = 0;
  for (let t = 1; t < v.length; t++) if (v[t] > v[best]) best = t;
  return best;
};

/** Steps of one row (alone in the batch) with the raw logits of each step: [first token, logits, logprobs?]... */
async function steps(ids: Int32Array, params: Partial<SamplingParams>, n: number) {
  const id = nextId++;
  await s.engine.addSequence(id, { ...GREEDY, ...params });
  const first = await s.engine.prefill(id, ids, true, true);
  const out = [{ token: first.token!, logits: first.logits!, logprobs: first.logprobs }];
  for (let i = 0; i < n; i++) {
    const d = await s.engine.decode({ wantLogits: true });
    const k = d.ids.indexOf(id);
    const V = d.logits!.length / d.ids.length;
    out.push({ token: d.tokens[k], logits: d.logits!.subarray(k * V, (k + 1) * V), logprobs: d.logprobs?.[k] ?? undefined });
  }
  await s.engine.remove(id);
  return out;
}

test("greedy picks computed on the engine (no logits asked for) are the first maximum of each row's logits", async () => {
  // Several rows, so the picks of a batch are split over the engine's threads.
  const prompts = ['Name three fruits.', 'What is 2 + 2?', 'Write a haiku about rain.', 'Hello!', 'Why is the sky blue?'].map(chat);
  const run = async (wantLogits: boolean) => {
    const ids: number[] = [];
    for (const p of prompts) {
      const id = nextId++;
      ids.push(id);
      await s.engine.addSequence(id, GREEDY);
      await s.engine.prefill(id, p, true);
    }
    const steps: Array<{ ids: number[]; tokens: number[]; logits?: Float32Array }> = [];
    for (let i = 0; i < 6; i++) {
      const d = await s.engine.decode(wantLogits ? { wantLogits: true } : undefined);
      steps.push({ ids: Array.from(d.ids, (x) => ids.indexOf(x)), tokens: [...d.tokens], logits: d.logits ?? undefined });
    }
    for (const id of ids) await s.engine.remove(id);
    return steps;
  };
  const device = await run(false);
  const host = await run(true);
  assert.deepEqual(device.map((x) => x.tokens), host.map((x) => x.tokens));
  for (const step of host) {
    const V = step.logits!.length / step.tokens.length;
    step.tokens.forEach((t, k) => assert.equal(t, argmaxOf(step.logits!.subarray(k * V, (k + 1) * V))));
  }
});

test('presence and frequency penalties subtract presence + frequency x count from the generated tokens, not the prompt', async () => {
  const ids = chat('Count from 1 to 30, separated by commas.');
  for (const [presencePenalty, frequencyPenalty] of [[1.5, 2], [-2, -0.5]]) {
    const out = await steps(ids, { presencePenalty, frequencyPenalty }, 24);
    // The first token has no generated tokens before it: the prompt is not penalized.
    assert.equal(out[0].token, argmaxOf(out[0].logits));
    const counts = new Map<number, number>([[out[0].token, 1]]);
    let changed = 0;
    for (const { token, logits } of out.slice(1)) {
      const penalized = Float32Array.from(logits);
      for (const [t, c] of counts) penalized[t] -= presencePenalty + frequencyPenalty * c;
      assert.equal(token, argmaxOf(penalized), `penalties ${presencePenalty}, ${frequencyPenalty}`);
      if (token !== argmaxOf(logits)) changed++;
      counts.set(token, (counts.get(token) ?? 0) + 1);
    }
    if (presencePenalty > 0) assert.ok(changed > 0, 'the penalties changed some greedy picks');
  }
});

test("logprobs: the chosen token's log-softmax of the raw logits and the k most likely, prefill's token included", async () => {
  const logSoftmax = (v: ArrayLike<number>) => {
    const max = Math.max(...Array.from(v));
    const z = Math.log(Array.from(v).reduce((a, l) => a + Math.exp(l - max), 0)) + max;
    return Float64Array.from(v, (l) => l - z);
  };
  // Sampled with filters and a penalty: logprobs still describe the raw distribution.
  const out = await steps(chat('Tell me a story about a robot.'), { temperature: 0.8, topK: 20, frequencyPenalty: 1, seed: 7, logprobs: 5 }, 12);
  for (const { token, logits, logprobs } of out) {
    assert.ok(logprobs, 'every step reports logprobs');
    const ls = logSoftmax(logits);
    assert.ok(Math.abs(logprobs.logprob - ls[token]) < 1e-4, `${logprobs.logprob} vs ${ls[token]}`);
    const order = Array.from(ls.keys()).sort((a, b) => ls[b] - ls[a]).slice(0, 5);
    assert.deepEqual(Array.from(logprobs.topIds), order);
    logprobs.topLogprobs.forEach((l, k) => assert.ok(Math.abs(l - ls[order[k]]) < 1e-4));
  }
  // logprobs 0: the chosen token only; a greedy row asking for logprobs picks as before.
  const greedy = await steps(prompt, { logprobs: 0 }, 4);
  const plain = await steps(prompt, {}, 4);
  assert.deepEqual(greedy.map((x) => x.token), plain.map((x) => x.token));
  assert.ok(greedy.every((x) => x.logprobs!.topIds.length === 0 && x.logprobs!.logprob <= 0));
  assert.ok(plain.every((x) => x.logprobs === undefined));
});
