// loadModelSpec(): the normalized ModelSpec of a GGUF file or of a Hugging Face /
// MLX model folder (config.json + *.safetensors). Defaults follow mlx-lm's
// ModelArgs for each architecture, so a folder loads as mlx-lm would load it.
import fs from 'node:fs';
import path from 'node:path';
import type { Architecture, ModelSpec, RopeScaling } from './model-spec.js';
import {
  ggufArray,
  ggufNumber,
  ggufString,
  readGgufF32Tensor,
  checkTensorTypes,
  readGgufFile,
  type GgufFile,
} from './gguf-metadata.js';

const SUPPORTED = 'llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3';

// Names as config.json (model_type) or GGUF (general.architecture) spell them.
const ARCHITECTURES: Record<string, Architecture> = {
  llama: 'llama',
  mistral: 'llama',
  qwen2: 'qwen2',
  qwen3: 'qwen3',
  gemma2: 'gemma2',
  gemma3: 'gemma3',
  gemma3_text: 'gemma3',
  phi3: 'phi3',
};

function modelError(where: string, what: string): Error {
  return new Error(`[model] ${where}: ${what}`);
}

function architectureOf(where: string, name: unknown): Architecture {
  const arch = typeof name === 'string' ? ARCHITECTURES[name] : undefined;
  if (!arch) throw modelError(where, `unsupported architecture '${String(name)}' (supported: ${SUPPORTED})`);
  return arch;
}

/** Reads the spec of a model: a `.gguf` file or a model folder. */
export async function loadModelSpec(modelPath: string): Promise<ModelSpec> {
  let stat: fs.Stats;
  try {
    stat = await fs.promises.stat(modelPath);
  } catch {
    throw modelError(modelPath, 'not found (give a .gguf file or a model folder)');
  }
  if (stat.isDirectory()) return specFromFolder(modelPath);
  return specFromGguf(modelPath, await readGgufFile(modelPath));
}

// ---------------------------------------------------------------- GGUF

/** Attention scale of Gemma 2/3 GGUFs, as llama.cpp derives it: the 27B models scale by hidden/heads. */
function gemmaQueryPreAttnScalar(arch: Architecture, layers: number, hidden: number, heads: number, headDim: number) {
  const is27b = (arch === 'gemma2' && layers === 46) || (arch === 'gemma3' && layers === 62);
  return is27b ? hidden / heads : headDim;
}

