// The normalized description of a model that the native engine builds from.
// Produced from config.json (Hugging Face / MLX folders) or GGUF metadata by
// loadModelSpec(); the native side trusts these fields and reads no config.

import type { GgufTensor } from './gguf-metadata.js';

export type Architecture = 'llama' | 'qwen2' | 'qwen3' | 'gemma2' | 'gemma3' | 'phi3';

export interface RopeScaling {
  type: 'linear' | 'llama3' | 'longrope';
  factor: number;
  // llama3
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositionEmbeddings?: number;
  // longrope (Phi-3): per-dimension factors, long ones past the original context
  shortFactor?: number[];
  longFactor?: number[];
}

export interface ModelSpec {
  /** What the user passed (a .gguf file or a model folder); used in messages. */
  path: string;
  format: 'gguf' | 'safetensors';
  /** Absolute paths of the weight files (one GGUF, or every safetensors shard). */
  weightFiles: string[];
  /** GGUF: the tensor table read from weightFiles[0]; the addon reads tensors by it (and checks it). */
  gguf?: { dataOffset: number; tensors: GgufTensor[] };
  architecture: Architecture;
  /** The model_type / general.architecture as the files spell it. */
  sourceArchitecture: string;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** GGUF llama-family weights are permuted for interleaved (traditional) RoPE. */
  ropeTraditional: boolean;
  ropeScaling?: RopeScaling;
  /** Context length the model was trained for; prompts longer than this are refused. */
  contextLength: number;
  tieWordEmbeddings: boolean;
  /** Gemma: RMSNorm multiplies by (1 + w) in HF checkpoints; GGUF stores w + 1 already. */
  normWeightOffset: number;
  hiddenAct: 'silu' | 'gelu_tanh';
  /** Gemma: multiply embeddings by sqrt(hidden). */
  scaleEmbeddings: boolean;
  /** Attention scale is queryPreAttnScalar^-0.5 when set, else headDim^-0.5. */
  queryPreAttnScalar?: number;
  attnLogitSoftcapping?: number;
  finalLogitSoftcapping?: number;
  /** Per layer: sliding-window attention or full. Absent = all full. */
  slidingWindow?: number;
  layerTypes?: Array<'full' | 'sliding'>;
  /** Gemma 3 sliding layers use their own RoPE base and no scaling. */
  ropeLocalTheta?: number;
  /** Qwen2 has q/k/v biases. */
  attentionBias: boolean;
  /** mlx-community quantized safetensors. */
  quantization?: { groupSize: number; bits: number };
}
