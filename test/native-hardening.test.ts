// Failures inside the native addon that used to crash the process, read past
// a buffer, or fail a whole batch for one row: the CPU worker pool when a task
// throws, sampling past the tokens the model takes as input, malformed
// checkpoints the CPU kernels would read out of bounds, failed host
// allocations, and JS numbers out of range at the addon's boundary.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';

import { loadModelSpec } from '../src/engine/model-config.js';
import { createNativeEngine, type NativeEngine, type SamplingParams } from '../src/engine/native.js';
import type { ModelSpec } from '../src/engine/model-spec.js';
import { DEFAULT_MODEL, REFERENCE_DIR, ROOT, VENV_PYTHON } from './support/fixtures.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-hardening-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const GREEDY: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, repetitionContextSize: 20, seed: 0 };
const CXX = process.env.CXX ?? 'g++';

/** Compiles test/native/<name>.cpp with the addon's sources on the include path; returns the binary. */
function compile(name: string, extra: string[] = []): string {
  const out = path.join(tmp, name);
  const r = spawnSync(CXX, ['-std=c++20', '-O1', '-pthread', '-I', path.join(ROOT, 'native', 'src'),
    path.join(ROOT, 'test', 'native', `${name}.cpp`), '-o', out, ...extra], { encoding: 'utf8' });
  assert.equal(r.status, 0, `${CXX} failed:\n${r.stderr}`);
  return out;
}

describe('the CPU worker pool when a task throws', () => {
  test('the first exception reaches the caller, no task runs after run() returns, and later calls run every task', () => {
    const bin = compile('worker_pool_test');
    const r = spawnSync(bin, [], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, MLX_BATCH_CPU_THREADS: '4' } });
    assert.equal(r.signal, null, `killed by ${r.signal} (a hang, or std::terminate):\n${r.stdout}${r.stderr}`);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), ['ok throws', 'ok single task', 'ok later calls']);
  });
});

describe('a failed host allocation', () => {
  // MLX's CPU-only allocator (Linux) returns a null buffer where malloc fails; the kernels' outputs and GGUF conversions
  // then wrote to address 0. (The Metal allocator throws on its own, and macOS does not enforce RLIMIT_AS.)
  test('checked_malloc throws, naming the size, where MLX\'s CPU allocator gives a null buffer', { skip: process.platform !== 'linux' }, () => {
    // The MLX the addon is built against (scripts/setup.mjs).
    const prefix = spawnSync(VENV_PYTHON, ['-m', 'mlx', '--cmake-dir'], { encoding: 'utf8' }).stdout.trim();
    assert.ok(fs.existsSync(path.join(prefix, 'include', 'mlx', 'mlx.h')), `no MLX headers under '${prefix}'`);
    const lib = path.join(prefix, 'lib');
    const bin = compile('checked_malloc_test', ['-I', path.join(prefix, 'include'), '-L', lib, '-lmlx', `-Wl,-rpath,${lib}`]);
    const r = spawnSync(bin, [], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.signal, null, `killed by ${r.signal}:\n${r.stdout}${r.stderr}`);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^ok refused: \[malloc\] Unable to allocate 4294967296 bytes\.$/m);
    assert.match(r.stdout, /^ok small allocation$/m);
  });
});

/** The first index of the largest of logits[0, limit), as the host sampler picks a greedy row. */
function argmaxBelow(logits: Float32Array, limit: number): number {
  let best = 0;
  for (let t = 1; t < limit; t++) if (logits[t] > logits[best]) best = t;
  return best;
}

