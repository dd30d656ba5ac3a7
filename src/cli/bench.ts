// mlx-batch bench minions: the seed benchmark (src/benchmark/) from the command
// line: clients x modes x (context, batch size), a progress bar, and the report
// with its charts written to --out.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command, Option } from 'commander';
import cliProgress from 'cli-progress';
import { OpenAiBackend } from '../ask/backends/openai.js';
import { SidecarBackend } from '../ask/backends/sidecar.js';
import { renderSvg, svgToPng } from '../benchmark/chart-render.js';
import { chartSpecs } from '../benchmark/charts.js';
import { TOKENS_PER_ANSWER, type MinionMode, type MinionRun } from '../benchmark/minions.js';
import { startLlamaCppServer } from '../benchmark/llamacpp-server.js';
import { startMlxLmServer, type PeerServer } from '../benchmark/mlx-lm-server.js';
import { buildReport, machineLabel, reportMarkdown } from '../benchmark/report.js';
import { DEFAULT_SWEEP, MAX_TARGET_REPEATS, runSweep, sweepCells, sweepRunCount, type SweepClient, type SweepPlan } from '../benchmark/sweep.js';
import { minionDocument } from '../benchmark/workload.js';
import { SidecarClient } from '../engine/client.js';
import { projectRoot } from '../engine/native.js';
import type { ModelInfo } from '../engine/protocol.js';
import {
  addModelOptions, checkModelPath, DEFAULT_PREFILL_CHUNK, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, integerArg, interruptOnce, sidecarScriptPath,
  UsageError, type CliIO, type ModelFlags,
} from './shared.js';

const CLIENTS = ['sequential', 'batched', 'server'] as const;
type ClientName = (typeof CLIENTS)[number];
const PEERS = ['llamacpp'] as const;
/** The llama.cpp peer's client name in the report. */
const LLAMACPP_CLIENT = 'llama.cpp';

interface MinionsFlags extends ModelFlags {
  clients: string;
  peers?: string;
  peerThreads: number;
  serverUrl?: string;
  serverModel?: string;
  sizes: string;
  contexts: string;
  contextSweepSize: number;
  sizeSweepContext: number;
  modes: string;
  seed: number;
  maxTokens: number;
  targetRepeats: number;
  out: string;
}

function listOf<T extends string>(flag: string, value: string, allowed: readonly T[]): T[] {
  const items = value.split(',').map((s) => s.trim()).filter(Boolean);
  if (items.length === 0) throw new UsageError(`${flag}: give at least one of ${allowed.join(', ')}`);
  for (const i of items) if (!allowed.includes(i as T)) throw new UsageError(`${flag}: unknown '${i}' (${allowed.join(', ')})`);
  return [...new Set(items)] as T[];
}

function numbers(flag: string, value: string, max: number): number[] {
  const items = value.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  if (items.length === 0 || items.some((n) => !Number.isInteger(n) || n < 1 || n > max)) {
    throw new UsageError(`${flag}: a comma-separated list of whole numbers from 1 to ${max}, not '${value}'`);
  }
  return [...new Set(items)];
}

/** A sidecar for one client, its output kept for the error message if it fails to start. */
async function startSidecar(modelPath: string, flags: ModelFlags, maxBatch: number): Promise<{ client: SidecarClient; info: ModelInfo }> {
  const tail: string[] = [];
  const client = new SidecarClient({ modelPath, weights: flags.weights, device: flags.device, maxBatch, prefillTokensPerStep: DEFAULT_PREFILL_CHUNK }, {
    sidecarPath: sidecarScriptPath(),
    maxCrashes: 1,
    log: (line) => {
      tail.push(line);
      if (tail.length > 20) tail.shift();
    },
  });
  try {
    return { client, info: await client.start() };
  } catch (e) {
    await client.stop();
    throw new Error(`${(e as Error).message}${tail.length ? `\n${tail.join('\n')}` : ''}`);
  }
}

