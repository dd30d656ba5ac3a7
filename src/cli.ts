// mlx-batch: the engine without VS Code.
//   generate   run prompts through the batched decoder and print the answers
//   ask        questions x files, one decoding channel per job (src/cli/ask.ts)
//   serve      an OpenAI-compatible HTTP API on 127.0.0.1 (src/engine/http-server.ts)
//   bench      benchmarks on the real engine: `bench minions`, the seed benchmark (src/cli/bench.ts)
// Each command is built by its own function and added in buildProgram().
import fs from 'node:fs';
import { Command, CommanderError, Option } from 'commander';
import cliProgress from 'cli-progress';
import type { ChatMessage, EngineSettings, GenerateResult, ModelInfo } from './engine/protocol.js';
import crypto from 'node:crypto';
import { SidecarClient, SidecarState } from './engine/client.js';
import { modelIdFromPath, startOpenAiServer } from './engine/http-server.js';
import { askCommand } from './cli/ask.js';
import { benchCommand } from './cli/bench.js';
import {
  addModelOptions, addSamplingOptions, byteSizeArg, checkModelPath, collect, DEFAULT_MAX_BATCH, DEFAULT_PREFILL_CHUNK,
  EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, formatBytes, integerArg, interruptOnce, samplingFrom, sidecarScriptPath, UsageError,
  withSidecar, type CliIO, type ModelFlags, type SamplingFlags,
} from './cli/shared.js';

export { parseByteSize, UsageError, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, type CliIO } from './cli/shared.js';

// ---------------------------------------------------------------------------
// generate

interface GenerateFlags extends ModelFlags, SamplingFlags {
  prompt?: string[];
  promptsFile?: string;
  batch?: number;
  prefillChunk: number;
  kvBudget?: number;
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
  if (prompts.length === 0 && flags.promptsFile !== undefined) throw new UsageError(`no prompts: ${flags.promptsFile === '-' ? 'stdin' : flags.promptsFile} holds none`);
  if (prompts.length === 0) throw new UsageError('no prompts: give --prompt <text> (repeatable) or --prompts-file <file>');
  return prompts;
}

function oneLine(text: string, max = 72): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

interface RunStats {
  promptTokens: number;
  generatedTokens: number;
  /** The engine's own figures; null when it was gone at the end (a crash). */
  prefillTokensPerSec: number | null;
  decodeTokensPerSec: number | null;
  wallSeconds: number;
  peakMemoryBytes: number | null;
  batch: number;
}