describe('a vocabulary smaller than the output projection', () => {
  // The default model with vocabSize 1000 of its 49,152 rows (as a Gemma 3
  // config without vocab_size gets 262,144 of 262,208): tokens at or past 1000
  // cannot be fed back, so no path may pick one. Before the fix one row's pick
  // of such a token failed every later decode of the whole batch.
  const LIMIT = 1000;
  const PROMPTS = [[504, 282, 314, 28, 216], [1, 9, 2, 3], [504, 357, 282, 469, 314], [28, 216, 504]].map((p) => Int32Array.from(p));

  test('every sampling path stays below it: greedy shortlist, greedy on the logits, host greedy, random sampling, prefill', async () => {
    const spec: ModelSpec = { ...(await loadModelSpec(DEFAULT_MODEL)), vocabSize: LIMIT };
    const shortlist = createNativeEngine();
    const full = createNativeEngine();
    let pastLimit = 0; // picks the full logits would have made at or past LIMIT: the test must meet some
    try {
      await shortlist.load(spec, { weights: 'auto', device: 'cpu' });
      await full.load(spec, { weights: 'auto', device: 'cpu', greedyShortlist: false });
      const both = async <T>(f: (e: NativeEngine) => Promise<T>): Promise<[T, T]> => [await f(shortlist), await f(full)];

      // Prefill: the first token of greedy rows 1 and 2.
      for (const id of [1, 2]) {
        const [a, b] = await both(async (e) => {
          await e.addSequence(id, GREEDY);
          return e.prefill(id, PROMPTS[id - 1], true, true);
        });
        assert.equal(a.logits!.length, 49152, 'the logits keep every output row');
        assert.equal(a.token, argmaxBelow(a.logits!, LIMIT));
        assert.equal(b.token, a.token);
        if (argmaxBelow(a.logits!, a.logits!.length) >= LIMIT) pastLimit++;
      }

      // All-greedy steps: the shortlist on one engine; on the other, greedy on
      // the device's logits (odd steps) or on the host (logits asked for).
      for (let step = 0; step < 6; step++) {
        const wantLogits = step % 2 === 0;
        const a = await shortlist.decode();
        const b = await full.decode({ wantLogits });
        assert.equal(a.failed, undefined);
        assert.equal(b.failed, undefined);
        assert.deepEqual(Array.from(a.ids), [1, 2]);
        assert.deepEqual(Array.from(b.ids), [1, 2]);
        for (const t of a.tokens) assert.ok(t >= 0 && t < LIMIT, `step ${step}: token ${t}`);
        assert.deepEqual(Array.from(a.tokens), Array.from(b.tokens), `step ${step}`);
        if (wantLogits) {
          for (let r = 0; r < 2; r++) {
            const row = b.logits!.subarray(r * 49152, (r + 1) * 49152);
            assert.equal(b.tokens[r], argmaxBelow(row, LIMIT));
            if (argmaxBelow(row, row.length) >= LIMIT) pastLimit++;
          }
        }
      }

      // A sampled row (temperature 1, no filters) and a logprobs row, prefilled together: host sampling for the whole batch.
      const sampled = { ...GREEDY, temperature: 1, seed: 7 };
      const [pa, pb] = await both(async (e) => {
        await e.addSequence(3, sampled);
        await e.addSequence(4, { ...GREEDY, logprobs: 2 });
        return e.prefillBatch([{ id: 3, tokens: PROMPTS[2] }, { id: 4, tokens: PROMPTS[3] }], true);
      });
      for (const r of [...pa, ...pb]) assert.ok(r.token! >= 0 && r.token! < LIMIT, `prefillBatch token ${r.token}`);
      assert.equal(pa[1].token, argmaxBelow(pa[1].logits!, LIMIT));
      assert.deepEqual(pa.map((r) => r.token), pb.map((r) => r.token));
      for (let step = 0; step < 12; step++) {
        const [a, b] = await both((e) => e.decode());
        assert.equal(a.failed, undefined);
        assert.deepEqual(Array.from(a.ids), [1, 2, 3, 4], `step ${step}: every row decodes`);
        for (const t of a.tokens) assert.ok(t >= 0 && t < LIMIT, `step ${step}: token ${t}`);
        assert.deepEqual(Array.from(a.tokens), Array.from(b.tokens), `step ${step}`);
        assert.equal(a.logprobs!.length, 4);
        assert.equal(a.logprobs![0], null);
        assert.equal(typeof a.logprobs![3]!.logprob, 'number');
      }
      assert.ok(pastLimit > 0, 'no greedy pick of the full logits went past the limit: the test did not test it');
    } finally {
      await shortlist.close();
      await full.close();
    }
  });
});

/** Writes a safetensors file of float32 and uint32 tensors. */
function writeSafetensors(file: string, tensors: Record<string, { dtype: 'F32' | 'U32'; shape: number[]; fill?: number }>, seed = 1) {
  let s = seed >>> 0;
  const next = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0);
  const header: Record<string, unknown> = {};
  const parts: Buffer[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const data = Buffer.alloc(4 * n);
    for (let i = 0; i < n; i++) {
      if (t.dtype === 'U32') data.writeUInt32LE(next(), 4 * i);
      else data.writeFloatLE(t.fill ?? (name.includes('norm') ? 1 : (next() / 2 ** 32 - 0.5) * 0.1), 4 * i);
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + data.length] };
    parts.push(data);
    offset += data.length;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, ...parts]));
}