export async function runMinionsBench(flags: MinionsFlags, io: CliIO): Promise<number> {
  const clients = listOf('--clients', flags.clients, CLIENTS);
  const peers = flags.peers === undefined ? [] : listOf('--peers', flags.peers, PEERS);
  const modes = listOf('--modes', flags.modes, ['packed', 'channels'] as const satisfies readonly MinionMode[]);
  const sweep: SweepPlan = {
    contexts: numbers('--contexts', flags.contexts, 500),
    sizes: numbers('--sizes', flags.sizes, 256),
    contextSweepSize: flags.contextSweepSize,
    sizeSweepContext: flags.sizeSweepContext,
    modes,
    seed: flags.seed,
    tokensPerAnswer: flags.maxTokens,
    targetRepeats: flags.targetRepeats,
  };
  if ((flags.serverUrl === undefined) !== (flags.serverModel === undefined)) throw new UsageError('--server-url and --server-model go together');
  if (flags.serverUrl !== undefined && !clients.includes('server')) throw new UsageError('--server-url is for the server client: add it to --clients');
  const modelPath = checkModelPath(flags.model);
  if (peers.includes('llamacpp') && !modelPath.endsWith('.gguf')) throw new UsageError(`--peers llamacpp serves a GGUF file; ${modelPath} is not one`);
  const outDir = path.resolve(flags.out);
  // Checked before anything runs: a sweep of many minutes must not be lost at the end.
  try {
    fs.mkdirSync(outDir, { recursive: true });
    fs.accessSync(outDir, fs.constants.W_OK);
  } catch (e) {
    throw new UsageError(`--out ${flags.out}: cannot write to ${outDir} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  // Every document the sweep asks about, made now: one the generator cannot fill fails here, not an hour in.
  for (const cell of sweepCells(sweep)) {
    try {
      minionDocument(sweep.seed, cell.context, cell.size);
    } catch (e) {
      throw new UsageError(`--contexts / --size-sweep-context ${cell.context}: ${(e as Error).message}`);
    }
  }
  const widest = Math.max(...sweep.sizes, sweep.contextSweepSize);

  const interrupt = interruptOnce(io, 'stopping after the run in progress; the report keeps what finished');
  const stops: Array<() => Promise<void>> = [];
  const described: Record<string, string> = {};
  // Runs as they end: what a failure or an interrupt leaves is still reported.
  const runs: MinionRun[] = [];
  let failure: string | undefined;
  let bar: cliProgress.SingleBar | undefined;
  try {
    const sweepClients: SweepClient[] = [];
    for (const name of clients as ClientName[]) {
      if (name === 'server') {
        let server: PeerServer | undefined;
        if (flags.serverUrl === undefined) {
          io.stderr.write('starting mlx_lm.server on the same weights ...\n');
          server = await startMlxLmServer(projectRoot(), modelPath, widest);
          stops.push(() => server!.stop());
        }
        const url = flags.serverUrl ?? server!.url;
        let backend: OpenAiBackend;
        try {
          backend = new OpenAiBackend({ url, model: flags.serverModel ?? server!.model, apiKey: process.env.MLX_BATCH_API_KEY || process.env.OPENAI_API_KEY,
            concurrency: widest, contextLength: PEER_CONTEXT });
        } catch (e) {
          throw new UsageError((e as Error).message.replace('--backend-url', '--server-url'));
        }
        sweepClients.push({ name, backend, ...(server ? { settle: () => server!.untilIdle() } : {}) });
        described[name] = server ? server.describe : `${url} (model ${flags.serverModel}), up to ${widest} requests at once`;
        continue;
      }
      const maxBatch = name === 'sequential' ? 1 : widest;
      const { client, info } = await startSidecar(modelPath, flags, maxBatch);
      stops.push(() => client.stop());
      sweepClients.push({ name, backend: new SidecarBackend(client, info) });
      described[name] = `our engine (${info.device}, ${info.weights}), ${name === 'sequential' ? 'one row at a time' : `up to ${maxBatch} rows batched, shared prefixes`}`;
    }
    if (peers.includes('llamacpp') && !interrupt.signal.aborted) {
      io.stderr.write('starting the llama.cpp server (llama-cpp-python) on the same GGUF ...\n');
      try {
        const server = await startLlamaCppServer(projectRoot(), modelPath, { threads: flags.peerThreads, contextLength: PEER_CONTEXT },
          (line) => io.stderr.write(`${line}\n`));
        stops.push(() => server.stop());
        sweepClients.push({ name: LLAMACPP_CLIENT, backend: new OpenAiBackend({ url: server.url, model: server.model, concurrency: widest, contextLength: PEER_CONTEXT }),
          settle: () => server.untilIdle() });
        described[LLAMACPP_CLIENT] = server.describe;
      } catch (e) {
        // The peer is extra: the sweep runs without it, and the exit code says the report is short of it.
        io.stderr.write(`mlx-batch: the llama.cpp peer is left out: ${(e as Error).message}\n`);
        described[LLAMACPP_CLIENT] = `left out: ${(e as Error).message.split('\n')[0]}`;
      }
    }

    const total = sweepRunCount(sweep, sweepClients.map((c) => c.name));
    bar = io.stderrIsTTY
      ? new cliProgress.SingleBar({ stream: io.stderr, format: 'minions [{bar}] {value}/{total} runs | {last}', hideCursor: true }, cliProgress.Presets.shades_classic)
      : undefined;
    bar?.start(total, 0, { last: '' });
    try {
      await runSweep(sweepClients, { ...sweep, signal: interrupt.signal }, (run, done) => {
        runs.push(run);
        const line = `${run.client} ${run.mode} ${run.context}x${run.size}: ${run.wall_s.toFixed(1)} s, ${run.tokens_per_s.toFixed(1)} tok/s, accuracy ${(100 * run.accuracy).toFixed(0)}%`;
        if (bar) bar.update(done, { last: line });
        else io.stderr.write(`[${done}/${total}] ${line}\n`);
      });
    } catch (e) {
      failure = (e as Error).message;
    }
  } finally {
    bar?.stop();
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
    interrupt.dispose();
  }

  if (runs.length === 0) {
    // Nothing measured: a report from an earlier sweep in --out stays as it was.
    if (failure) throw new Error(`the sweep stopped before its first run ended: ${failure}`);
    if (!interrupt.interrupted()) throw new Error('the sweep ended with no run');
    io.stderr.write('mlx-batch: interrupted before the first run ended; nothing was written\n');
    return EXIT_INTERRUPTED;
  }
  const report = buildReport({
    command: ['mlx-batch', ...process.argv.slice(2)].join(' '), model: path.basename(modelPath), machine: machineLabel(),
    clients: described, sweep, runs,
  });
  // The figures first: a chart that fails to render must not take them with it.
  fs.writeFileSync(path.join(outDir, 'minions.json'), JSON.stringify(report, null, 2) + '\n');
  const charts: string[] = [];
  try {
    for (const c of chartSpecs(runs, sweep)) {
      const svg = await renderSvg(c.spec);
      fs.writeFileSync(path.join(outDir, `${c.name}.svg`), svg);
      fs.writeFileSync(path.join(outDir, `${c.name}.png`), await svgToPng(svg));
      charts.push(`${c.name}.svg`);
    }
  } catch (e) {
    io.stderr.write(`mlx-batch: the charts could not all be drawn (${(e as Error).message}); the report has the tables\n`);
  }
  fs.writeFileSync(path.join(outDir, 'minions.md'), reportMarkdown(report, charts));
  io.stdout.write(`${report.targets.map((t) => `${t.met === null ? 'not measured' : t.met ? 'met' : 'MISSED'}: ${t.target} (${t.detail})`).join('\n')}\n`);
  io.stdout.write(`wrote ${path.join(outDir, 'minions.md')}, minions.json and ${charts.length} charts\n`);
  if (failure) io.stderr.write(`mlx-batch: the sweep stopped: ${failure}; the report keeps the ${runs.length} runs that ended\n`);
  if (interrupt.interrupted()) return EXIT_INTERRUPTED;
  return !failure && runs.length === sweepRunCount(sweep, [...clients, ...peers.map(() => LLAMACPP_CLIENT)]) ? EXIT_OK : EXIT_FAILURE;
}

/** The context a peer server is given (servers do not report theirs): the default model's. */
const PEER_CONTEXT = 8192;

export function benchCommand(io: CliIO, done: (code: number) => void): Command {
  const bench = new Command('bench').description('benchmarks that run on the real engine');
  const minions = new Command('minions')
    .description('the seed benchmark: questions about generated documents, packed into one message or one per channel, ' +
      'on our engine one at a time and batched and on an OpenAI-compatible server')
    .option('--clients <list>', `which clients (${CLIENTS.join(', ')}); server starts mlx_lm.server from the project venv unless --server-url is given`, 'sequential,batched,server')
    .option('--peers <list>', 'also run a peer server built here: llamacpp (llama-cpp-python on the same GGUF; built into .venv-llamacpp on first use, minutes)')
    .option('--peer-threads <n>', 'CPU threads of the llama.cpp peer', integerArg('--peer-threads', 1, 256), os.cpus().length)
    .option('--server-url <url>', 'an OpenAI-compatible server for the server client, e.g. http://127.0.0.1:11434/v1')
    .option('--server-model <name>', 'the model name that server serves')
    .option('--sizes <list>', 'batch sizes: questions asked at once', DEFAULT_SWEEP.sizes.join(','))
    .option('--contexts <list>', 'document lengths in sentences', DEFAULT_SWEEP.contexts.join(','))
    .option('--context-sweep-size <n>', 'questions at once in the context-length sweep', integerArg('--context-sweep-size', 1, 256), DEFAULT_SWEEP.contextSweepSize)
    .option('--size-sweep-context <n>', 'sentences of the batch-size sweep\'s document', integerArg('--size-sweep-context', 1, 500), DEFAULT_SWEEP.sizeSweepContext)
    .addOption(new Option('--modes <list>', 'packed (one message, one JSON list) and/or channels (one question per channel)').default('packed,channels'))
    .option('--seed <n>', 'seed of the generated documents', integerArg('--seed', 0), DEFAULT_SWEEP.seed)
    .option('--max-tokens <n>', 'output cap per answer (packed: times the questions), as in the seed', integerArg('--max-tokens', 1), TOKENS_PER_ANSWER)
    .option('--target-repeats <n>', 'runs of the 5× target\'s cell by sequential and batched, back to back, the sweep\'s own included; the target is their median ratio',
      integerArg('--target-repeats', 1, MAX_TARGET_REPEATS), DEFAULT_SWEEP.targetRepeats)
    .option('-o, --out <dir>', 'where minions.md, minions.json and the charts go', 'minions-report');
  addModelOptions(minions);
  minions.action(async (flags: MinionsFlags) => done(await runMinionsBench(flags, io)));
  bench.addCommand(minions);
  return bench;
}
