// The addon's own GGUF reader (native/src/gguf_reader.cpp, ggml_types.cpp):
// every supported type dequantized exactly as the `gguf` Python package does,
// the MLX-affine repack the GPU keeps equal to it, tiny Q4_K_M-like models
// giving the logits of their float32 twins, read-only and symlinked files,
// and hostile headers and tensor tables refused cleanly.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { readGgufFile } from '../src/engine/gguf-metadata.js';
import { loadModelSpec } from '../src/engine/model-config.js';
import type { ModelSpec } from '../src/engine/model-spec.js';
import { createNativeEngine, type LoadOptions, type NativeEngine } from '../src/engine/native.js';
import { ROOT, VENV_PYTHON, maxAbsDiff } from './support/fixtures.js';
import { readSafetensors } from './support/safetensors.js';

const OUT = path.join(ROOT, 'test', 'fixtures', 'generated', 'gguf-reader');
const TYPES_DIR = path.join(OUT, 'types');
const MODELS_DIR = path.join(OUT, 'mixed');
const TYPES = ['F32', 'F16', 'BF16', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K',
  'IQ4_NL', 'IQ4_XS'];
const AFFINE_BITS: Record<string, number> = { Q4_0: 4, Q4_1: 4, Q4_K: 4, Q5_0: 5, Q5_1: 5, Q5_K: 5, Q8_0: 8 };
const GREEDY = { temperature: 0, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, repetitionContextSize: 20, seed: 0 };
const CPU_F32: LoadOptions = { weights: 'float32', device: 'cpu' };

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-gguf-'));
let engine: NativeEngine;

function python(script: string, ...args: string[]) {
  execFileSync(VENV_PYTHON, [path.join(ROOT, 'test', 'python', script), ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
}

before(() => {
  python('make_gguf_types.py', TYPES_DIR);
  python('make_mixed_gguf.py', MODELS_DIR);
  engine = createNativeEngine();
});
after(async () => {
  await engine.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** First differing index of two arrays compared bit for bit, or -1. */
function firstDifference(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i] && !(a[i] === 0 && b[i] === 0)) return i;
  return -1;
}

describe('GGUF tensor types', () => {
  for (const type of TYPES) {
    test(`${type}: float32 values equal gguf.quants.dequantize${AFFINE_BITS[type] ? ', and so does the MLX-affine repack' : ''}`, async () => {
      const file = await readGgufFile(path.join(TYPES_DIR, 'types.gguf'));
      const reference = readSafetensors(path.join(TYPES_DIR, 'reference.safetensors')).get(type)!.data as Float32Array;
      const table = { dataOffset: file.tensorDataOffset, tensors: file.tensors };
      const got = await engine.ggufTensorValues(file.path, table, `t.${type}`);
      const at = firstDifference(got.values, reference);
      assert.equal(at, -1, `${type}: value ${at} is ${got.values[at]}, reference ${reference[at]}`);
      assert.equal(got.bits, AFFINE_BITS[type]);
      if (got.affine) {
        const atAffine = firstDifference(got.affine, reference);
        assert.equal(atAffine, -1, `${type} repack: value ${atAffine} is ${got.affine[atAffine]}, reference ${reference[atAffine]}`);
      }
    });
  }

  test('a type the reader does not convert is refused with tensor, type and file named', async () => {
    const file = path.join(tmp, 'iq2.gguf');
    python('make_bad_gguf.py', file, 'IQ2_XXS');
    await assert.rejects(loadModelSpec(file), /\[gguf\] .*iq2\.gguf: tensor 'blk\.0\.attn_q\.weight' has unsupported quant type IQ2_XXS/);
    // The addon refuses it on its own as well.
    const spec = await loadModelSpec(path.join(MODELS_DIR, 'llama', 'mixed.gguf'));
    const tensors = spec.gguf!.tensors.map((t) => (t.name === 'blk.1.attn_k.weight' ? { ...t, dtype: 16 } : t));
    await assert.rejects(engine.load({ ...spec, gguf: { ...spec.gguf!, tensors } }, CPU_F32),
      /\[gguf\] .*mixed\.gguf: tensor 'blk\.1\.attn_k\.weight' has unsupported type IQ2_XXS/);
  });
});

const PROMPTS = [[3, 17, 42, 99, 5, 128, 7, 200, 11], [250, 1, 64, 33, 90], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]];
const FED = [8, 77, 140, 3, 19, 201, 66, 45];

/** Prefill logits of each prompt alone, then teacher-forced batched decode logits. */
async function logitsOf(e: NativeEngine): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const [id, prompt] of PROMPTS.entries()) {
    await e.addSequence(id, GREEDY);
    out.push((await e.prefill(id, Int32Array.from(prompt), true, true)).logits!);
  }
  for (const token of FED) {
    const r = await e.decode({ inputs: PROMPTS.map((_, id) => ({ id, token: (token + id) % 256 })), wantLogits: true });
    out.push(r.logits!);
  }
  for (const id of PROMPTS.keys()) await e.remove(id);
  return out;
}

