// Bad input gets a clear error naming the thing and the file, and never takes
// the process down: after every failure below, the same process (and the same
// native engine) still loads the default model and answers.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { openModel } from '../src/engine/engine-session.js';
import { loadModelSpec } from '../src/engine/model-config.js';
import { addonPath, createNativeEngine, type NativeEngine } from '../src/engine/native.js';
import { Scheduler } from '../src/engine/scheduler.js';
import { runCli } from './support/cli.js';
import { DEFAULT_MODEL, REFERENCE_DIR, ROOT, VENV_PYTHON, maxAbsDiff, referenceModels } from './support/fixtures.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-bad-'));
const GREEDY = { temperature: 0, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, repetitionContextSize: 20, seed: 0 };
let engine: NativeEngine;

/** Loads through the same path a user's model takes: spec from the files, then the native engine. */
async function load(modelPath: string) {
  return engine.load(await loadModelSpec(modelPath), { weights: 'auto', device: 'auto' });
}

async function assertStillServes() {
  await load(DEFAULT_MODEL);
  await engine.addSequence(1, GREEDY);
  const r = await engine.prefill(1, Int32Array.from([504, 3575, 282, 4649, 314]), true); // "The capital of France is"
  assert.equal(typeof r.token, 'number');
  await engine.remove(1);
}

before(() => {
  referenceModels();
  engine = createNativeEngine();
});
after(async () => {
  await engine.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('bad model files', () => {
  test('a missing file', async () => {
    await assert.rejects(load(path.join(tmp, 'nope.gguf')), (e: Error) => e.message.includes('nope.gguf') && /not found/.test(e.message));
    const cli = await runCli(['generate', '--model', path.join(tmp, 'nope.gguf'), '-p', 'hi']);
    assert.equal(cli.code, 2);
    assert.match(cli.stderr, /model not found: .*nope\.gguf/);
  });

  test('a truncated GGUF', async () => {
    const file = path.join(tmp, 'truncated.gguf');
    const fd = fs.openSync(DEFAULT_MODEL, 'r');
    const buf = Buffer.alloc(20_000_000);
    fs.readSync(fd, buf, 0, buf.length, 0);
    fs.closeSync(fd);
    fs.writeFileSync(file, buf);
    await assert.rejects(load(file), /\[gguf\] .*truncated\.gguf: truncated tensor data/);
    // The native loader refuses it on its own too (no reliance on the TS check).
    const spec = await loadModelSpec(DEFAULT_MODEL);
    await assert.rejects(engine.load({ ...spec, path: file, weightFiles: [file] }, { weights: 'auto', device: 'auto' }),
      /truncated\.gguf: .*extends past the end of the file/);
    const cli = await runCli(['generate', '--model', file, '-p', 'hi']);
    assert.equal(cli.code, 1);
    assert.match(cli.stderr, /truncated\.gguf: truncated tensor data/);
    // Said once, in the sidecar's words, not wrapped in the RPC layer's.
    assert.equal(cli.stderr.match(/truncated tensor data/g)?.length, 1, cli.stderr);
    assert.doesNotMatch(cli.stderr, /failed with message/);
    const serve = await runCli(['serve', '--port', '0', '--token', 't', '--model', file]);
    assert.equal(serve.code, 1, serve.stderr);
    assert.equal(serve.stderr.match(/truncated tensor data/g)?.length, 1, serve.stderr);
    await assertStillServes();
  });

  test('a file that is not a GGUF', async () => {
    const file = path.join(tmp, 'notes.gguf');
    fs.writeFileSync(file, 'just some text, not a model\n'.repeat(10));
    await assert.rejects(load(file), /\[gguf\] .*notes\.gguf: not a GGUF file/);
    await assertStillServes();
  });

  test('a GGUF with a quant type the reader does not convert', async () => {
    const file = path.join(tmp, 'iq2.gguf');
    execFileSync(VENV_PYTHON, [path.join(ROOT, 'test', 'python', 'make_bad_gguf.py'), file, 'IQ2_XXS']);
    await assert.rejects(load(file), /iq2\.gguf: tensor 'blk\.0\.attn_q\.weight' has unsupported quant type IQ2_XXS/);
    await assertStillServes();
  });

  test('a token list longer than the embedding: ids past its rows are refused, not read out of bounds', async () => {
    const file = path.join(tmp, 'short-embedding.gguf');
    execFileSync(VENV_PYTHON, [path.join(ROOT, 'test', 'python', 'make_bad_gguf.py'), file, 'Q8_0', '8']);
    const spec = await loadModelSpec(file);
    assert.equal(spec.vocabSize, 40);
    await engine.load(spec, { weights: 'auto', device: 'auto' });
    await engine.addSequence(2, GREEDY);
    await assert.rejects(engine.prefill(2, Int32Array.from([3, 35]), true), /token id 35 is outside the vocabulary \(32\)/);
    const r = await engine.prefill(2, Int32Array.from([3, 31]), true);
    assert.equal(typeof r.token, 'number');
    await engine.remove(2);
    await assertStillServes();
  });

  test('a safetensors file with a bad header', async () => {
    const dir = path.join(tmp, 'bad-safetensors');
    fs.mkdirSync(dir);
    fs.copyFileSync(path.join(REFERENCE_DIR, 'llama', 'config.json'), path.join(dir, 'config.json'));
    const header = Buffer.from('{"model.embed_tokens.weight": {"dtype": "F32", "shape": [5');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    fs.writeFileSync(path.join(dir, 'model.safetensors'), Buffer.concat([len, header]));
    const file = path.join(dir, 'model.safetensors');
    await assert.rejects(load(dir), (e: Error) => e.message.includes(`${file}: not a safetensors file`));
    // The native loader refuses it on its own too.
    const spec = await loadModelSpec(path.join(REFERENCE_DIR, 'llama'));
    await assert.rejects(engine.load({ ...spec, path: dir, weightFiles: [file] }, { weights: 'auto', device: 'auto' }),
      (e: Error) => e.message.includes(`[safetensors] ${file}:`));
    await assertStillServes();
  });

  test('a folder with weights missing a tensor', async () => {
    const dir = path.join(tmp, 'wrong-arch-weights');
    fs.mkdirSync(dir);
    // qwen3 weights under a llama config: q/k norms are extra, nothing missing; llama weights under qwen3: norms missing.
    const config = JSON.parse(fs.readFileSync(path.join(REFERENCE_DIR, 'llama', 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, model_type: 'qwen3', head_dim: 16 }));
    fs.copyFileSync(path.join(REFERENCE_DIR, 'llama', 'model.safetensors'), path.join(dir, 'model.safetensors'));
    await assert.rejects(load(dir), /missing tensor 'model\.layers\.0\.self_attn\.q_norm\.weight' for architecture qwen3/);
    await assertStillServes();
  });

  test('an unsupported architecture', async () => {
    const dir = path.join(tmp, 'mamba');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'mamba', hidden_size: 64 }));
    await assert.rejects(load(dir), (e: Error) => e.message.includes(dir) && /unsupported architecture 'mamba'/.test(e.message));
  });
});

