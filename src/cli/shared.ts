// What every mlx-batch command shares: exit codes, flag parsers, the model
// and sampling option groups, and starting a sidecar for the run.
import path from 'node:path';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { SidecarClient } from '../engine/client.js';
import { DEVICES, ModelNotFoundError, resolveModelPath, WEIGHTS_MODES } from '../engine/engine-session.js';
import type { EngineSettings, ModelInfo } from '../engine/protocol.js';
import { DEFAULT_SAMPLING } from '../engine/scheduler.js';
import type { LoadOptions, SamplingParams, WeightsMode } from '../engine/native.js';
import { formatBytes, parseByteSize } from '../byte-size.js';

/** Bad flags or inputs: reported without a stack trace, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_INTERRUPTED = 130;

// ---------------------------------------------------------------------------
// Flag parsers (commander calls them; InvalidArgumentError becomes a usage error)

export function integerArg(what: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\s*[+-]?\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(
        max === Number.MAX_SAFE_INTEGER ? `${what} must be an integer >= ${min}.` : `${what} must be an integer from ${min} to ${max}.`,
      );
    }
    return n;
  };
}

export function numberArg(what: string, ok: (n: number) => boolean, range: string) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || !ok(n)) throw new InvalidArgumentError(`${what} must be ${range}.`);
    return n;
  };
}

export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

// ---------------------------------------------------------------------------
// Shared option groups, so later commands (ask, serve, bench) take the same flags

export function addModelOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('-m, --model <path>', 'GGUF file or model folder (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)'))
    .addOption(
      new Option('--weights <mode>', 'weights dtype: auto = float32 on CPU, quantized kept on GPU')
        .choices(WEIGHTS_MODES)
        .default('auto'),
    )
    .addOption(new Option('--device <device>', 'where MLX runs').choices(DEVICES).default('auto'));
}

export function addSamplingOptions(cmd: Command): Command {
  return cmd
    .option('--max-tokens <n>', 'most tokens to generate per prompt', integerArg('--max-tokens', 1), 256)
    .option('--temp <t>', 'sampling temperature, 0 = greedy', numberArg('--temp', (n) => n >= 0, 'a number >= 0'), 0)
    .option('--top-p <p>', 'nucleus sampling, 1 = off', numberArg('--top-p', (n) => n > 0 && n <= 1, 'in (0, 1]'), 1)
    .option('--top-k <k>', 'keep the k most likely tokens, 0 = off', integerArg('--top-k', 0, 2 ** 31 - 1), 0)
    .option('--min-p <p>', 'drop tokens below p times the top probability, 0 = off', numberArg('--min-p', (n) => n >= 0 && n < 1, 'in [0, 1)'), 0)
    .option(
      '--repetition-penalty <r>',
      'penalise recently seen tokens, 1 = off',
      numberArg('--repetition-penalty', (n) => n > 0, 'a number > 0'),
      1,
    )
    .option(
      '--repetition-context-size <n>',
      'how many recent tokens the repetition penalty looks at',
      integerArg('--repetition-context-size', 1, 2 ** 31 - 1),
      DEFAULT_SAMPLING.repetitionContextSize,
    )
    .option('--seed <n>', 'random seed (default: random); each prompt uses it as is', integerArg('--seed', 0, 2 ** 32 - 1))
    .option('--stop <s>', 'stop before this string (repeatable)', collect);
}

export interface ModelFlags {
  model?: string;
  weights: WeightsMode;
  device: LoadOptions['device'];
}

export interface SamplingFlags {
  maxTokens: number;
  temp: number;
  topP: number;
  topK: number;
  minP: number;
  repetitionPenalty: number;
  repetitionContextSize: number;
  seed?: number;
  stop?: string[];
}

export function samplingFrom(flags: SamplingFlags): Partial<SamplingParams> {
  return {
    temperature: flags.temp,
    topP: flags.topP,
    topK: flags.topK,
    minP: flags.minP,
    repetitionPenalty: flags.repetitionPenalty,
    repetitionContextSize: flags.repetitionContextSize,
    // No --seed: the engine draws one per prompt, so repeated prompts sample apart.
    ...(flags.seed !== undefined ? { seed: flags.seed } : {}),
  };
}

/** Checks the model path before anything heavy is loaded (missing file = usage error). */
export function checkModelPath(model: string | undefined): string {
  try {
    return resolveModelPath(model);
  } catch (e) {
    if (e instanceof ModelNotFoundError) throw new UsageError(e.message);
    throw e;
  }
}

export const DEFAULT_MAX_BATCH = 32;
export const DEFAULT_PREFILL_CHUNK = 512;

/** Runs `fn` against a sidecar loaded with the model; its output is shown only if it fails. */
export async function withSidecar<T>(flags: ModelFlags, io: CliIO, settings: EngineSettings, fn: (client: SidecarClient, info: ModelInfo) => Promise<T>): Promise<T> {
  const modelPath = checkModelPath(flags.model);
  const logTail: string[] = [];
  const client = new SidecarClient({ ...settings, modelPath, weights: flags.weights, device: flags.device }, {
    sidecarPath: sidecarScriptPath(),
    maxCrashes: 1,
    log: (line) => {
      logTail.push(line);
      if (logTail.length > 20) logTail.shift();
    },
  });
  if (io.stderrIsTTY) io.stderr.write(`loading ${modelPath} ...\r`);
  let info: ModelInfo;
  try {
    info = await client.start();
  } catch (e) {
    await client.stop();
    // The client's own note of this failure would say it twice.
    const message = (e as Error).message;
    const tail = logTail.filter((line) => line !== `[client] ${message}`);
    throw new Error(`${message}${tail.length ? `\n${tail.join('\n')}` : ''}`);
  } finally {
    if (io.stderrIsTTY) io.stderr.write('\x1b[2K\r');
  }
  try {
    return await fn(client, info);
  } finally {
    await client.stop();
  }
}


export { formatBytes, parseByteSize };

export function byteSizeArg(what: string) {
  return (value: string): number => {
    try {
      return parseByteSize(value);
    } catch (e) {
      throw new InvalidArgumentError(`${what}: ${(e as Error).message}`);
    }
  };
}

/** The sidecar next to this CLI: src/engine/sidecar.ts when run from source, dist/sidecar.js when bundled. */
export function sidecarScriptPath(): string {
  return __filename.endsWith('.ts') ? path.join(__dirname, '..', 'engine', 'sidecar.ts') : path.join(__dirname, 'sidecar.js');
}

export interface CliIO {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stderrIsTTY: boolean;
}

/**
 * Ctrl-C once: `signal` aborts, so the command can finish cleanly (cancel,
 * print, write what it has); twice: exit at once. `dispose` removes the handler.
 */
export function interruptOnce(io: CliIO, message: string): { signal: AbortSignal; interrupted: () => boolean; dispose: () => void } {
  const abort = new AbortController();
  let interrupts = 0;
  // SIGTERM and SIGHUP (timeout, a closed terminal, a CI cancel) end the run as Ctrl-C does: what finished is reported.
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  const onSignal = (signal: NodeJS.Signals) => {
    if (++interrupts > 1) process.exit(EXIT_INTERRUPTED);
    io.stderr.write(`\ninterrupted${signal === 'SIGINT' ? '' : ` (${signal})`}: ${message} (Ctrl-C again to quit)\n`);
    abort.abort();
  };
  for (const s of signals) process.on(s, onSignal);
  return {
    signal: abort.signal,
    interrupted: () => interrupts > 0,
    dispose: () => signals.forEach((s) => process.off(s, onSignal)),
  };
}