async function specFromGguf(userPath: string, file: GgufFile): Promise<ModelSpec> {
  const where = file.path;
  const source = ggufString(file, 'general.architecture')!;
  const architecture = architectureOf(where, source);
  checkTensorTypes(file);
  const key = (k: string) => `${source}.${k}`;
  const num = (k: string) => scalar(file, key(k), where);
  const required = (k: string) => {
    const v = num(k);
    if (v === undefined) throw modelError(where, `missing GGUF key '${key(k)}'`);
    return v;
  };

  const numLayers = required('block_count');
  const hiddenSize = required('embedding_length');
  const intermediateSize = required('feed_forward_length');
  const numHeads = required('attention.head_count');
  const numKvHeads = num('attention.head_count_kv') ?? numHeads;
  const headDim = num('attention.key_length') ?? hiddenSize / numHeads;
  const valueDim = num('attention.value_length') ?? headDim;
  if (valueDim !== headDim) throw modelError(where, `key length ${headDim} != value length ${valueDim} is not supported`);
  const ropeDims = num('rope.dimension_count') ?? headDim;
  if (ropeDims !== headDim) {
    throw modelError(where, `partial rotary embeddings (${ropeDims} of ${headDim} dims) are not supported`);
  }
  const tokens = ggufArray(file, 'tokenizer.ggml.tokens');
  const embd = file.tensors.find((t) => t.name === 'token_embd.weight');
  const vocabSize = tokens?.length ?? num('vocab_size') ?? embd?.shape[1];
  if (!vocabSize) throw modelError(where, 'cannot tell the vocabulary size (no tokenizer.ggml.tokens)');
  const contextLength = num('context_length') ?? 2048;
  const ropeTheta = num('rope.freq_base') ?? (architecture === 'gemma3' ? 1_000_000 : 10_000);
  const names = new Set(file.tensors.map((t) => t.name));
  const gemma = architecture === 'gemma2' || architecture === 'gemma3';

  const spec: ModelSpec = {
    path: userPath,
    format: 'gguf',
    weightFiles: [file.path],
    gguf: { dataOffset: file.tensorDataOffset, tensors: file.tensors },
    architecture,
    sourceArchitecture: source,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    rmsNormEps: num('attention.layer_norm_rms_epsilon') ?? (gemma ? 1e-6 : 1e-5),
    ropeTheta,
    // llama.cpp's converter permutes llama-family q/k weights for interleaved rope.
    ropeTraditional: architecture === 'llama',
    contextLength,
    tieWordEmbeddings: !names.has('output.weight'),
    // The converter already stored Gemma's RMSNorm weights as w + 1.
    normWeightOffset: 0,
    hiddenAct: gemma ? 'gelu_tanh' : 'silu',
    scaleEmbeddings: gemma,
    attentionBias: names.has('blk.0.attn_q.bias'),
  };

  const scalingType = ggufString(file, key('rope.scaling.type'));
  if (scalingType === 'linear') {
    spec.ropeScaling = { type: 'linear', factor: required('rope.scaling.factor') };
  } else if (scalingType && scalingType !== 'none') {
    throw modelError(where, `rope scaling '${scalingType}' is not supported (supported: linear, llama3, longrope)`);
  }

  if (architecture === 'llama') {
    // Llama 3.1+ GGUFs carry the llama3 scaling as a table of per-frequency factors.
    const factors = await readGgufF32Tensor(file, 'rope_freqs.weight');
    if (factors) spec.ropeScaling = llama3FromFactors(where, factors, ropeTheta, headDim);
  } else if (architecture === 'phi3') {
    const longFactor = await readGgufF32Tensor(file, 'rope_factors_long.weight');
    const shortFactor = await readGgufF32Tensor(file, 'rope_factors_short.weight');
    if (longFactor) {
      const original = num('rope.scaling.original_context_length') ?? 4096;
      spec.ropeScaling = {
        type: 'longrope',
        factor: contextLength / original,
        originalMaxPositionEmbeddings: original,
        longFactor: [...longFactor],
        shortFactor: shortFactor ? [...shortFactor] : [...longFactor],
      };
    }
    const window = num('attention.sliding_window');
    if (window && window < contextLength) {
      spec.slidingWindow = window;
      spec.layerTypes = new Array(numLayers).fill('sliding');
    }
  } else if (gemma) {
    spec.queryPreAttnScalar = gemmaQueryPreAttnScalar(architecture, numLayers, hiddenSize, numHeads, headDim);
    const window = num('attention.sliding_window');
    if (architecture === 'gemma2') {
      spec.attnLogitSoftcapping = num('attn_logit_softcapping') ?? 50;
      spec.finalLogitSoftcapping = num('final_logit_softcapping') ?? 30;
      spec.slidingWindow = window ?? 4096;
      // Even layers slide (llama.cpp's swa pattern 2, transformers' Gemma2).
      spec.layerTypes = Array.from({ length: numLayers }, (_, i) => (i % 2 === 0 ? 'sliding' : 'full'));
    } else {
      spec.slidingWindow = window ?? 512;
      spec.layerTypes = gemma3LayerTypes(file, key('attention.sliding_window_pattern'), numLayers);
      // llama.cpp hard-codes the local rope base of Gemma 3's sliding layers.
      spec.ropeLocalTheta = 10_000;
      const soft = num('final_logit_softcapping');
      if (soft) spec.finalLogitSoftcapping = soft;
    }
  }
  return spec;
}

function scalar(file: GgufFile, k: string, where: string): number | undefined {
  const v = file.metadata[k];
  if (Array.isArray(v)) {
    // Some converters write per-layer arrays; a uniform one is still one number.
    const nums = v.map(Number);
    if (nums.length > 0 && nums.every((x) => x === nums[0])) return nums[0];
    throw modelError(where, `per-layer values of '${k}' are not supported`);
  }
  return ggufNumber(file, k);
}