function printHuman(io: CliIO, prompts: PromptInput[], results: GenerateResult[], stats: RunStats, info: ModelInfo, maxTokens: number) {
  const out: string[] = [];
  results.forEach((r, i) => {
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
  out.push(
    `${prompts.length} prompt${prompts.length === 1 ? '' : 's'}: ${stats.promptTokens} prompt + ${stats.generatedTokens} generated tokens` +
      (stats.prefillTokensPerSec === null || stats.decodeTokensPerSec === null || stats.peakMemoryBytes === null
        ? ` (batch ${stats.batch}) | wall ${stats.wallSeconds.toFixed(2)} s | no engine figures`
        : ` | prefill ${stats.prefillTokensPerSec.toFixed(1)} tok/s | decode ${stats.decodeTokensPerSec.toFixed(1)} tok/s (batch ${stats.batch})` +
          ` | wall ${stats.wallSeconds.toFixed(2)} s | peak memory ${formatBytes(stats.peakMemoryBytes)}`) +
      ` | ${info.device} ${info.weights}`,
  );
  io.stdout.write(out.join('\n') + '\n');
}

async function runGenerate(flags: GenerateFlags, io: CliIO): Promise<number> {
  const prompts = readPrompts(flags);
  const sampling = samplingFrom(flags);
  const batch = flags.batch ?? Math.min(prompts.length, DEFAULT_MAX_BATCH);
  const settings: EngineSettings = {
    maxBatch: batch, prefillTokensPerStep: flags.prefillChunk,
    ...(flags.kvBudget !== undefined ? { kvBudgetBytes: flags.kvBudget } : {}),
  };

  return withSidecar(flags, io, settings, async (client, info) => {
    // Before the signal handlers and the progress bar: a sidecar that dies here leaves neither behind.
    await client.resetPeakMemory();
    const before = await client.metrics();
    // Ctrl-C once: cancel every request and print what was generated; twice: quit.
    const interrupt = interruptOnce(io, 'finishing');

    let bar: cliProgress.SingleBar | undefined;
    let tokens = 0;
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

    const started = performance.now();
    let results: GenerateResult[];
    try {
      results = await Promise.all(prompts.map(async (p) => {
        const r = await client.generate({
          // --raw sends the text as is; otherwise it is one user message through the chat template.
          ...(p.messages ? { messages: p.messages } : flags.raw ? { prompt: p.prompt } : { messages: [{ role: 'user', content: p.prompt! }] }),
          maxTokens: flags.maxTokens,
          sampling,
          stop: flags.stop ?? [],
        }, {
          signal: interrupt.signal,
          onDelta: (d) => {
            if (!bar) return;
            tokens += d.tokens;
            bar.update({ tokens, rate: (tokens / Math.max(1e-3, (performance.now() - started) / 1000)).toFixed(1) });
          },
        });
        bar?.increment();
        return r;
      }));
    } finally {
      bar?.stop();
      interrupt.dispose();
    }
    // An engine that crashed for good has no figures; the results are printed all the same.
    const after = await client.metrics().catch((e: Error) => {
      io.stderr.write(`mlx-batch: no engine figures for this run: ${e.message}\n`);
      return undefined;
    });
    const rate = (tokens: number, seconds: number) => (seconds > 0 ? tokens / seconds : 0);
    const stats: RunStats = {
      promptTokens: results.reduce((n, r) => n + r.promptTokens, 0),
      generatedTokens: results.reduce((n, r) => n + r.generatedTokens, 0),
      prefillTokensPerSec: after ? rate(after.prefillTokens - before.prefillTokens, after.prefillSeconds - before.prefillSeconds) : null,
      decodeTokensPerSec: after ? rate(after.decodeTokens - before.decodeTokens, after.decodeSeconds - before.decodeSeconds) : null,
      wallSeconds: (performance.now() - started) / 1000,
      peakMemoryBytes: after?.peakMemoryBytes ?? null,
      batch,
    };

    if (flags.json) {
      const json = {
        results: results.map((r, i) => ({
          prompt: prompts[i].messages ? prompts[i].messages : prompts[i].label,
          text: r.text,
          promptTokens: r.promptTokens,
          generatedTokens: r.generatedTokens,
          finishReason: r.finishReason,
          ...(r.error !== undefined ? { error: r.error } : {}),
        })),
        stats: { ...stats, model: info.modelPath, weights: info.weights, device: info.device },
      };
      io.stdout.write(JSON.stringify(json, null, 2) + '\n');
    } else {
      printHuman(io, prompts, results, stats, info, flags.maxTokens);
    }
    if (interrupt.interrupted()) return EXIT_INTERRUPTED;
    return results.some((r) => r.finishReason === 'error') ? EXIT_FAILURE : EXIT_OK;
  });
}

function generateCommand(io: CliIO, done: (code: number) => void): Command {
  const cmd = new Command('generate')
    .description('generate answers for one or more prompts, decoded together in one batch')
    .option('-p, --prompt <text>', 'a prompt (repeatable)', collect)
    .option('-f, --prompts-file <file>', 'prompts: one per line, or a JSON array ("-" = stdin)')
    .option('-b, --batch <n>', `rows decoded together (default: all prompts, at most ${DEFAULT_MAX_BATCH}); 1 = one at a time`, integerArg('--batch', 1, 1024))
    .option('--prefill-chunk <n>', 'prompt tokens prefilled per scheduler step', integerArg('--prefill-chunk', 1), DEFAULT_PREFILL_CHUNK)
    .option('--kv-budget <bytes>', 'KV cache budget, e.g. 2GiB or 512MiB (default: a quarter of memory)', byteSizeArg('--kv-budget'))
    .option('--raw', 'send prompts as they are, without the chat template')
    .option('--json', 'print results and stats as JSON');
  addSamplingOptions(cmd);
  addModelOptions(cmd);
  cmd.action(async (flags: GenerateFlags) => done(await runGenerate(flags, io)));
  return cmd;
}

// ---------------------------------------------------------------------------
// serve

interface ServeFlags extends ModelFlags {
  port: number;
  token?: string;
  modelId?: string;
  batch?: number;
  /** The old names of --batch and --prefill-chunk, still read (hidden from --help). */
  maxBatch?: number;
  prefillChunk?: number;
  kvBudget?: number;
  prefixCache?: number;
  prefillTokensPerStep?: number;
  maxTokens?: number;
  maxQueue: number;
  verbose?: boolean;
}


/** Requests waiting beyond the batch before serve answers 429. */
const DEFAULT_MAX_QUEUE = 256;

async function runServe(flags: ServeFlags, io: CliIO): Promise<number> {
  const modelPath = checkModelPath(flags.model);
  let serving = false;
  const client = new SidecarClient(
    {
      modelPath,
      weights: flags.weights,
      device: flags.device,
      ...((flags.batch ?? flags.maxBatch) !== undefined ? { maxBatch: flags.batch ?? flags.maxBatch } : {}),
      ...(flags.kvBudget !== undefined ? { kvBudgetBytes: flags.kvBudget } : {}),
      ...(flags.prefixCache !== undefined ? { prefixCacheBytes: flags.prefixCache } : {}),
      ...((flags.prefillChunk ?? flags.prefillTokensPerStep) !== undefined ? { prefillTokensPerStep: flags.prefillChunk ?? flags.prefillTokensPerStep } : {}),
      maxQueuedRequests: flags.maxQueue,
    },
    {
      sidecarPath: sidecarScriptPath(),
      // Supervision lines ([client] ...) once serving (a failed load is said once, by the error); what the sidecar prints only with --verbose.
      log: (line) => {
        if (flags.verbose || (serving && line.startsWith('[client]'))) io.stderr.write(`${line}\n`);
      },
    },
  );

  // Ctrl-C / SIGTERM: stop the server and the sidecar cleanly; a second signal quits at once.
  let stopRequested: (signal: NodeJS.Signals) => void = () => {};
  const stopped = new Promise<NodeJS.Signals>((resolve) => (stopRequested = resolve));
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    if (++signals > 1) process.exit(EXIT_INTERRUPTED);
    io.stderr.write(`\n${signal}: stopping (again to quit at once)\n`);
    stopRequested(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let server: Awaited<ReturnType<typeof startOpenAiServer>> | undefined;
  try {
    if (io.stderrIsTTY) io.stderr.write(`loading ${modelPath} ...\r`);
    const loading = client.start();
    const first = await Promise.race([loading.then(() => undefined), stopped]);
    if (io.stderrIsTTY) io.stderr.write('\x1b[2K\r');
    if (first !== undefined) return EXIT_OK; // stopped while loading
    const info = await loading;
    if (flags.maxTokens !== undefined && flags.maxTokens >= info.contextLength) {
      throw new UsageError(`--max-tokens ${flags.maxTokens} leaves no room for a prompt in the model's context of ${info.contextLength} tokens`);
    }
    const generated = !flags.token; // an empty MLX_BATCH_TOKEN counts as none
    const token = flags.token || crypto.randomBytes(24).toString('base64url');
    const modelId = flags.modelId ?? modelIdFromPath(info.modelPath);
    try {
      serving = true;
      server = await startOpenAiServer({
        client,
        port: flags.port,
        token,
        modelId,
        ...(flags.maxTokens !== undefined ? { defaultMaxTokens: flags.maxTokens } : {}),
        log: (line) => flags.verbose && io.stderr.write(`[http] ${line}\n`),
      });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EADDRINUSE') throw new UsageError(`port ${flags.port} on 127.0.0.1 is already in use (use --port 0 for any free port)`);
      throw e;
    }
    const example = JSON.stringify({ model: modelId, messages: [{ role: 'user', content: 'Hello!' }], max_tokens: 64 });
    io.stdout.write(
      [
        `model ${modelId} (${info.architecture}, ${info.device}, ${info.weights}), max batch ${info.maxBatch}, ` +
          `KV budget ${formatBytes(info.kvBudgetBytes)}, prefix cache ${formatBytes(info.prefixCacheBytes)}, loaded in ${info.loadSeconds.toFixed(1)} s`,
        ...(info.weightsNote ? [info.weightsNote] : []),
        `OpenAI-compatible API at ${server.url}/v1 (127.0.0.1 only; Prometheus metrics at ${server.url}/metrics)`,
        generated ? `token: ${token}` : 'token: as given by --token / MLX_BATCH_TOKEN',
        'example:',
        `  curl ${server.url}/v1/chat/completions -H "Authorization: Bearer ${generated ? token : '$MLX_BATCH_TOKEN'}" ` +
          `-H "Content-Type: application/json" -d '${example}'`,
        'Ctrl-C to stop.',
        '',
      ].join('\n'),
    );
    client.on('restart', (why: string) => io.stderr.write(`sidecar restarting: ${why}\n`));
    client.on('state', (state: SidecarState) => {
      if (state === SidecarState.Failed) io.stderr.write(`the engine is not running (${client.failure}); requests get 503 until serve is restarted\n`);
    });
    await stopped;
    return EXIT_OK;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await server?.close();
    await client.stop();
  }
}

function serveCommand(io: CliIO, done: (code: number) => void): Command {
  const cmd = new Command('serve')
    .description('serve the model over an OpenAI-compatible HTTP API on 127.0.0.1 (continuous batching)')
    .option('-p, --port <n>', 'port on 127.0.0.1 (0 = any free port)', integerArg('--port', 0, 65535), 8080)
    .addOption(new Option('--token <token>', 'bearer token clients must send (default: a random one, printed)').env('MLX_BATCH_TOKEN'))
    .option('--model-id <id>', 'the model name the API lists and accepts (default: the model file or folder name)')
    // The same names as generate's and ask's for the same settings.
    .option('-b, --batch <n>', 'most requests decoded together (default 32)', integerArg('--batch', 1, 1024))
    .addOption(new Option('--max-batch <n>').hideHelp().argParser(integerArg('--max-batch', 1, 1024)))
    .option('--kv-budget <bytes>', 'KV cache budget, e.g. 2GiB or 512MiB (default: a quarter of memory)', byteSizeArg('--kv-budget'))
    .option('--prefix-cache <bytes>', 'memory for shared prompt prefixes, e.g. 1GiB; 0 = no prefix reuse (default: a quarter of the KV budget)', byteSizeArg('--prefix-cache'))
    .option('--prefill-chunk <n>', 'prompt tokens prefilled per scheduler step (default 512)', integerArg('--prefill-chunk', 1))
    .addOption(new Option('--prefill-tokens-per-step <n>').hideHelp().argParser(integerArg('--prefill-tokens-per-step', 1)))
    .option('--max-tokens <n>', 'max_tokens when a request gives none (default 512)', integerArg('--max-tokens', 1))
    .option('--max-queue <n>', 'most requests waiting for a batch slot; more get 429 with Retry-After', integerArg('--max-queue', 0), DEFAULT_MAX_QUEUE)
    .option('-v, --verbose', 'print what the sidecar prints');
  addModelOptions(cmd);
  cmd.action(async (flags: ServeFlags) => done(await runServe(flags, io)));
  return cmd;
}

// ---------------------------------------------------------------------------
// Program


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
  for (const cmd of [generateCommand(io, done), askCommand(io, done), serveCommand(io, done), benchCommand(io, done)]) {
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
  // A reader that stops early (`| head`) closes the pipe: the rest is for nobody, and the run still ends normally.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
  });
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
