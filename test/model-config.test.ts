// loadModelSpec on the default GGUF, on small hand-written model folders, and on broken inputs.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { llama3Factors, loadModelSpec } from '../src/engine/model-config.js';

const ROOT = path.resolve(__dirname, '..');
const MODEL = path.join(ROOT, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
const noModel = fs.existsSync(MODEL) ? false : `needs ${MODEL} (npm run setup)`;

let tmp: string;
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-spec-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A safetensors file holding empty tensors with these names (enough for header reads). */
function writeSafetensors(file: string, names: string[]) {
  const header: Record<string, unknown> = { __metadata__: { format: 'mlx' } };
  for (const n of names) header[n] = { dtype: 'F16', shape: [0], data_offsets: [0, 0] };
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json]));
}

let folderCount = 0;
function folder(config: unknown, tensors: string[] | null = ['model.embed_tokens.weight']): string {
  const dir = path.join(tmp, `m${folderCount++}`);
  fs.mkdirSync(dir);
  if (config !== undefined) {
    fs.writeFileSync(path.join(dir, 'config.json'), typeof config === 'string' ? config : JSON.stringify(config));
  }
  if (tensors) writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  return dir;
}

const LLAMA = {
  model_type: 'llama',
  hidden_size: 256,
  num_hidden_layers: 4,
  intermediate_size: 512,
  num_attention_heads: 8,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-5,
  vocab_size: 1000,
};

