// Typed view of the native addon (native/src). Every method is queued to the
// addon's single engine thread, in call order, so a caller may issue remove()
// then decode() without awaiting in between.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import type { GgufTensor } from './gguf-metadata.js';
import type { ModelSpec } from './model-spec.js';

export type WeightsMode = 'auto' | 'float32' | 'float16' | 'bfloat16' | 'quantized';

export interface LoadOptions {
  /** auto: float32 on CPU (MLX's CPU half/quantized matmuls are scalar loops), keep quantized on GPU. */
  weights: WeightsMode;
  /** 'cpu' | 'gpu' | 'auto' (gpu when MLX has one). */
  device: 'auto' | 'cpu' | 'gpu';
  /**
   * Rows started from a saved prefix read it in place, grouped (default), or
   * copy it into their own cache (false: the path before grouping, for
   * benchmarks and as a reference).
   */
  prefixGrouping?: boolean;
  /**
   * The shortest span of KV kept as a block that rows read in place (default
   * 256, which the scheduler's accounting assumes). Shorter shared prefixes
   * are copied into each row. Tests lower it to exercise grouped attention on
   * short prompts.
   */
  minBlockTokens?: number;
  /**
   * Device-independent attention ops even on the CPU, instead of the CPU's
   * own kernels: what the GPU runs. Tests check the GPU's attention path this way.
   */
  genericAttention?: boolean;
  /**
   * On the CPU, weights stored 4- or 8-bit keep that copy beside the float32
   * one, and decode steps (up to 32 rows) read it (default true). False: every
   * step reads float32, as before; for benchmarks and as a reference.
   */
  quantizedDecode?: boolean;
  /**
   * On the CPU, decode steps whose rows are all greedy (masks allowed) pick
   * from a shortlist of the output projection's columns: an approximation
   * with an error bound, then exact logits for the columns that could win.
   * The picks are the full path's (default true). False: every step computes
   * all the logits, as before; for benchmarks and as a reference.
   */
  greedyShortlist?: boolean;
}

export interface LoadedModel {
  device: 'cpu' | 'gpu';
  /** dtype the weights ended up in, or 'quantized-<bits>bit'. */
  weights: string;
  parameterBytes: number;
  /** GGUF: how many matrices stayed quantized and how many became dense, by type. */
  weightsNote?: string;
  /** KV cache bytes one token of one row takes, all layers. */
  kvBytesPerToken: number;
}

/** Start a row from a saved prefix's first `length` tokens instead of an empty cache. */
export interface PrefixStart {
  handle: number;
  length: number;
  /** Those tokens, so the repetition penalty still sees them. */
  tokens?: Int32Array;
}

export interface SavedPrefix {
  handle: number;
  length: number;
  bytes: number;
}

export interface SamplingParams {
  temperature: number; // 0 = greedy
  topP: number; // 1 = off
  topK: number; // 0 = off
  minP: number; // 0 = off
  repetitionPenalty: number; // 1 = off
  repetitionContextSize: number;
  /** OpenAI's penalties over the tokens generated so far, -2..2 (0 = off); optional for older callers. */
  presencePenalty?: number;
  frequencyPenalty?: number;
  seed: number;
  /** Report each sampled token's log-probability and this many (0..20) alternatives; absent or -1 = off. */
  logprobs?: number;
}

/** A sampled token's log-probability under log_softmax of the raw model logits, and the most likely alternatives. */
export interface TokenLogprobs {
  logprob: number;
  /** Most likely first. */
  topIds: Int32Array;
  topLogprobs: Float32Array;
}

export interface PrefillResult {
  /** Set when the chunk was the last: the row's first sampled token; the row is now decoding. */
  token?: number;
  /** Of `token`, when the row asked for logprobs. */
  logprobs?: TokenLogprobs;
  /** (vocab) logits of the last position, when asked for. */
  logits?: Float32Array;
  /** Set when the chunk was prefilled with `save`: the row's prompt so far, kept as a prefix. */
  saved?: SavedPrefix;
}

export interface DecodeOptions {
  /** Feed these tokens instead of each row's last sampled one (teacher forcing, tests). */
  inputs?: Array<{ id: number; token: number }>;
  wantLogits?: boolean;
  /** Constrained decoding: allowed-token bitmask per row (bit t of word t>>5). */
  masks?: Array<{ id: number; bitmask: Int32Array }>;
}

export interface DecodeResult {
  ids: Int32Array;
  tokens: Int32Array;
  /** In `ids` order when any row asked for logprobs (null for the rows that did not). */
  logprobs?: Array<TokenLogprobs | null>;
  /** (rows, vocab) row-major, in `ids` order. */
  logits?: Float32Array;
  /**
   * Rows that failed alone at this step (no valid token to feed back, which
   * the samplers never give): not in `ids`; they leave the batch on their own
   * (remove() is harmless), the other rows go on. The caller should end them
   * with this error. Absent when none did.
   */
  failed?: Array<{ id: number; error: string }>;
}

export interface EngineStats {
  decodingRows: number;
  prefillingRows: number;
  kvBytes: number;
  activeMemory: number;
  peakMemory: number;
  prefixBytes: number;
  prefixes: number;
}