describe('bad requests', () => {
  test('a prompt longer than the context is refused, others still run', async () => {
    const session = await openModel(DEFAULT_MODEL);
    try {
      const scheduler = new Scheduler(session.engine, session.tokenizer, {
        maxBatch: 4, prefillTokensPerStep: 512, kvBudgetBytes: 2 ** 30, kvBytesPerToken: session.loaded.kvBytesPerToken,
        prefixCacheBytes: 0, contextLength: session.spec.contextLength, vocabSize: session.spec.vocabSize,
      }, () => undefined);
      // Under 8 characters a context token: tokenized whole, not refused by a probe of its start.
      const huge = 'lorem ipsum dolor sit amet '.repeat(2000);
      const [tooLong, fine] = await Promise.all([
        scheduler.submit({ requestId: 'long', messages: [{ role: 'user', content: huge }], maxTokens: 16 }),
        scheduler.submit({ requestId: 'ok', messages: [{ role: 'user', content: 'Say hi.' }], maxTokens: 8 }),
      ]);
      assert.equal(tooLong.finishReason, 'error');
      assert.equal(tooLong.errorType, 'invalid_request');
      // A prompt that alone fills the context (maxTokens is clamped to what a shorter one leaves).
      assert.equal(tooLong.errorCode, 'context_length_exceeded');
      assert.match(tooLong.error!, /the prompt has \d+ tokens and the model's context is 8192 tokens/);
      assert.notEqual(fine.finishReason, 'error');
      // The engine refuses it as well, before computing anything.
      await session.engine.addSequence(99, GREEDY);
      await assert.rejects(session.engine.prefill(99, new Int32Array(8193).fill(1), true), /over the model's context of 8192/);
      await session.engine.remove(99);
    } finally {
      await session.close();
    }
  });

  test('invalid sampling settings are refused with the setting named', async () => {
    await assertStillServes();
    await assert.rejects(async () => engine.addSequence(5, { ...GREEDY, topP: 1.5 }), /sampling: topP must be in \(0, 1\], got 1\.5/);
    await assert.rejects(engine.prefill(77, Int32Array.from([1]), true), /no prefilling sequence 77/);
    await engine.addSequence(6, GREEDY);
    await assert.rejects(engine.prefill(6, Int32Array.from([10 ** 6]), true), /token id 1000000 is outside the vocabulary/);
    await engine.remove(6);
    await assertStillServes();
  });

  test('ids, tokens and byte counts that are not whole numbers are refused, not rounded to another id', async () => {
    await assertStillServes();
    await assert.rejects(async () => engine.remove(NaN), /remove\(id\): id must be a whole number in int32 range/);
    await assert.rejects(async () => engine.addSequence(2 ** 32 + 5, GREEDY), /addSequence\(id, sampling\): id must be a whole number/);
    await assert.rejects(async () => engine.prefill(1.5, Int32Array.from([1]), true), /prefill\(id, tokens, last\): id must be a whole number/);
    await assert.rejects(async () => engine.prefill(7, [1, Infinity] as unknown as Int32Array, true), /prefill tokens element 1 must be a whole number/);
    await assert.rejects(async () => engine.decode({ inputs: [{ id: NaN, token: 1 }] }), /decode: inputs\[\]\.id must be a whole number/);
    await assert.rejects(async () => engine.setMemoryLimits(-1, NaN), /memoryLimit must be a non-negative byte count/);
    await assertStillServes();
  });
});

describe('engine settings that cannot serve a request', () => {
  test('a KV budget under one short request is refused at load, naming it', async () => {
    const cli = await runCli(['ask', '-q', 'hi', '--kv-budget', '100KiB', 'test/fixtures/ask/docs/config.yaml']);
    assert.equal(cli.code, 1, cli.stderr);
    assert.match(cli.stderr, /the KV budget \(--kv-budget, mlxBatch\.kvBudget\) of 0\.1 MiB holds 2 tokens of this model .* give at least \d+ MiB \(512 tokens\)/);
  });

  test('serve --max-tokens at or over the context is a usage error once the model is known', async () => {
    const cli = await runCli(['serve', '--port', '0', '--token', 't', '--max-tokens', '100000']);
    assert.equal(cli.code, 2, cli.stderr);
    assert.match(cli.stderr, /--max-tokens 100000 leaves no room for a prompt in the model's context of 8192 tokens/);
  });
});

describe('native errors', () => {
  test('an engine error with no JS stack frames (Error.stackTraceLimit = 0) rejects, and the process lives', () => {
    // In a child process: before the fix this aborted the whole process (std::out_of_range into N-API).
    const script = `
      Error.stackTraceLimit = 0;
      const { Engine } = require(${JSON.stringify(addonPath())});
      const engine = new Engine();
      engine.decode().then(
        () => { console.log('resolved'); process.exitCode = 3; },
        (e) => { console.log(JSON.stringify({ isError: e instanceof Error, message: e.message, stack: e.stack })); return engine.close(); });`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.signal, null, `the process died (${r.signal}): ${r.stderr}`);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    assert.equal(out.isError, true);
    assert.match(out.message, /^decode: no model is loaded/);
    assert.match(out.stack, /^Error: decode: no model is loaded/);
  });
});

describe('a failed step', () => {
  /**
   * Row 1 prefilled alone in two chunks, rows 2 and 3 prefilled together,
   * then four decode steps of all three, and row 4 started afterwards: every
   * logits vector along the way. `failAt` makes the named step's evaluation
   * fail once (after its forward pass), and the step is retried.
   */
  async function trace(failAt?: 'prefill' | 'prefillBatch' | 'decode'): Promise<Float32Array[]> {
    const logits: Float32Array[] = [];
    const attempt = async <T>(step: string, run: () => Promise<T>): Promise<T> => {
      if (failAt === step) {
        await engine.failNextEval();
        await assert.rejects(run(), /evaluation failed \(injected by failNextEval\)/);
      }
      return run();
    };
    const prompt = Int32Array.from([504, 3575, 282, 4649, 314]); // "The capital of France is"
    for (const id of [1, 2, 3]) await engine.addSequence(id, GREEDY);
    logits.push((await engine.prefill(1, prompt.subarray(0, 3), false, true)).logits!);
    logits.push((await attempt('prefill', () => engine.prefill(1, prompt.subarray(3), true, true))).logits!);
    const batch = await attempt('prefillBatch', () => engine.prefillBatch([
      { id: 2, tokens: prompt.subarray(0, 4) },
      { id: 3, tokens: prompt.subarray(1) },
    ], true));
    logits.push(...batch.map((r) => r.logits!));
    for (let step = 0; step < 4; step++) {
      logits.push((await attempt(step === 1 ? 'decode' : 'none', () => engine.decode({ wantLogits: true }))).logits!);
    }
    for (const id of [1, 2, 3]) await engine.remove(id);
    await engine.addSequence(4, GREEDY);
    logits.push((await engine.prefill(4, prompt, true, true)).logits!);
    await engine.remove(4);
    return logits;
  }

  test('a step whose evaluation fails leaves rows and cache in step: retried, it gives the same logits, and the engine serves on', async () => {
    await load(DEFAULT_MODEL);
    const reference = await trace();
    for (const failAt of ['prefill', 'prefillBatch', 'decode'] as const) {
      const got = await trace(failAt);
      assert.equal(got.length, reference.length);
      for (let i = 0; i < got.length; i++) {
        const diff = maxAbsDiff(got[i], reference[i]);
        assert.ok(diff < 1e-4, `failed ${failAt}, then retried: logits ${i} differ by ${diff}`);
      }
    }
    const stats = await engine.stats();
    assert.equal(stats.decodingRows + stats.prefillingRows, 0);
    assert.equal(stats.kvBytes, 0);
  });
});