/** Whether the engine's AVX-512 kernels run here (cpu_has_avx512 in native/src/cpu_dispatch.h). */
function cpuHasAvx512(): boolean {
  if (process.env.MLXB_CPU_AVX512 === '0' || process.platform !== 'linux' || process.arch !== 'x64') return false;
  const flags = /^flags\s*:(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1].trim().split(/\s+/) ?? [];
  return ['avx512f', 'avx512bw', 'avx512vl', 'avx2', 'fma'].every((f) => flags.includes(f));
}

async function assertSameLogits(a: Float32Array[], b: Float32Array[], tolerance: number, label: string) {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, maxAbsDiff(a[i], b[i]));
  assert.ok(worst <= tolerance, `${label}: logits differ by ${worst} (tolerance ${tolerance})`);
  return worst;
}

describe('Q4_K_M-like models against their float32 twins', () => {
  for (const arch of ['llama', 'gemma3']) {
    test(`${arch}: CPU float32 weights, with and without the quantized decode copies`, async (t) => {
      const mixed = await loadModelSpec(path.join(MODELS_DIR, arch, 'mixed.gguf'));
      const dense = await loadModelSpec(path.join(MODELS_DIR, arch, 'f32.gguf'));
      await engine.load(dense, { ...CPU_F32, quantizedDecode: false });
      const reference = await logitsOf(engine);
      const loaded = await engine.load(mixed, { ...CPU_F32, quantizedDecode: false });
      assert.equal(loaded.weights, 'float32');
      assert.match(loaded.weightsNote!, /^GGUF matrices: 0 kept quantized, \d+ \(.*Q4_K -> float32 x8.*\) dense$/);
      const worstDense = await assertSameLogits(await logitsOf(engine), reference, 1e-4, `${arch} dense`);
      const withCopies = await engine.load(mixed, CPU_F32);
      // The decode kernel reads 4- and 8-bit affine copies where the CPU has AVX2 (none kept elsewhere).
      if (!/^GGUF matrices: 0 kept/.test(withCopies.weightsNote!)) {
        assert.match(withCopies.weightsNote!, /Q4_K 4-bit \(CPU decode copy\) x8, Q8_0 8-bit \(CPU decode copy\) x2/);
        // With AVX-512 every step takes the copies, and of those matrices only
        // the embedding table (a Q4_K here) is also made dense, for lookups.
        assert.match(withCopies.weightsNote!, cpuHasAvx512() ? /Q4_K -> float32 x1\b/ : /Q4_K -> float32 x8\b/);
      }
      const worstKernel = await assertSameLogits(await logitsOf(engine), reference, 1e-4, `${arch} quantized decode`);
      t.diagnostic(`max |diff|: dense ${worstDense}, quantized decode ${worstKernel}; ${withCopies.weightsNote}`);
    });

    test(`${arch}: weights kept quantized (the GPU's form, run by MLX on the CPU)`, async (t) => {
      const mixed = await loadModelSpec(path.join(MODELS_DIR, arch, 'mixed.gguf'));
      const dense = await loadModelSpec(path.join(MODELS_DIR, arch, 'f32.gguf'));
      await engine.load(dense, { ...CPU_F32, quantizedDecode: false });
      const reference = await logitsOf(engine);
      const loaded = await engine.load(mixed, { weights: 'quantized', device: 'cpu' });
      assert.match(loaded.weightsNote!, /Q4_K 4-bit x\d+.*Q5_0 5-bit x\d+.*Q8_0 8-bit x\d+.* kept quantized/);
      assert.match(loaded.weightsNote!, /Q6_K -> float16 x\d+/);
      // Half-precision activations: a bound relative to the logits' size.
      const largest = Math.max(...reference.map((r) => r.reduce((m, x) => Math.max(m, Math.abs(x)), 0)));
      const worst = await assertSameLogits(await logitsOf(engine), reference, 0.01 * largest, `${arch} quantized`);
      t.diagnostic(`max |diff| ${worst} (largest logit ${largest}); ${loaded.weightsNote}`);
    });
  }
});

describe('GGUF files', () => {
  test('a read-only (chmod 444) file and a symlink into a blob store load', async () => {
    const source = path.join(MODELS_DIR, 'llama', 'mixed.gguf');
    await engine.load(await loadModelSpec(source), CPU_F32);
    const reference = await logitsOf(engine);
    const readOnly = path.join(tmp, 'read-only.gguf');
    fs.copyFileSync(source, readOnly);
    fs.chmodSync(readOnly, 0o444);
    await engine.load(await loadModelSpec(readOnly), CPU_F32);
    await assertSameLogits(await logitsOf(engine), reference, 0, 'read-only');
    // Hugging Face cache layout: snapshots/<rev>/model.gguf -> ../../blobs/<hash>
    const hub = path.join(tmp, 'models--someone--tiny-GGUF');
    fs.mkdirSync(path.join(hub, 'blobs'), { recursive: true });
    fs.mkdirSync(path.join(hub, 'snapshots', 'abc123'), { recursive: true });
    fs.copyFileSync(source, path.join(hub, 'blobs', 'f00d'));
    fs.chmodSync(path.join(hub, 'blobs', 'f00d'), 0o444);
    const link = path.join(hub, 'snapshots', 'abc123', 'model.gguf');
    fs.symlinkSync(path.join('..', '..', 'blobs', 'f00d'), link);
    await engine.load(await loadModelSpec(link), CPU_F32);
    await assertSameLogits(await logitsOf(engine), reference, 0, 'symlink');
  });
});
