// bench:ab's logits comparison on the real engine and the default model: a
// build agrees with itself bit for bit, also with rows grouped over a shared
// file, and a numerically different path (float32 decode steps against the
// integer-dot ones on 4-bit weights) is caught.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { buildWorkloads, compareDecodeLogits } from '../bench/workloads.js';
import { loadModelSpec } from '../src/engine/model-config.js';
import type { ModelSpec } from '../src/engine/model-spec.js';
import { addonPath, createNativeEngine, type LoadOptions, type NativeEngine } from '../src/engine/native.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { DEFAULT_MODEL } from './support/fixtures.js';

describe('bench:ab logits comparison', { timeout: 10 * 60_000 }, () => {
  let tokenizer: Tokenizer;
  let spec: ModelSpec;
  const open: NativeEngine[] = [];
  const OPTIONS: LoadOptions = { weights: 'float32', device: 'cpu', prefixGrouping: true };

  async function engines(a: LoadOptions, b: LoadOptions): Promise<[NativeEngine, NativeEngine]> {
    // The second through the addon's path, as bench:ab loads a build it is given.
    const pair: [NativeEngine, NativeEngine] = [createNativeEngine(), createNativeEngine(addonPath())];
    open.push(...pair);
    await pair[0].load(spec, a);
    await pair[1].load(spec, b);
    return pair;
  }

  before(async () => {
    tokenizer = await Tokenizer.fromModel(DEFAULT_MODEL);
    spec = await loadModelSpec(DEFAULT_MODEL);
  });
  after(async () => {
    for (const e of open) await e.close();
  });

  test('one build against itself: every logit of every row and step the same', async () => {
    const [a, b] = await engines(OPTIONS, OPTIONS);
    for (const [w] of [buildWorkloads(tokenizer, ['short-16'], 300), buildWorkloads(tokenizer, ['same-file'], 400)]) {
      const r = await compareDecodeLogits(a, b, w, 3);
      assert.equal(r.steps, 3, w.name);
      assert.equal(r.compared, 3 * w.rows.length * spec.vocabSize, w.name);
      assert.equal(r.differing, 0, w.name);
      assert.equal(r.max_abs_diff, 0, w.name);
      assert.equal(r.tokens_differ_at, undefined, w.name);
    }
    // Rows and prefixes were released: a second comparison starts from nothing held.
    assert.equal((await a.stats()).decodingRows, 0);
    assert.equal((await b.stats()).decodingRows, 0);
  });

  test('float32 decode against the integer-dot path: differences are found and stay small', async () => {
    const [a, b] = await engines(OPTIONS, { ...OPTIONS, quantizedDecode: false });
    const [w] = buildWorkloads(tokenizer, ['short-16'], 300);
    const r = await compareDecodeLogits(a, b, w, 3);
    assert.ok(r.steps >= 1);
    assert.ok(r.differing > 0, 'the two paths round differently');
    assert.ok(r.max_abs_diff > 0 && r.max_abs_diff < 1e-2, `max difference ${r.max_abs_diff}`);
  });
});