/** Gemma 3: every 6th layer is global unless the file says otherwise. */
function gemma3LayerTypes(file: GgufFile, k: string, numLayers: number): Array<'full' | 'sliding'> {
  const pattern = file.metadata[k];
  if (Array.isArray(pattern) && pattern.length === numLayers) {
    return pattern.map((slides) => (slides ? 'sliding' : 'full'));
  }
  const n = typeof pattern === 'number' || typeof pattern === 'bigint' ? Number(pattern) : 6;
  return Array.from({ length: numLayers }, (_, i) => (n > 1 && i % n < n - 1 ? 'sliding' : 'full'));
}

/** Llama 3 rope scaling from the factor table llama.cpp stores, checked against the standard parameters. */
function llama3FromFactors(where: string, factors: Float32Array, base: number, headDim: number): RopeScaling {
  const factor = Math.max(...factors);
  const candidate: RopeScaling = {
    type: 'llama3',
    factor,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  };
  const expected = llama3Factors(candidate, base, headDim);
  const ok =
    expected.length === factors.length && expected.every((e, i) => Math.abs(e - factors[i]) <= 1e-4 * Math.max(1, e));
  if (!ok) throw modelError(where, "rope_freqs.weight does not match llama3 scaling with the standard parameters; not supported");
  return candidate;
}

/** The per-frequency divisors llama3 scaling applies (the table llama.cpp's converter writes). */
export function llama3Factors(s: RopeScaling, base: number, headDim: number): number[] {
  const low = s.lowFreqFactor ?? 1;
  const high = s.highFreqFactor ?? 4;
  const old = s.originalMaxPositionEmbeddings ?? 8192;
  const out: number[] = [];
  for (let i = 0; i < headDim; i += 2) {
    const wavelen = 2 * Math.PI * base ** (i / headDim);
    if (wavelen < old / high) out.push(1);
    else if (wavelen > old / low) out.push(s.factor);
    else {
      const smooth = (old / wavelen - low) / (high - low);
      out.push(1 / ((1 - smooth) / s.factor + smooth));
    }
  }
  return out;
}

// ---------------------------------------------------------------- folders

type Json = Record<string, unknown>;

function readJson(file: string): Json {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw modelError(file, code === 'ENOENT' ? 'file not found' : `cannot read (${code ?? String(e)})`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw modelError(file, `invalid JSON (${(e as Error).message})`);
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw modelError(file, 'expected a JSON object');
  return value as Json;
}

/** The weight files of a folder and the tensor names they hold. */
function folderWeights(dir: string): { files: string[]; tensorNames: Set<string> } {
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  if (fs.existsSync(indexFile)) {
    const map = readJson(indexFile).weight_map;
    if (!map || typeof map !== 'object') throw modelError(indexFile, "no 'weight_map'");
    const files = [...new Set(Object.values(map as Record<string, string>))].sort().map((f) => path.join(dir, f));
    const missing = files.filter((f) => !fs.existsSync(f));
    if (missing.length) throw modelError(dir, `weight shards listed in model.safetensors.index.json are missing: ${missing.map((f) => path.basename(f)).join(', ')}`);
    return { files, tensorNames: new Set(Object.keys(map)) };
  }
  const all = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
  // mlx-lm loads model*.safetensors; other names (consolidated.*) are duplicates in another layout.
  const preferred = all.filter((f) => f.startsWith('model'));
  const chosen = preferred.length ? preferred : all;
  if (!chosen.length) throw modelError(dir, 'no *.safetensors weight files');
  const files = chosen.map((f) => path.join(dir, f));
  const tensorNames = new Set<string>();
  for (const f of files) for (const name of safetensorsTensorNames(f)) tensorNames.add(name);
  return { files, tensorNames };
}

/** Tensor names in a safetensors header (u64 little-endian length, then JSON). */
function safetensorsTensorNames(file: string): string[] {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const lenBuf = Buffer.alloc(8);
    if (size < 8 || fs.readSync(fd, lenBuf, 0, 8, 0) !== 8) throw modelError(file, `not a safetensors file (${size} bytes)`);
    const len = Number(lenBuf.readBigUInt64LE(0));
    if (len <= 0 || len > 100_000_000 || 8 + len > size) {
      throw modelError(file, `not a safetensors file or truncated (header length ${len}, file is ${size} bytes)`);
    }
    const header = Buffer.alloc(len);
    fs.readSync(fd, header, 0, len, 8);
    let json: Json;
    try {
      json = JSON.parse(header.toString('utf8')) as Json;
    } catch {
      throw modelError(file, 'not a safetensors file (header is not JSON)');
    }
    return Object.keys(json).filter((k) => k !== '__metadata__');
  } finally {
    fs.closeSync(fd);
  }
}