describe('loadModelSpec', () => {
  it('reads the default GGUF model', { skip: noModel }, async () => {
    const spec = await loadModelSpec(MODEL);
    assert.equal(spec.format, 'gguf');
    assert.deepEqual(spec.weightFiles, [MODEL]);
    assert.equal(spec.architecture, 'llama');
    assert.equal(spec.sourceArchitecture, 'llama');
    assert.equal(spec.numLayers, 30);
    assert.equal(spec.hiddenSize, 576);
    assert.equal(spec.intermediateSize, 1536);
    assert.equal(spec.numHeads, 9);
    assert.equal(spec.numKvHeads, 3);
    assert.equal(spec.headDim, 64);
    assert.equal(spec.vocabSize, 49152);
    assert.equal(spec.contextLength, 8192);
    assert.equal(spec.ropeTheta, 100000);
    assert.ok(Math.abs(spec.rmsNormEps - 1e-5) < 1e-9);
    assert.equal(spec.tieWordEmbeddings, true);
    assert.equal(spec.ropeTraditional, true);
    assert.equal(spec.normWeightOffset, 0);
    assert.equal(spec.hiddenAct, 'silu');
    assert.equal(spec.attentionBias, false);
    assert.equal(spec.ropeScaling, undefined);
  });

  it('rejects a truncated GGUF, naming the file', { skip: noModel }, async () => {
    const file = path.join(tmp, 'truncated.gguf');
    const fd = fs.openSync(MODEL, 'r');
    const head = Buffer.alloc(100);
    fs.readSync(fd, head, 0, 100, 0);
    fs.closeSync(fd);
    fs.writeFileSync(file, head);
    await assert.rejects(loadModelSpec(file), (e: Error) => {
      assert.equal(e.message, `[gguf] ${file}: truncated header (file is 100 bytes)`);
      return true;
    });
  });

  it('rejects a GGUF whose tensor data is cut off', { skip: noModel }, async () => {
    const file = path.join(tmp, 'cut.gguf');
    const size = 3_000_000;
    const fd = fs.openSync(MODEL, 'r');
    const head = Buffer.alloc(size);
    fs.readSync(fd, head, 0, size, 0);
    fs.closeSync(fd);
    fs.writeFileSync(file, head);
    await assert.rejects(loadModelSpec(file), /\[gguf\] .*cut\.gguf: truncated tensor data \(file is 3000000 bytes/);
  });

  it('rejects a file that is not a GGUF, naming the file', async () => {
    const file = path.join(tmp, 'notes.gguf');
    fs.writeFileSync(file, 'just some text\n');
    await assert.rejects(loadModelSpec(file), (e: Error) => {
      assert.equal(e.message, `[gguf] ${file}: not a GGUF file (bad magic 'just', expected 'GGUF')`);
      return true;
    });
  });

  it('rejects a missing path', async () => {
    const file = path.join(tmp, 'nope.gguf');
    await assert.rejects(loadModelSpec(file), new RegExp(`\\[model\\] ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: not found`));
  });

  it('rejects an unsupported architecture, naming the folder', async () => {
    const dir = folder({ model_type: 'mamba', hidden_size: 8 });
    await assert.rejects(loadModelSpec(dir), (e: Error) => {
      assert.equal(
        e.message,
        `[model] ${dir}: unsupported architecture 'mamba' (supported: llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3)`,
      );
      return true;
    });
  });

  it('explains a folder without config.json, with bad JSON, or without weights', async () => {
    await assert.rejects(loadModelSpec(folder(undefined)), /no config\.json/);
    const bad = folder('{"model_type": "llama",');
    await assert.rejects(loadModelSpec(bad), (e: Error) => e.message.startsWith(`[model] ${path.join(bad, 'config.json')}: invalid JSON`));
    await assert.rejects(loadModelSpec(folder(LLAMA, null)), /no \*\.safetensors weight files/);
    await assert.rejects(loadModelSpec(folder({ ...LLAMA, hidden_size: undefined })), /missing 'hidden_size'/);
  });

  it('maps a llama folder with mlx-lm defaults', async () => {
    const dir = folder(LLAMA, ['model.embed_tokens.weight', 'lm_head.weight']);
    const spec = await loadModelSpec(dir);
    assert.equal(spec.format, 'safetensors');
    assert.deepEqual(spec.weightFiles, [path.join(dir, 'model.safetensors')]);
    assert.equal(spec.headDim, 32);
    assert.equal(spec.ropeTheta, 10000);
    assert.equal(spec.ropeTraditional, false);
    // No tie_word_embeddings key: decided by the lm_head in the weights.
    assert.equal(spec.tieWordEmbeddings, false);
    assert.equal(spec.quantization, undefined);
  });

  it('refuses quantization the affine kernels do not take, naming the value and the file', async () => {
    for (const [quantization, what] of [[{ group_size: 0, bits: 4 }, /group_size 0 is not supported \(32, 64 or 128\)/],
      [{ group_size: 1e10, bits: 4 }, /group_size 10000000000 is not supported/], [{ group_size: 64, bits: 7 }, /bits 7 is not supported/]] as const) {
      const dir = folder({ ...LLAMA, quantization }, ['model.embed_tokens.weight']);
      await assert.rejects(loadModelSpec(dir), (e: Error) => e.message.startsWith(`[model] ${path.join(dir, 'config.json')}: `) && what.test(e.message));
    }
  });

  it('maps mistral to llama, with quantization, llama3 rope scaling and shards', async () => {
    const dir = folder(
      {
        ...LLAMA,
        model_type: 'mistral',
        head_dim: 64,
        tie_word_embeddings: true,
        rope_theta: 500000,
        max_position_embeddings: 131072,
        rope_scaling: { rope_type: 'llama3', factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 },
        quantization: { group_size: 64, bits: 4 },
      },
      null,
    );
    writeSafetensors(path.join(dir, 'model-00001-of-00002.safetensors'), ['model.embed_tokens.weight']);
    writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), ['model.norm.weight']);
    fs.writeFileSync(
      path.join(dir, 'model.safetensors.index.json'),
      JSON.stringify({
        weight_map: {
          'model.embed_tokens.weight': 'model-00001-of-00002.safetensors',
          'model.norm.weight': 'model-00002-of-00002.safetensors',
        },
      }),
    );
    const spec = await loadModelSpec(dir);
    assert.equal(spec.architecture, 'llama');
    assert.equal(spec.sourceArchitecture, 'mistral');
    assert.equal(spec.headDim, 64);
    assert.equal(spec.contextLength, 131072);
    assert.deepEqual(spec.quantization, { groupSize: 64, bits: 4 });
    assert.deepEqual(spec.ropeScaling, {
      type: 'llama3',
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    });
    assert.deepEqual(
      spec.weightFiles.map((f) => path.basename(f)),
      ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'],
    );
  });

  it('maps qwen2 (biases, head dim from hidden size) and rejects unsupported rope scaling', async () => {
    const qwen = { ...LLAMA, model_type: 'qwen2', head_dim: 999, tie_word_embeddings: true };
    const spec = await loadModelSpec(folder(qwen));
    assert.equal(spec.architecture, 'qwen2');
    assert.equal(spec.attentionBias, true);
    assert.equal(spec.headDim, 32);
    assert.equal(spec.ropeTheta, 1000000);
    assert.equal(spec.contextLength, 32768);
    await assert.rejects(
      loadModelSpec(folder({ ...qwen, rope_scaling: { type: 'yarn', factor: 4 } })),
      /rope scaling 'yarn' is not supported/,
    );
  });

  it('reads rope_parameters (transformers 5) for qwen3', async () => {
    const spec = await loadModelSpec(
      folder({
        ...LLAMA,
        model_type: 'qwen3',
        head_dim: 128,
        tie_word_embeddings: true,
        max_position_embeddings: 40960,
        rope_parameters: { rope_type: 'default', rope_theta: 1000000 },
      }),
    );
    assert.equal(spec.architecture, 'qwen3');
    assert.equal(spec.headDim, 128);
    assert.equal(spec.ropeTheta, 1000000);
    assert.equal(spec.ropeScaling, undefined);
    assert.equal(spec.attentionBias, false);
  });

  it('maps gemma2 and nested gemma3 configs', async () => {
    const g2 = await loadModelSpec(
      folder({ ...LLAMA, model_type: 'gemma2', head_dim: 256, query_pre_attn_scalar: 256, sliding_window: 4096 }),
    );
    assert.equal(g2.normWeightOffset, 1);
    assert.equal(g2.scaleEmbeddings, true);
    assert.equal(g2.hiddenAct, 'gelu_tanh');
    assert.equal(g2.tieWordEmbeddings, true);
    assert.equal(g2.attnLogitSoftcapping, 50);
    assert.equal(g2.finalLogitSoftcapping, 30);
    assert.deepEqual(g2.layerTypes, ['sliding', 'full', 'sliding', 'full']);

    const g3 = await loadModelSpec(
      folder(
        {
          model_type: 'gemma3',
          vocab_size: 262208,
          text_config: {
            model_type: 'gemma3_text',
            hidden_size: 2560,
            num_hidden_layers: 7,
            intermediate_size: 10240,
            head_dim: 256,
            rope_scaling: { rope_type: 'linear', factor: 8.0 },
            sliding_window: 1024,
          },
        },
        ['language_model.model.embed_tokens.weight'],
      ),
    );
    assert.equal(g3.architecture, 'gemma3');
    assert.equal(g3.vocabSize, 262208);
    assert.equal(g3.numHeads, 8);
    assert.equal(g3.numKvHeads, 4);
    assert.equal(g3.queryPreAttnScalar, 256);
    assert.equal(g3.ropeTheta, 1000000);
    assert.equal(g3.ropeLocalTheta, 10000);
    assert.deepEqual(g3.ropeScaling, { type: 'linear', factor: 8 });
    assert.equal(g3.slidingWindow, 1024);
    assert.deepEqual(g3.layerTypes, ['sliding', 'sliding', 'sliding', 'sliding', 'sliding', 'full', 'sliding']);
    assert.equal(g3.tieWordEmbeddings, true);
  });

  it('maps phi3 longrope', async () => {
    const spec = await loadModelSpec(
      folder({
        ...LLAMA,
        model_type: 'phi3',
        max_position_embeddings: 131072,
        original_max_position_embeddings: 4096,
        tie_word_embeddings: true,
        rope_scaling: { type: 'longrope', short_factor: [1, 1], long_factor: [2, 3] },
      }),
    );
    assert.deepEqual(spec.ropeScaling, {
      type: 'longrope',
      factor: 32,
      originalMaxPositionEmbeddings: 4096,
      shortFactor: [1, 1],
      longFactor: [2, 3],
    });
    await assert.rejects(
      loadModelSpec(folder({ ...LLAMA, model_type: 'phi3', partial_rotary_factor: 0.75 })),
      /partial_rotary_factor 0.75 is not supported/,
    );
  });

  it('llama3 factor table matches the converter formula at its ends', () => {
    const f = llama3Factors({ type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 }, 500000, 128);
    assert.equal(f.length, 64);
    assert.equal(f[0], 1);
    assert.equal(f[63], 8);
  });
});