describe('malformed checkpoints the CPU kernels would read past', () => {
  const H = 64;
  const I = 256;
  const f32 = (...shape: number[]) => ({ dtype: 'F32' as const, shape });
  const u32 = (...shape: number[]) => ({ dtype: 'U32' as const, shape });
  const p = 'model.layers.0.mlp';

  /** A one-layer llama folder: float32 weights, with `mlp` giving the MLP's tensors. */
  function model(name: string, mlp: Record<string, { dtype: 'F32' | 'U32'; shape: number[]; fill?: number }>, quantized = false): string {
    const dir = path.join(tmp, name);
    fs.mkdirSync(dir);
    const config = JSON.parse(fs.readFileSync(path.join(REFERENCE_DIR, 'llama', 'config.json'), 'utf8'));
    delete config.rope_scaling;
    Object.assign(config, { hidden_size: H, intermediate_size: I, num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2,
      head_dim: 16, vocab_size: 256, tie_word_embeddings: true, max_position_embeddings: 512 });
    if (quantized) config.quantization = { group_size: 32, bits: 4 };
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
    writeSafetensors(path.join(dir, 'model.safetensors'), {
      'model.embed_tokens.weight': f32(256, H),
      'model.norm.weight': f32(H),
      'model.layers.0.input_layernorm.weight': f32(H),
      'model.layers.0.post_attention_layernorm.weight': f32(H),
      'model.layers.0.self_attn.q_proj.weight': f32(64, H),
      'model.layers.0.self_attn.k_proj.weight': f32(32, H),
      'model.layers.0.self_attn.v_proj.weight': f32(32, H),
      'model.layers.0.self_attn.o_proj.weight': f32(H, 64),
      ...mlp,
    });
    return dir;
  }

  let engine: NativeEngine;
  after(async () => engine?.close());

  async function loadAndPrefill(dir: string, options: Record<string, unknown> = {}) {
    engine ??= createNativeEngine();
    await engine.load(await loadModelSpec(dir), { weights: 'auto', device: 'cpu', ...options });
    await engine.addSequence(1, GREEDY);
    try {
      return await engine.prefill(1, Int32Array.from([1, 2, 3, 4, 5]), true, true);
    } finally {
      await engine.remove(1);
    }
  }

  test('an up_proj with fewer rows than gate_proj is refused at load, naming the layer and the shapes', async () => {
    const good = model('mlp-good', { [`${p}.gate_proj.weight`]: f32(I, H), [`${p}.up_proj.weight`]: f32(I, H), [`${p}.down_proj.weight`]: f32(H, I) });
    const r = await loadAndPrefill(good);
    assert.equal(r.logits!.length, 256);
    const bad = model('mlp-short-up', { [`${p}.gate_proj.weight`]: f32(I, H), [`${p}.up_proj.weight`]: f32(16, H), [`${p}.down_proj.weight`]: f32(H, I) });
    // Before the fix: the CPU kernel read past up_proj's output (garbage logits, or a segfault on long prompts).
    for (const options of [{}, { genericAttention: true }, { quantizedDecode: false }]) {
      await assert.rejects(loadAndPrefill(bad, options), (e: Error) =>
        e.message.includes(`${bad}: '${p}' projections do not fit together: gate_proj (256, 64), up_proj (16, 64), down_proj (64, 256)`));
    }
    const badDown = model('mlp-wide-down', { [`${p}.gate_proj.weight`]: f32(I, H), [`${p}.up_proj.weight`]: f32(I, H), [`${p}.down_proj.weight`]: f32(H, 2 * I) });
    await assert.rejects(loadAndPrefill(badDown), /projections do not fit together: .* down_proj \(64, 512\)/);
    await loadAndPrefill(good); // the engine still serves
  });

  test('quantized scales and biases with fewer rows than the packed weight are refused at load, naming the tensor', async () => {
    const quantized = (rows: number) => ({
      [`${p}.gate_proj.weight`]: u32(I, H / 8), [`${p}.gate_proj.scales`]: f32(rows, H / 32), [`${p}.gate_proj.biases`]: f32(rows, H / 32),
      [`${p}.up_proj.weight`]: f32(I, H), [`${p}.down_proj.weight`]: f32(H, I),
    });
    const good = model('q-good', quantized(I), true);
    assert.equal((await loadAndPrefill(good)).logits!.length, 256);
    const bad = model('q-short-scales', quantized(16), true);
    // Before the fix: the CPU decode copy (CpuQuantWeight::from_affine) read past the scales (a segfault at 65,536 rows).
    for (const options of [{}, { quantizedDecode: false }, { weights: 'quantized' }]) {
      await assert.rejects(loadAndPrefill(bad, options), (e: Error) =>
        e.message.includes(`${bad}: '${p}.gate_proj' has packed weight (256, 8), scales (16, 2) and biases (16, 2)`));
    }
    await loadAndPrefill(good);
  });

  test('a NaN hidden state gives token 0 on every greedy path (never -1), and no row fails', async () => {
    // A final norm of NaN under a 4-bit tied embedding: every logit is NaN, and the greedy shortlist (where the CPU
    // has AVX-512 VNNI) reads the same quantized table as the output projection.
    const dir = model('nan-norm', {
      'model.norm.weight': { ...f32(H), fill: NaN },
      'model.embed_tokens.weight': u32(256, H / 8), 'model.embed_tokens.scales': f32(256, H / 32), 'model.embed_tokens.biases': f32(256, H / 32),
      [`${p}.gate_proj.weight`]: f32(I, H), [`${p}.up_proj.weight`]: f32(I, H), [`${p}.down_proj.weight`]: f32(H, I),
    }, true);
    for (const greedyShortlist of [true, false]) {
      engine ??= createNativeEngine();
      await engine.load(await loadModelSpec(dir), { weights: 'auto', device: 'cpu', greedyShortlist });
      for (const id of [1, 2]) {
        await engine.addSequence(id, GREEDY);
        const r = await engine.prefill(id, Int32Array.from([1, 2, 3 + id]), true, true);
        assert.ok(Number.isNaN(r.logits![0]));
        assert.equal(r.token, 0);
      }
      for (let step = 0; step < 3; step++) {
        const d = await engine.decode({ wantLogits: step === 1 });
        assert.equal(d.failed, undefined);
        assert.deepEqual(Array.from(d.ids), [1, 2]);
        assert.deepEqual(Array.from(d.tokens), [0, 0], `greedyShortlist ${greedyShortlist}, step ${step}`);
      }
      for (const id of [1, 2]) await engine.remove(id);
    }
  });
});