function specFromFolder(dir: string): ModelSpec {
  const configFile = path.join(dir, 'config.json');
  if (!fs.existsSync(configFile)) {
    throw modelError(dir, 'no config.json (a model folder holds config.json and *.safetensors weights)');
  }
  const top = readJson(configFile);
  const source = String(top.model_type ?? '');
  const architecture = architectureOf(dir, top.model_type ?? '(no model_type)');
  // Gemma 3 multimodal checkpoints nest the language model's config under text_config.
  let c: Json = top;
  if (source === 'gemma3') {
    const text = (top.text_config ?? {}) as Json;
    c = {
      ...text,
      vocab_size: top.vocab_size ?? 262208,
      num_attention_heads: text.num_attention_heads ?? 8,
      num_key_value_heads: text.num_key_value_heads ?? 4,
    };
  }
  const { files, tensorNames } = folderWeights(dir);

  const where = configFile;
  const int = (k: string, fallback?: number): number => {
    const v = c[k] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw modelError(where, v === undefined ? `missing '${k}'` : `'${k}' must be a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const opt = (k: string): number | undefined => (typeof c[k] === 'number' ? (c[k] as number) : undefined);

  // mlx-lm's ModelArgs defaults per architecture (gemma3_text gives defaults for everything).
  const g3 = architecture === 'gemma3';
  const hiddenSize = int('hidden_size', g3 ? 1152 : undefined);
  const numHeads = int('num_attention_heads', g3 ? 4 : undefined);
  const numLayers = int('num_hidden_layers', g3 ? 26 : undefined);
  const intermediateSize = int('intermediate_size', g3 ? 6912 : undefined);
  const vocabSize = int('vocab_size', g3 ? 262144 : undefined);
  const numKvHeads = opt('num_key_value_heads') ?? (g3 ? 1 : numHeads);
  let headDim: number;
  switch (architecture) {
    case 'qwen2':
    case 'phi3':
      headDim = hiddenSize / numHeads; // mlx-lm ignores head_dim here
      break;
    case 'gemma2':
      headDim = int('head_dim', 256);
      break;
    case 'gemma3':
      headDim = int('head_dim', 256);
      break;
    default:
      headDim = opt('head_dim') ?? hiddenSize / numHeads;
  }
  if (!Number.isInteger(headDim)) throw modelError(where, `head dim ${hiddenSize}/${numHeads} is not an integer`);

  // transformers >= 5 may nest rope_theta and the scaling under rope_parameters.
  const ropeParams = (c.rope_parameters ?? undefined) as Json | undefined;
  const fullRope = (g3 && ropeParams?.full_attention ? ropeParams.full_attention : ropeParams) as Json | undefined;
  const defaultTheta: Record<Architecture, number | undefined> = {
    llama: 10_000,
    qwen2: 1_000_000,
    qwen3: undefined,
    gemma2: 10_000,
    gemma3: 1_000_000,
    phi3: 10_000,
  };
  const ropeTheta = opt('rope_theta') ?? (fullRope?.rope_theta as number | undefined) ?? defaultTheta[architecture];
  if (ropeTheta === undefined) throw modelError(where, "missing 'rope_theta'");

  const defaultContext: Record<Architecture, number> = {
    llama: 2048,
    qwen2: 32768,
    qwen3: 32768,
    gemma2: 8192,
    gemma3: 32768,
    phi3: 131072,
  };
  const contextLength = opt('max_position_embeddings') ?? defaultContext[architecture];

  const hasLmHead = [...tensorNames].some((n) => n === 'lm_head.weight' || n.endsWith('.lm_head.weight'));
  let tie: boolean;
  if (architecture === 'gemma2') tie = true; // no lm_head in Gemma 2
  else if (architecture === 'gemma3') tie = !hasLmHead; // mlx-lm decides from the weights
  // Without the key, mlx-lm's per-architecture default would drop or demand an
  // lm_head; the weights themselves say which one is right.
  else tie = typeof c.tie_word_embeddings === 'boolean' ? c.tie_word_embeddings : !hasLmHead;
  if (!tie && !hasLmHead) {
    throw modelError(dir, 'config.json says tie_word_embeddings=false but the weights have no lm_head.weight');
  }

  const gemma = architecture === 'gemma2' || g3;
  const spec: ModelSpec = {
    path: dir,
    format: 'safetensors',
    weightFiles: files.map((f) => path.resolve(f)),
    architecture,
    sourceArchitecture: source,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    rmsNormEps: opt('rms_norm_eps') ?? (architecture === 'phi3' ? 1e-5 : 1e-6),
    ropeTheta,
    ropeTraditional: c.rope_traditional === true,
    contextLength,
    tieWordEmbeddings: tie,
    // Hugging Face Gemma checkpoints store w and RMSNorm multiplies by (1 + w).
    normWeightOffset: gemma ? 1 : 0,
    hiddenAct: gemma ? 'gelu_tanh' : 'silu',
    scaleEmbeddings: gemma,
    attentionBias: architecture === 'qwen2' || (architecture === 'llama' && c.attention_bias === true),
  };

  const rawScaling = (c.rope_scaling ?? fullRope) as Json | undefined | null;
  const scaling = ropeScalingFrom(where, architecture, rawScaling ?? undefined, c);
  if (scaling) spec.ropeScaling = scaling;

  // Sliding windows: mlx-lm attends fully in Phi-3 and Gemma 2; transformers and
  // llama.cpp use the window the model was trained with, and so do we. The two
  // agree on any prompt shorter than the window.
  if (architecture === 'phi3') {
    const partial = opt('partial_rotary_factor') ?? 1;
    if (partial !== 1) throw modelError(where, `partial_rotary_factor ${partial} is not supported`);
    const window = opt('sliding_window');
    if (window && window < contextLength) {
      spec.slidingWindow = window;
      spec.layerTypes = new Array(numLayers).fill('sliding');
    }
  } else if (architecture === 'llama') {
    const types = layerTypesFrom(where, c.layer_types, numLayers);
    if (types?.includes('sliding')) {
      spec.layerTypes = types;
      spec.slidingWindow = int('sliding_window');
    }
  } else if (architecture === 'gemma2') {
    spec.queryPreAttnScalar = opt('query_pre_attn_scalar') ?? 144;
    spec.attnLogitSoftcapping = opt('attn_logit_softcapping') ?? 50;
    spec.finalLogitSoftcapping = opt('final_logit_softcapping') ?? 30;
    spec.slidingWindow = opt('sliding_window') ?? 4096;
    spec.layerTypes = Array.from({ length: numLayers }, (_, i) => (i % 2 === 0 ? 'sliding' : 'full'));
  } else if (g3) {
    spec.queryPreAttnScalar = opt('query_pre_attn_scalar') ?? 256;
    spec.slidingWindow = opt('sliding_window') ?? 512;
    const pattern = opt('sliding_window_pattern') ?? 6;
    spec.layerTypes =
      layerTypesFrom(where, c.layer_types, numLayers) ??
      Array.from({ length: numLayers }, (_, i) => ((i + 1) % pattern !== 0 ? 'sliding' : 'full'));
    const local = ropeParams?.sliding_attention as Json | undefined;
    spec.ropeLocalTheta = opt('rope_local_base_freq') ?? (local?.rope_theta as number | undefined) ?? 10_000;
    const attnCap = opt('attn_logit_softcapping');
    if (attnCap) spec.attnLogitSoftcapping = attnCap;
    const finalCap = opt('final_logit_softcapping');
    if (finalCap) spec.finalLogitSoftcapping = finalCap;
  }

  const quant = quantizationFrom(where, top);
  if (quant) spec.quantization = quant;
  return spec;
}

function layerTypesFrom(where: string, raw: unknown, numLayers: number): Array<'full' | 'sliding'> | undefined {
  if (!Array.isArray(raw)) return undefined;
  if (raw.length !== numLayers) throw modelError(where, `layer_types has ${raw.length} entries for ${numLayers} layers`);
  return raw.map((t) => {
    if (t === 'sliding_attention') return 'sliding';
    if (t === 'full_attention') return 'full';
    throw modelError(where, `unsupported layer type '${String(t)}'`);
  });
}

/** Maps config.json's rope_scaling (either `rope_type` or the older `type` key) onto RopeScaling. */
function ropeScalingFrom(where: string, arch: Architecture, raw: Json | undefined, c: Json): RopeScaling | undefined {
  if (!raw) return undefined;
  const type = String(raw.rope_type ?? raw.type ?? 'default');
  const factor = typeof raw.factor === 'number' ? raw.factor : undefined;
  switch (type) {
    case 'default':
      return undefined;
    case 'linear':
      if (factor === undefined) throw modelError(where, 'linear rope scaling without a factor');
      return { type: 'linear', factor };
    case 'llama3':
      if (factor === undefined) throw modelError(where, 'llama3 rope scaling without a factor');
      return {
        type: 'llama3',
        factor,
        lowFreqFactor: (raw.low_freq_factor as number | undefined) ?? 1,
        highFreqFactor: (raw.high_freq_factor as number | undefined) ?? 4,
        originalMaxPositionEmbeddings: (raw.original_max_position_embeddings as number | undefined) ?? 8192,
      };
    case 'longrope':
    case 'su': {
      if (!Array.isArray(raw.long_factor)) throw modelError(where, `${type} rope scaling without long_factor`);
      // mlx-lm's Phi-3 reads both lengths from the top level of config.json.
      const original = (c.original_max_position_embeddings as number | undefined) ??
        (raw.original_max_position_embeddings as number | undefined) ?? 4096;
      const max = (c.max_position_embeddings as number | undefined) ?? (arch === 'phi3' ? 131072 : original);
      const longFactor = (raw.long_factor as number[]).map(Number);
      const shortFactor = Array.isArray(raw.short_factor) ? (raw.short_factor as number[]).map(Number) : longFactor;
      return { type: 'longrope', factor: max / original, originalMaxPositionEmbeddings: original, shortFactor, longFactor };
    }
    default:
      throw modelError(where, `rope scaling '${type}' is not supported (supported: linear, llama3, longrope)`);
  }
}

function quantizationFrom(where: string, top: Json): ModelSpec['quantization'] {
  // mlx-lm writes its affine quantization under `quantization`; other tools'
  // `quantization_config` (GPTQ, AWQ, bitsandbytes, fp8...) store another layout.
  const q = top.quantization as Json | undefined;
  if (!q || typeof q !== 'object') {
    const other = (top.quantization_config ?? (top.text_config as Json | undefined)?.quantization_config) as Json | undefined;
    if (other && typeof other === 'object') {
      throw modelError(where, `quantization '${String(other.quant_method ?? 'unknown')}' is not supported (MLX affine quantization only)`);
    }
    return undefined;
  }
  if (typeof q.group_size !== 'number' || typeof q.bits !== 'number') {
    throw modelError(where, "'quantization' needs numeric group_size and bits");
  }
  if (q.mode !== undefined && q.mode !== 'affine') {
    throw modelError(where, `quantization mode '${String(q.mode)}' is not supported (affine only)`);
  }
  // MLX's affine kernels take these and no others.
  if (![32, 64, 128].includes(q.group_size)) throw modelError(where, `quantization group_size ${q.group_size} is not supported (32, 64 or 128)`);
  if (![2, 3, 4, 5, 6, 8].includes(q.bits)) throw modelError(where, `quantization bits ${q.bits} is not supported (2, 3, 4, 5, 6 or 8)`);
  return { groupSize: q.group_size, bits: q.bits };
}
