// One opened model: its spec, tokenizer and a loaded native engine. Used by the
// CLI (and later the sidecar) so that opening a model is done one way.
import fs from 'node:fs';
import path from 'node:path';
import { loadModelSpec } from './model-config.js';
import type { ModelSpec } from './model-spec.js';
import { createNativeEngine, projectRoot, type LoadedModel, type LoadOptions, type NativeEngine, type WeightsMode } from './native.js';
import { Tokenizer } from './tokenizer.js';
import { DEFAULT_MODEL_FILE } from './default-model.js';

export { DEFAULT_MODEL_FILE };

export const WEIGHTS_MODES: readonly WeightsMode[] = ['auto', 'float32', 'float16', 'bfloat16', 'quantized'];
export const DEVICES: readonly LoadOptions['device'][] = ['auto', 'cpu', 'gpu'];

export interface OpenModelOptions {
  weights?: WeightsMode;
  device?: LoadOptions['device'];
}

export interface ModelSession {
  /** The model path that was opened (absolute). */
  modelPath: string;
  spec: ModelSpec;
  tokenizer: Tokenizer;
  engine: NativeEngine;
  loaded: LoadedModel;
  /** Seconds spent opening (spec, tokenizer, weights). */
  loadSeconds: number;
  /** Releases the native engine (and its memory). Safe to call more than once. */
  close(): Promise<void>;
}

/** A model path that does not exist (the CLI reports it as a usage error). */
export class ModelNotFoundError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelNotFoundError';
  }
}

export function defaultModelPath(): string {
  return path.join(projectRoot(), 'models', DEFAULT_MODEL_FILE);
}

/** Resolves and checks a model path (a .gguf file or a model folder); throws ModelNotFoundError. */
export function resolveModelPath(modelPath?: string): string {
  if (modelPath === undefined || modelPath === '') {
    const file = defaultModelPath();
    if (!fs.existsSync(file)) {
      throw new ModelNotFoundError(`the default model ${file} is missing: run \`npm run setup\` to fetch it, or give a model path`);
    }
    return file;
  }
  const resolved = path.resolve(modelPath);
  if (!fs.existsSync(resolved)) throw new ModelNotFoundError(`model not found: ${modelPath}`);
  const stat = fs.statSync(resolved);
  if (stat.isFile() && !resolved.toLowerCase().endsWith('.gguf')) {
    throw new ModelNotFoundError(`model ${modelPath} is a file but not a .gguf file (give a .gguf file or a model folder)`);
  }
  return resolved;
}

export async function openModel(modelPath?: string, options: OpenModelOptions = {}): Promise<ModelSession> {
  const start = performance.now();
  const resolved = resolveModelPath(modelPath);
  const weights = options.weights ?? 'auto';
  const device = options.device ?? 'auto';
  if (!WEIGHTS_MODES.includes(weights)) throw new Error(`unknown weights mode '${weights}' (one of ${WEIGHTS_MODES.join(', ')})`);
  if (!DEVICES.includes(device)) throw new Error(`unknown device '${device}' (one of ${DEVICES.join(', ')})`);

  const [spec, tokenizer] = await Promise.all([loadModelSpec(resolved), Tokenizer.fromModel(resolved)]);
  for (const warning of tokenizer.warnings) process.stderr.write(`warning: ${warning}\n`);
  const engine = createNativeEngine();
  let loaded: LoadedModel;
  try {
    loaded = await engine.load(spec, { weights, device });
  } catch (e) {
    await engine.close().catch(() => undefined);
    throw e;
  }
  let closed: Promise<void> | undefined;
  return {
    modelPath: resolved,
    spec,
    tokenizer,
    engine,
    loaded,
    loadSeconds: (performance.now() - start) / 1000,
    close() {
      closed ??= engine.close();
      return closed;
    },
  };
}