describe('numbers out of range at the JS boundary', () => {
  test('are refused with a RangeError naming the field, not converted with undefined behaviour', async () => {
    const engine = createNativeEngine();
    try {
      const range = (pattern: RegExp) => (e: Error) => e instanceof RangeError && pattern.test(e.message);
      const spec = await loadModelSpec(DEFAULT_MODEL);
      await assert.rejects(async () => engine.load({ ...spec, contextLength: 1e10 }, { weights: 'auto', device: 'cpu' }),
        range(/model spec: 'contextLength' must be a whole number in -2147483648\.\.2147483647, got 10000000000/));
      await assert.rejects(async () => engine.load({ ...spec, hiddenSize: 576.5 }, { weights: 'auto', device: 'cpu' }),
        range(/model spec: 'hiddenSize' must be a whole number .*, got 576\.5/));
      await assert.rejects(async () => engine.load({ ...spec, slidingWindow: -1e300 }, { weights: 'auto', device: 'cpu' }),
        range(/model spec: 'slidingWindow' must be a whole number/));
      await assert.rejects(async () => engine.load({ ...spec, quantization: { groupSize: 2 ** 31, bits: 4 } }, { weights: 'auto', device: 'cpu' }),
        range(/model spec: 'groupSize' must be a whole number/));
      await assert.rejects(async () => engine.addSequence(1, { ...GREEDY, topK: 1e12 }),
        range(/sampling: topK must be a whole number in 0\.\.2147483647, got 1000000000000/));
      await assert.rejects(async () => engine.addSequence(1, { ...GREEDY, topK: -1 }), range(/sampling: topK must be a whole number in 0\.\./));
      await assert.rejects(async () => engine.addSequence(1, { ...GREEDY, repetitionContextSize: 2 ** 40 }),
        range(/sampling: repetitionContextSize must be a whole number/));
      await assert.rejects(async () => engine.addSequence(1, { ...GREEDY, logprobs: 1e12 }), range(/sampling: logprobs must be a whole number/));
      await assert.rejects(async () => engine.addSequence(1, { ...GREEDY, seed: -1 }),
        range(/sampling: seed must be a whole number in 0\.\.2\^64-1, got -1/));
      await assert.rejects(async () => engine.addSequence(1, { ...GREEDY, seed: 2 ** 64 }), range(/sampling: seed must be a whole number/));
      await assert.rejects(async () => engine.addSequence(1, { ...GREEDY, seed: 0.5 }), range(/sampling: seed must be a whole number/));
      await assert.rejects(async () => engine.load(spec, { weights: 'auto', device: 'cpu', minBlockTokens: 2 ** 40 }),
        /load options: minBlockTokens must be a whole number in int32 range/);
      // In range, they still load and sample.
      await engine.load(spec, { weights: 'auto', device: 'cpu' });
      await engine.addSequence(1, { ...GREEDY, temperature: 0.7, topK: 2 ** 31 - 1, seed: 2 ** 53 - 1, repetitionContextSize: 0 });
      const r = await engine.prefill(1, Int32Array.from([504, 3575, 282, 4649, 314]), true);
      assert.equal(typeof r.token, 'number');
    } finally {
      await engine.close();
    }
  });
});
