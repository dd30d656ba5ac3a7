// mlx-batch: the engine without VS Code.
//   generate   run prompts through the batched decoder and print the answers
// (ask, serve and bench come later: each command is built by its own function
// below and added in buildProgram()).
import fs from 'node:fs';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import cliProgress from 'cli-progress';
import {
  BatchGenerator,
  DEFAULT_MAX_BATCH,
  DEFAULT_PREFILL_CHUNK,
  DEFAULT_SAMPLING,
  type ChatMessage,
  type GenerationRequest,
  type GenerationRun,
} from './engine/generator.js';
import { DEVICES, ModelNotFoundError, openModel, resolveModelPath, WEIGHTS_MODES, type ModelSession } from './engine/engine-session.js';
import type { LoadOptions, SamplingParams, WeightsMode } from './engine/native.js';

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

function integerArg(what: string, min: number, max = Number.MAX_SAFE_INTEGER) {
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

function numberArg(what: string, ok: (n: number) => boolean, range: string) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || !ok(n)) throw new InvalidArgumentError(`${what} must be ${range}.`);
    return n;
  };
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

// ---------------------------------------------------------------------------
// Shared option groups, so later commands (ask, serve, bench) take the same flags

function addModelOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('-m, --model <path>', 'GGUF file or model folder (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)'))
    .addOption(
      new Option('--weights <mode>', 'weights dtype: auto = float32 on CPU, quantized kept on GPU')
        .choices(WEIGHTS_MODES)
        .default('auto'),
    )
    .addOption(new Option('--device <device>', 'where MLX runs').choices(DEVICES).default('auto'));
}

function addSamplingOptions(cmd: Command): Command {
  return cmd
    .option('--max-tokens <n>', 'most tokens to generate per prompt', integerArg('--max-tokens', 1), 256)
    .option('--temp <t>', 'sampling temperature, 0 = greedy', numberArg('--temp', (n) => n >= 0, 'a number >= 0'), 0)
    .option('--top-p <p>', 'nucleus sampling, 1 = off', numberArg('--top-p', (n) => n > 0 && n <= 1, 'in (0, 1]'), 1)
    .option('--top-k <k>', 'keep the k most likely tokens, 0 = off', integerArg('--top-k', 0), 0)
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
      integerArg('--repetition-context-size', 1),
      DEFAULT_SAMPLING.repetitionContextSize,
    )
    .option('--seed <n>', 'random seed (default: random); each prompt uses it as is', integerArg('--seed', 0, 2 ** 32 - 1))
    .option('--stop <s>', 'stop before this string (repeatable)', collect);
}

interface ModelFlags {
  model?: string;
  weights: WeightsMode;
  device: LoadOptions['device'];
}