export interface NativeEngine {
  load(spec: ModelSpec, options: LoadOptions): Promise<LoadedModel>;
  /**
   * A new row with its own cache; it joins the decoding batch after its last prefill chunk.
   * `promptTokens`, the tokens its prefill chunks will bring after the prefix, sizes its cache once.
   */
  addSequence(id: number, sampling: SamplingParams, prefix?: PrefixStart, promptTokens?: number): Promise<void>;
  /**
   * Runs one prompt chunk through row `id`. `last` samples its first token,
   * restricted to `firstTokenMask` when given (constrained decoding). `save`
   * keeps the row's cache so far as a prefix (before a last chunk moves it
   * into the batch) and returns its handle in `saved`.
   */
  prefill(id: number, tokens: Int32Array, last: boolean, wantLogits?: boolean, firstTokenMask?: Int32Array,
    save?: boolean): Promise<PrefillResult>;
  /**
   * The last chunks of several short prompts in one forward pass (left-padded
   * to the longest): each row must have nothing of its own prefilled yet (a
   * fresh row, or one started from a prefix). Results in `items` order.
   */
  prefillBatch(items: Array<{ id: number; tokens: Int32Array; firstTokenMask?: Int32Array }>, wantLogits?: boolean): Promise<PrefillResult[]>;
  /** Keeps what prefilling row `id` has cached so far; later rows may start from it. */
  savePrefix(id: number): Promise<SavedPrefix>;
  dropPrefix(handle: number): Promise<void>;
  /** MLX's memory limit and buffer-cache limit, in bytes (0 leaves the memory limit alone). */
  setMemoryLimits(memoryLimit: number, cacheLimit: number): Promise<void>;
  /** One token for every decoding row, in one batched forward pass. */
  decode(options?: DecodeOptions): Promise<DecodeResult>;
  /** Drops a row (decoding or prefilling) and frees its KV memory. */
  remove(id: number): Promise<void>;
  stats(): Promise<EngineStats>;
  resetPeakMemory(): Promise<void>;
  /**
   * For tests: the next prefill or decode step throws where its evaluation
   * runs (as an allocation failure there would), after its forward pass.
   */
  failNextEval(): Promise<void>;
  /**
   * For tests: one GGUF tensor's float32 values as a load converts them, and
   * for types kept in MLX's affine form, that form dequantized by MLX on the CPU.
   */
  ggufTensorValues(file: string, table: { dataOffset: number; tensors: GgufTensor[] }, name: string):
    Promise<{ values: Float32Array; affine?: Float32Array; bits?: number }>;
  close(): Promise<void>;
}

interface Addon {
  Engine: new () => NativeEngine;
}

/** The checkout (or installed extension) root: the nearest folder above us with our package.json. */
export function projectRoot(from: string = __dirname): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg) && JSON.parse(fs.readFileSync(pkg, 'utf8')).name === 'mlx-batch-assistant') return dir;
    if (path.dirname(dir) === dir) throw new Error(`cannot find the mlx-batch-assistant root above ${from}`);
  }
}

export function addonPath(): string {
  const file = process.env.MLX_BATCH_ADDON ?? path.join(projectRoot(), 'native', 'build', 'Release', 'mlx_batch.node');
  if (!fs.existsSync(file)) throw new Error(`native addon not found at ${file}: run \`npm run setup\``);
  return file;
}

// Loaded addons by file: one for the product; bench:ab loads two builds side by side.
const addons = new Map<string, Addon>();

const SKYLAKEX_FLAGS = ['avx512f', 'avx512cd', 'avx512bw', 'avx512dq', 'avx512vl'];

/**
 * The OpenBLAS kernels to ask for: Debian 12's OpenBLAS (0.3.21) picks kernels
 * by CPU model and gives AMD's AVX-512 CPUs (Zen 4, Zen 5) its AVX2 ones. Its
 * AVX-512 ones prefilled a 3,000-token prompt 1.3x faster on a Zen 5 (3
 * alternating runs). Undefined where the user chose already, or where the CPU
 * lacks an instruction set those kernels use (they would fault).
 */
export function blasCoreType(env: NodeJS.ProcessEnv, cpuinfo: string | undefined): string | undefined {
  if (env.OPENBLAS_CORETYPE || !cpuinfo) return undefined;
  const flags = new Set(/^flags\s*:(.*)$/m.exec(cpuinfo)?.[1].trim().split(/\s+/) ?? []);
  return SKYLAKEX_FLAGS.every((f) => flags.has(f)) ? 'SkylakeX' : undefined;
}

function readCpuinfo(): string | undefined {
  if (process.platform !== 'linux' || process.arch !== 'x64') return undefined;
  try {
    return fs.readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return undefined;
  }
}

/** An engine of the addon at `file` (default: this checkout's build, or MLX_BATCH_ADDON). */
export function createNativeEngine(file?: string): NativeEngine {
  const at = path.resolve(file ?? [...addons.keys()][0] ?? addonPath());
  let addon = addons.get(at);
  if (!addon) {
    if (!fs.existsSync(at)) throw new Error(`native addon not found at ${at}`);
    if (addons.size === 0) {
      // OpenBLAS reads it once, when the first addon loads it.
      const core = blasCoreType(process.env, readCpuinfo());
      if (core) process.env.OPENBLAS_CORETYPE = core;
    }
    addon = createRequire(at)(at) as Addon;
    addons.set(at, addon);
  }
  return new addon.Engine();
}
