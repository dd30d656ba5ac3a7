// Hostile GGUF files: seeded random mutations of a small model's header and
// tensor table, and of the table the addon is handed. Each load must end, in
// time, in a clean error or a loaded model; the process then still serves.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { readGgufFile } from '../src/engine/gguf-metadata.js';
import { loadModelSpec } from '../src/engine/model-config.js';
import { createNativeEngine, type LoadOptions, type NativeEngine } from '../src/engine/native.js';
import { ROOT, VENV_PYTHON } from './support/fixtures.js';
import { mulberry32 as rng } from '../src/benchmark/workload.js';

const MODEL = path.join(ROOT, 'test', 'fixtures', 'generated', 'gguf-reader', 'mixed', 'llama', 'mixed.gguf');
const MUTATIONS = 500;
const TABLE_MUTATIONS = 300;
const PER_LOAD_MS = 20_000;
const CPU_F32: LoadOptions = { weights: 'float32', device: 'cpu' };
const GREEDY = { temperature: 0, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, repetitionContextSize: 20, seed: 0 };

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-fuzz-'));
let engine: NativeEngine;


async function withinTime<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${PER_LOAD_MS} ms`)), PER_LOAD_MS);
  });
  try {
    return await Promise.race([p, limit]);
  } finally {
    clearTimeout(timer);
  }
}

/** Kinds of error seen (message without the file and numbers), for the report. */
const kinds = new Map<string, number>();

/** A load that must either work or fail with an Error whose message says what and where. */
async function loadOrCleanError(what: string, load: () => Promise<unknown>): Promise<'loaded' | 'refused'> {
  try {
    await withinTime(what, load());
    return 'loaded';
  } catch (e) {
    assert.ok(e instanceof Error, `${what}: threw a non-Error ${String(e)}`);
    assert.doesNotMatch(e.message, /no answer within/, `${what}: hung`);
    // The engine thread prefixes its errors with the operation (load: ...).
    assert.match(e.message, /^(load: )?\[(gguf|model|weights)\] \/\S+: /, `${what}: error names no file: ${e.message}`);
    const kind = e.message.replace(/^(load: )?\[\w+\] \S+: /, '').replace(/'[^']*'/g, "'…'").replace(/\d+/g, 'N').slice(0, 70);
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    return 'refused';
  }
}

function reportKinds(t: { diagnostic(message: string): void }) {
  for (const [kind, n] of [...kinds].sort((a, b) => b[1] - a[1])) t.diagnostic(`${n} x ${kind}`);
  kinds.clear();
}

async function assertStillServes() {
  await engine.load(await loadModelSpec(MODEL), CPU_F32);
  await engine.addSequence(1, GREEDY);
  const r = await engine.prefill(1, Int32Array.from([3, 17, 42]), true);
  assert.equal(typeof r.token, 'number');
  await engine.decode();
  await engine.remove(1);
}

before(() => {
  if (!fs.existsSync(MODEL)) {
    execFileSync(VENV_PYTHON, [path.join(ROOT, 'test', 'python', 'make_mixed_gguf.py'), path.dirname(path.dirname(MODEL))],
      { stdio: ['ignore', 'ignore', 'inherit'] });
  }
  engine = createNativeEngine();
});
after(async () => {
  await engine.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('GGUF fuzzing', () => {
  test(`${MUTATIONS} mutated headers and tensor tables: each a clean error or a load`, { timeout: 900_000 }, async (t) => {
    const original = fs.readFileSync(MODEL);
    const headerEnd = (await readGgufFile(MODEL)).tensorDataOffset;
    const counts = { loaded: 0, refused: 0 };
    for (let i = 0; i < MUTATIONS; i++) {
      const random = rng(1000 + i);
      const bytes = Buffer.from(original);
      const edits = 1 + Math.floor(random() * 4);
      for (let k = 0; k < edits; k++) {
        const at = Math.floor(random() * headerEnd);
        // Small counts, all-ones bytes (huge lengths) and random bytes.
        const kind = random();
        bytes[at] = kind < 0.3 ? Math.floor(random() * 8) : kind < 0.5 ? 0xff : Math.floor(random() * 256);
      }
      const length = random() < 0.1 ? Math.floor(random() * bytes.length) : bytes.length;
      const file = path.join(tmp, `m${i}.gguf`);
      fs.writeFileSync(file, bytes.subarray(0, length));
      counts[await loadOrCleanError(`mutation ${i}`, async () => engine.load(await loadModelSpec(file), CPU_F32))]++;
      fs.rmSync(file);
    }
    t.diagnostic(`loaded ${counts.loaded}, refused ${counts.refused}`);
    reportKinds(t);
    assert.ok(counts.refused > 0);
    await assertStillServes();
  });

  test(`${TABLE_MUTATIONS} hostile tables handed straight to the addon: each a clean error or a load`, { timeout: 600_000 }, async (t) => {
    const spec = await loadModelSpec(MODEL);
    const size = fs.statSync(MODEL).size;
    const counts = { loaded: 0, refused: 0 };
    const huge = [2 ** 53, 2 ** 40, 2 ** 32 + 32, 2 ** 31, size, size - 1, 0];
    for (let i = 0; i < TABLE_MUTATIONS; i++) {
      const random = rng(5000 + i);
      const pick = <T>(xs: T[]) => xs[Math.floor(random() * xs.length)];
      const tensors = spec.gguf!.tensors.map((x) => ({ ...x, shape: [...x.shape] }));
      let dataOffset = spec.gguf!.dataOffset;
      const target = pick(tensors);
      const field = Math.floor(random() * 5);
      if (field === 0) target.offset = pick([...huge, target.offset + 1, target.offset + 4096]);
      else if (field === 1) target.shape[Math.floor(random() * target.shape.length)] = pick([...huge, 1, 255, 3 * 2 ** 21]);
      else if (field === 2) target.dtype = Math.floor(random() * 40);
      else if (field === 3) target.shape = pick([[], [1, 1, 1, 1, 1], [256, 2 ** 30, 2 ** 30], [0, 256]]);
      else dataOffset = pick(huge);
      counts[await loadOrCleanError(`table mutation ${i}`, () => engine.load({ ...spec, gguf: { dataOffset, tensors } }, CPU_F32))]++;
    }
    t.diagnostic(`loaded ${counts.loaded}, refused ${counts.refused}`);
    reportKinds(t);
    assert.ok(counts.refused > 0);
    await assertStillServes();
  });
});