interface SamplingFlags {
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

function samplingFrom(flags: SamplingFlags): SamplingParams {
  return {
    temperature: flags.temp,
    topP: flags.topP,
    topK: flags.topK,
    minP: flags.minP,
    repetitionPenalty: flags.repetitionPenalty,
    repetitionContextSize: flags.repetitionContextSize,
    seed: flags.seed ?? Math.floor(Math.random() * 2 ** 31),
  };
}

/** Checks the model path before anything heavy is loaded (missing file = usage error). */
function checkModelPath(model: string | undefined): string {
  try {
    return resolveModelPath(model);
  } catch (e) {
    if (e instanceof ModelNotFoundError) throw new UsageError(e.message);
    throw e;
  }
}

async function withModel<T>(flags: ModelFlags, io: CliIO, fn: (session: ModelSession) => Promise<T>): Promise<T> {
  const modelPath = checkModelPath(flags.model);
  if (io.stderrIsTTY) io.stderr.write(`loading ${modelPath} ...\r`);
  let session: ModelSession;
  try {
    session = await openModel(modelPath, { weights: flags.weights, device: flags.device });
  } finally {
    if (io.stderrIsTTY) io.stderr.write('\x1b[2K\r');
  }
  try {
    return await fn(session);
  } finally {
    await session.close();
  }
}

// ---------------------------------------------------------------------------
// generate

interface GenerateFlags extends ModelFlags, SamplingFlags {
  prompt?: string[];
  promptsFile?: string;
  batch?: number;
  prefillChunk: number;
  raw?: boolean;
  json?: boolean;
}

interface PromptInput {
  /** What is shown / reported as the prompt. */
  label: string;
  prompt?: string;
  messages?: ChatMessage[];
}

/** Reads a prompts file: a JSON array (strings, {prompt} or {messages}), else one prompt per non-empty line. */
export function parsePromptsFile(content: string, file: string): PromptInput[] {
  const trimmed = content.trim();
  if (trimmed.startsWith('[')) {
    let data: unknown;
    try {
      data = JSON.parse(trimmed);
    } catch (e) {
      throw new UsageError(`${file}: not valid JSON: ${(e as Error).message}`);
    }
    if (!Array.isArray(data)) throw new UsageError(`${file}: expected a JSON array of prompts`);
    return data.map((item, i): PromptInput => {
      if (typeof item === 'string') return { label: item, prompt: item };
      if (item && typeof item === 'object') {
        const o = item as { prompt?: unknown; messages?: unknown };
        if (typeof o.prompt === 'string') return { label: o.prompt, prompt: o.prompt };
        if (
          Array.isArray(o.messages) &&
          o.messages.length > 0 &&
          o.messages.every((m) => m && typeof m.role === 'string' && typeof m.content === 'string')
        ) {
          const messages = o.messages as ChatMessage[];
          const lastUser = [...messages].reverse().find((m) => m.role === 'user');
          return { label: (lastUser ?? messages[messages.length - 1]).content, messages };
        }
      }
      throw new UsageError(`${file}: item ${i + 1} must be a string, {"prompt": string} or {"messages": [{role, content}, ...]}`);
    });
  }
  return content
    .split(/\r?\n/)
    .filter((line) => line.trim() !== '')
    .map((line) => ({ label: line, prompt: line }));
}

function readPrompts(flags: GenerateFlags): PromptInput[] {
  const prompts: PromptInput[] = (flags.prompt ?? []).map((p) => ({ label: p, prompt: p }));
  if (flags.promptsFile !== undefined) {
    const file = flags.promptsFile;
    let content: string;
    try {
      content = file === '-' ? fs.readFileSync(0, 'utf8') : fs.readFileSync(file, 'utf8');
    } catch (e) {
      throw new UsageError(`cannot read prompts file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    prompts.push(...parsePromptsFile(content, file));
  }
  if (prompts.length === 0) throw new UsageError('no prompts: give --prompt <text> (repeatable) or --prompts-file <file>');
  return prompts;
}

function formatBytes(n: number): string {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(2)} GiB`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

function oneLine(text: string, max = 72): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

function printHuman(io: CliIO, prompts: PromptInput[], run: GenerationRun, session: ModelSession, maxTokens: number) {
  const out: string[] = [];
  run.results.forEach((r, i) => {
    out.push(`=== [${i + 1}/${prompts.length}] ${oneLine(prompts[i].label)} ===`);
    if (r.finishReason === 'error') {
      out.push(`error: ${r.error}`);
    } else {
      out.push(r.text.trimEnd());
      if (r.finishReason === 'length') out.push(`[cut at --max-tokens ${maxTokens}]`);
      if (r.finishReason === 'cancelled') out.push(`[cancelled after ${r.generatedTokens} tokens]`);
    }
    out.push('');
  });
  const s = run.stats;
  out.push(
    `${prompts.length} prompt${prompts.length === 1 ? '' : 's'}: ${s.promptTokens} prompt + ${s.generatedTokens} generated tokens` +
      ` | prefill ${s.prefillTokensPerSec.toFixed(1)} tok/s | decode ${s.decodeTokensPerSec.toFixed(1)} tok/s (batch ${s.batch})` +
      ` | wall ${s.wallSeconds.toFixed(2)} s | peak memory ${formatBytes(s.peakMemoryBytes)}` +
      ` | ${session.loaded.device} ${session.loaded.weights}`,
  );
  io.stdout.write(out.join('\n') + '\n');
}

async function runGenerate(flags: GenerateFlags, io: CliIO): Promise<number> {
  const prompts = readPrompts(flags);
  const sampling = samplingFrom(flags);
  const batch = flags.batch ?? Math.min(prompts.length, DEFAULT_MAX_BATCH);

  return withModel(flags, io, async (session) => {
    // Ctrl-C once: cancel every request and print what was generated; twice: quit.
    const abort = new AbortController();
    let interrupts = 0;
    const onSigint = () => {
      if (++interrupts > 1) process.exit(EXIT_INTERRUPTED);
      io.stderr.write('\ninterrupted: finishing (Ctrl-C again to quit)\n');
      abort.abort();
    };
    process.on('SIGINT', onSigint);

    const requests: GenerationRequest[] = prompts.map((p) => ({
      prompt: p.prompt,
      messages: p.messages,
      raw: flags.raw ?? false,
      maxTokens: flags.maxTokens,
      sampling,
      stop: flags.stop ?? [],
      signal: abort.signal,
    }));

    let bar: cliProgress.SingleBar | undefined;
    let tokens = 0;
    const started = performance.now();
    if (io.stderrIsTTY) {
      bar = new cliProgress.SingleBar(
        {
          stream: io.stderr,
          format: 'generating |{bar}| {value}/{total} prompts | {tokens} tokens | {rate} tok/s',
          clearOnComplete: true,
          hideCursor: true,
          barsize: 24,
        },
        cliProgress.Presets.shades_classic,
      );
      bar.start(prompts.length, 0, { tokens: 0, rate: '0.0' });
    }

    let run: GenerationRun;
    try {
      run = await new BatchGenerator(session.engine, session.tokenizer, session.spec).run(requests, {
        batch,
        prefillChunk: flags.prefillChunk,
        onToken: (_i, _delta, tokenId) => {
          if (!bar || tokenId < 0) return;
          tokens++;
          const rate = tokens / Math.max(1e-3, (performance.now() - started) / 1000);
          bar.update({ tokens, rate: rate.toFixed(1) });
        },
        onFinish: () => bar?.increment(),
      });
    } finally {
      bar?.stop();
      process.off('SIGINT', onSigint);
    }

    if (flags.json) {
      const json = {
        results: run.results.map((r, i) => ({
          prompt: prompts[i].messages ? prompts[i].messages : prompts[i].label,
          text: r.text,
          promptTokens: r.promptTokens,
          generatedTokens: r.generatedTokens,
          finishReason: r.finishReason,
          ...(r.error !== undefined ? { error: r.error } : {}),
        })),
        stats: {
          prefillTokensPerSec: run.stats.prefillTokensPerSec,
          decodeTokensPerSec: run.stats.decodeTokensPerSec,
          wallSeconds: run.stats.wallSeconds,
          peakMemoryBytes: run.stats.peakMemoryBytes,
          batch: run.stats.batch,
          model: session.modelPath,
          weights: session.loaded.weights,
          device: session.loaded.device,
        },
      };
      io.stdout.write(JSON.stringify(json, null, 2) + '\n');
    } else {
      printHuman(io, prompts, run, session, flags.maxTokens);
    }
    if (interrupts > 0) return EXIT_INTERRUPTED;
    return run.results.some((r) => r.finishReason === 'error') ? EXIT_FAILURE : EXIT_OK;
  });
}

function generateCommand(io: CliIO, done: (code: number) => void): Command {
  const cmd = new Command('generate')
    .description('generate answers for one or more prompts, decoded together in one batch')
    .option('-p, --prompt <text>', 'a prompt (repeatable)', collect)
    .option('-f, --prompts-file <file>', 'prompts: one per line, or a JSON array ("-" = stdin)')
    .option('-b, --batch <n>', `rows decoded together (default: all prompts, at most ${DEFAULT_MAX_BATCH}); 1 = one at a time`, integerArg('--batch', 1, 1024))
    .option('--prefill-chunk <n>', 'prompt tokens per prefill call', integerArg('--prefill-chunk', 1), DEFAULT_PREFILL_CHUNK)
    .option('--raw', 'send prompts as they are, without the chat template')
    .option('--json', 'print results and stats as JSON');
  addSamplingOptions(cmd);
  addModelOptions(cmd);
  cmd.action(async (flags: GenerateFlags) => done(await runGenerate(flags, io)));
  return cmd;
}

// ---------------------------------------------------------------------------
// Program

export interface CliIO {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stderrIsTTY: boolean;
}

export function buildProgram(io: CliIO, done: (code: number) => void): Command {
  const program = new Command('mlx-batch')
    .description('Batched local LLM decoding on MLX')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
    })
    .showHelpAfterError('(run with --help for usage)');
  // Subcommands made with new Command() inherit nothing: copy the settings.
  for (const cmd of [generateCommand(io, done)]) {
    cmd.copyInheritedSettings(program);
    program.addCommand(cmd);
  }
  return program;
}

/** Runs the CLI; resolves to the exit code (does not call process.exit). */
export async function main(argv: string[] = process.argv, io?: Partial<CliIO>): Promise<number> {
  const fullIO: CliIO = {
    stdout: io?.stdout ?? process.stdout,
    stderr: io?.stderr ?? process.stderr,
    stderrIsTTY: io?.stderrIsTTY ?? Boolean(process.stderr.isTTY),
  };
  let code = EXIT_OK;
  try {
    await buildProgram(fullIO, (c) => (code = c)).parseAsync(argv);
    return code;
  } catch (e) {
    if (e instanceof CommanderError) {
      // help and version exit 0; every parse error is a usage error
      return e.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    }
    if (e instanceof UsageError) {
      fullIO.stderr.write(`mlx-batch: error: ${e.message}\n`);
      return EXIT_USAGE;
    }
    const message = e instanceof Error ? e.message : String(e);
    fullIO.stderr.write(`mlx-batch: ${message}\n`);
    if (process.env.MLX_BATCH_DEBUG && e instanceof Error && e.stack) fullIO.stderr.write(`${e.stack}\n`);
    return EXIT_FAILURE;
  }
}

/** Entry point for bin/mlx-batch.js and `node dist/cli.js`. */
export function run(argv: string[] = process.argv): void {
  main(argv).then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      process.stderr.write(`mlx-batch: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = EXIT_FAILURE;
    },
  );
}

if (require.main === module) run();
