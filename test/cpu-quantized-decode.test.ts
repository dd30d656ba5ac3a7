// The CPU decode kernel that reads 4- and 8-bit weights as stored
// (native/src/cpu_qmatmul.cpp), against the float32 path on the default model
// (Q4_1 and Q8_0 tensors); where the CPU has AVX-512 VNNI, both of its 4-bit
// layouts (integer dot products, and float32 multiply-adds as without VNNI). Decode steps take the kernel, in tiles of up to 10
// rows (4 without AVX-512) over groups of 16 output columns; with AVX-512,
// prefill chunks too (passes of 32 rows), without it they take BLAS. The reference-logits suite checks the
// kernel against mlx-lm on the tiny quantized models, and the GGUF suite on a
// vocabulary that is not a multiple of 16.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { defaultModelPath } from '../src/engine/engine-session.js';
import { loadModelSpec } from '../src/engine/model-config.js';
import { createNativeEngine, type NativeEngine } from '../src/engine/native.js';
import { DEFAULT_SAMPLING } from '../src/engine/scheduler.js';
import { Tokenizer } from '../src/engine/tokenizer.js';

const QUESTIONS = ['What is the capital of France?', 'Write a haiku about rain.', 'Explain recursion briefly.', 'List three fruits.',
  'Who wrote Hamlet?', 'What is 12 times 7?', 'Name a primary color.'];

let kernel: NativeEngine;
let floatKernel: NativeEngine; // MLXB_CPU_VNNI=0: the float32 multiply-add layout (the same as kernel without VNNI)
let dense: NativeEngine;
let prompts: number[][];

before(async () => {
  const spec = await loadModelSpec(defaultModelPath());
  const tokenizer = await Tokenizer.fromModel(defaultModelPath());
  prompts = QUESTIONS.map((q) => tokenizer.encode(
    tokenizer.applyChatTemplate([{ role: 'user', content: q }], { addGenerationPrompt: true }), { addSpecialTokens: false }));
  kernel = createNativeEngine();
  floatKernel = createNativeEngine();
  dense = createNativeEngine();
  await kernel.load(spec, { weights: 'float32', device: 'cpu' });
  const saved = process.env.MLXB_CPU_VNNI;
  process.env.MLXB_CPU_VNNI = '0'; // read as the weights load
  try {
    await floatKernel.load(spec, { weights: 'float32', device: 'cpu' });
  } finally {
    if (saved === undefined) delete process.env.MLXB_CPU_VNNI;
    else process.env.MLXB_CPU_VNNI = saved;
  }
  await dense.load(spec, { weights: 'float32', device: 'cpu', quantizedDecode: false });
});
after(async () => {
  await kernel?.close();
  await floatKernel?.close();
  await dense?.close();
});

/** Greedy tokens per row, and the first decode step's logits. */
async function decodeRows(engine: NativeEngine, rows: number, steps: number) {
  const tokens: number[][] = Array.from({ length: rows }, () => []);
  for (let id = 0; id < rows; id++) {
    await engine.addSequence(id, DEFAULT_SAMPLING);
    await engine.prefill(id, Int32Array.from(prompts[id % prompts.length]), true);
  }
  let firstLogits: Float32Array | undefined;
  for (let s = 0; s < steps; s++) {
    const r = await engine.decode({ wantLogits: s === 0 });
    firstLogits ??= r.logits;
    r.ids.forEach((id, i) => tokens[id].push(r.tokens[i]));
  }
  for (let id = 0; id < rows; id++) await engine.remove(id);
  return { tokens, firstLogits: firstLogits! };
}

describe('CPU decode from quantized weights', () => {
  for (const rows of [1, 3, 6, 9, 19, 32]) {
    test(`${rows} row(s): logits match the float32 path and greedy text is the same`, async () => {
      const b = await decodeRows(dense, rows, 12);
      for (const [name, engine] of [['kernel', kernel], ['float32 kernel', floatKernel]] as const) {
        const a = await decodeRows(engine, rows, 12);
        assert.equal(a.firstLogits.length, b.firstLogits.length);
        let worst = 0;
        for (let i = 0; i < a.firstLogits.length; i++) worst = Math.max(worst, Math.abs(a.firstLogits[i] - b.firstLogits[i]));
        // Summation order differs, and the integer dot rounds x to 22 bits a
        // block (3.2e-4 at most seen, 7e-5 without); logits here are of order 10-30.
        assert.ok(worst < 1e-3, `${name}: largest logit difference ${worst}`);
        assert.deepEqual(a.tokens, b.tokens, name);
      }
    });
  }
});
