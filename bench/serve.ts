// npm run bench:serve [-- --concurrency 1,4,8,16,32 --max-tokens 64 --repeats 3
//                        --shared-questions 16 --file-tokens 2000 --shared-repeats 1 --shared-mlx-lm
//                        --workloads same-file,four-files,mixed --workload-file-tokens 3000
//                        --workload-max-tokens 64 --workload-repeats 3 --workload-mlx-lm-repeats 1
//                        --no-mlx-lm --no-concurrency --no-shared --verbose]
//
// Two HTTP workloads, measured the way a client sees them (streaming SSE over
// 127.0.0.1; the load generator is this process, the servers are their own):
//
// 1. Concurrent chat clients: N clients (1, 4, 8, 16, 32) each send one chat
//    request at once; aggregate generated tok/s (completion tokens from each
//    stream's usage / wall time of the level) and p50 / p95 time to first
//    token. Against our server (`mlx-batch serve`, default GGUF, float32 on
//    CPU, max batch 32) and against mlx_lm.server (same weights: the float32
//    MLX folder scripts/gguf_to_mlx.py writes from the default GGUF) in the
//    same run, alternating which goes first per level. Same chat messages,
//    greedy, max_tokens fixed. mlx_lm.server has no "ignore EOS" switch, so its
//    requests carry logit_bias -100 on the EOS tokens (it then always runs to
//    max_tokens); ours has no logit_bias, so prompts ask for long answers and
//    tok/s counts the tokens each server actually generated (its reported
//    usage), with the share of requests that ran to max_tokens shown.
//    Prompts carry a per-level, per-repeat tag at the start of the system
//    message, so neither server's prompt cache reuses more than the first
//    few template tokens across levels.
// 2. Shared prefix: one ~2,000-token synthetic source file x 16 questions, sent
//    together, on our server with prefix reuse on (default) and off
//    (--prefix-cache 0), and with --shared-mlx-lm on mlx_lm.server (its own prompt cache): end-to-end
//    wall time, and prompt / prefilled / cached token counts from each
//    response's usage and (ours) from /metrics. Each repeat uses a different
//    file, so nothing is reused across repeats.
// 3. The minion workloads of bench:engine (bench/workloads.ts) as HTTP
//    requests, all sent at once: 16 questions about one 3,000-token file; 4
//    files x 8 questions; one 3,000-token prompt among fifteen 100-token ones.
//    Ours (prefix reuse and grouping on) against mlx_lm.server (its prompt
//    cache), both greedy with EOS allowed (same weights, so the same answers
//    and about the same token counts). Wall time, TTFT p50 / p95, decode tok/s
//    (tokens after each request's first / the time from the first first token
//    to the last response), and ours' peak KV + prefix bytes from /metrics
//    (polled). mlx_lm.server prefills every row of a file itself, minutes per
//    run here, so --workload-mlx-lm-repeats defaults to 1, and
//    --workload-mlx-lm names the workloads it runs (default: all).
//
// Medians over --repeats (--shared-repeats for workload 2, default 1: with
// reuse off it prefills 16 x 2,000 tokens, minutes on a 2-core CPU). Writes bench/results/serve.{json,md} (1, 2) and serve-workloads.{json,md} (3).
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { projectRoot } from '../src/engine/native.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { blasDescription, freePort, median, syntheticFile } from './common.js';
import { workloadMessages } from './workloads.js';
import { stopChild } from '../src/benchmark/mlx-lm-server.js';
import { cpuLabel } from '../src/benchmark/report.js';

const ROOT = projectRoot(__dirname);
const PYTHON = path.join(ROOT, '.venv', 'bin', 'python');
const DEFAULT_MODEL = path.join(ROOT, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
const F32_FOLDER = path.join(ROOT, 'models', 'SmolLM2-135M-Instruct-f32-mlx');
const RESULTS = path.join(ROOT, 'bench', 'results');

const { values: flags } = parseArgs({
  options: {
    concurrency: { type: 'string', default: '1,4,8,16,32' },
    'max-tokens': { type: 'string', default: '64' },
    repeats: { type: 'string', default: '3' },
    'shared-questions': { type: 'string', default: '16' },
    'file-tokens': { type: 'string', default: '2000' },
    'shared-max-tokens': { type: 'string', default: '32' },
    /** The shared-prefix runs are the slow part (16 x 2,000 prompt tokens prefilled with reuse off). */
    'shared-repeats': { type: 'string', default: '1' },
    /** Also run the shared-prefix workload on mlx_lm.server (its prompt cache). */
    'shared-mlx-lm': { type: 'boolean', default: false },
    'no-mlx-lm': { type: 'boolean', default: false },
    'no-concurrency': { type: 'boolean', default: false },
    'no-shared': { type: 'boolean', default: false },
    workloads: { type: 'string', default: 'same-file,four-files,mixed' },
    'workload-file-tokens': { type: 'string', default: '3000' },
    'workload-max-tokens': { type: 'string', default: '64' },
    'workload-repeats': { type: 'string', default: '3' },
    'workload-mlx-lm-repeats': { type: 'string', default: '1' },
    /** Which workloads mlx_lm.server runs (default: all of --workloads). */
    'workload-mlx-lm': { type: 'string' },
    verbose: { type: 'boolean', default: false },
  },
});
const LEVELS = flags.concurrency.split(',').map(Number);
const MAX_TOKENS = Number(flags['max-tokens']);
const REPEATS = Number(flags.repeats);
const SHARED_QUESTIONS = Number(flags['shared-questions']);
const FILE_TOKENS = Number(flags['file-tokens']);
const SHARED_MAX_TOKENS = Number(flags['shared-max-tokens']);
const WITH_MLX_LM = !flags['no-mlx-lm'];
const SHARED_REPEATS = Number(flags['shared-repeats']);
const WORKLOADS = flags.workloads.split(',').filter(Boolean);
const WORKLOAD_MAX_TOKENS = Number(flags['workload-max-tokens']);

const log = (line: string) => process.stderr.write(`${line}\n`);

// ---------------------------------------------------------------------------
// Servers

interface Server {
  name: string;
  /** http://127.0.0.1:PORT */
  url: string;
  model: string;
  token?: string;
  /** Extra fields for every chat request (mlx-lm: logit_bias against EOS). */
  extra: Record<string, unknown>;
  stop(): Promise<void>;
}


/** Our server: `mlx-batch serve` from source in its own process; resolves once it prints its URL. */
async function startOurs(name: string, extraArgs: string[] = []): Promise<Server> {
  const token = crypto.randomBytes(16).toString('hex');
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', path.join(ROOT, 'src', 'cli.ts'), 'serve', '--port', '0', '--batch', '32', '--model', DEFAULT_MODEL, ...extraArgs],
    { cwd: ROOT, env: { ...process.env, MLX_BATCH_TOKEN: token }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stderr!.on('data', (c) => {
    err += c;
    if (flags.verbose) process.stderr.write(`[${name}] ${c}`);
  });
  const ready = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name}: not ready in 180 s\n${out}\n${err}`)), 180_000);
    child.stdout!.on('data', (c) => {
      out += c;
      if (out.includes('Ctrl-C to stop')) {
        clearTimeout(timer);
        resolve(out);
      }
    });
    child.once('exit', (code) => reject(new Error(`${name}: exited (${code}) before it was ready\n${err}`)));
  });
  const url = /at (http:\/\/127\.0\.0\.1:\d+)\/v1/.exec(ready)![1];
  const model = /^model (\S+)/m.exec(ready)![1];
  log(`${name}: ${ready.split('\n')[0]}`);
  return { name, url, model, token, extra: {}, stop: () => stopChild(child) };
}

/** EOS token ids of the float32 MLX folder (config.json eos_token_id, tokenizer_config eos_token). */
function eosIds(folder: string): number[] {
  const config = JSON.parse(fs.readFileSync(path.join(folder, 'config.json'), 'utf8'));
  const ids = new Set<number>([config.eos_token_id].flat().filter((x) => typeof x === 'number'));
  const tc = JSON.parse(fs.readFileSync(path.join(folder, 'tokenizer_config.json'), 'utf8'));
  const tj = JSON.parse(fs.readFileSync(path.join(folder, 'tokenizer.json'), 'utf8'));
  const eosName = typeof tc.eos_token === 'string' ? tc.eos_token : tc.eos_token?.content;
  for (const t of tj.added_tokens ?? []) if (t.content === eosName) ids.add(t.id);
  return [...ids];
}

async function startMlxLm(): Promise<Server> {
  if (!fs.existsSync(path.join(F32_FOLDER, 'config.json'))) {
    log(`writing ${F32_FOLDER} from the default GGUF ...`);
    execFileSync(PYTHON, [path.join(ROOT, 'scripts', 'gguf_to_mlx.py'), DEFAULT_MODEL, F32_FOLDER], { stdio: 'inherit' });
  }
  const port = await freePort();
  const child = spawn(
    PYTHON,
    ['-m', 'mlx_lm.server', '--model', F32_FOLDER, '--host', '127.0.0.1', '--port', String(port), '--log-level', 'WARNING', '--decode-concurrency', '32'],
    { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  child.stderr!.on('data', (c) => {
    err += c;
    if (flags.verbose) process.stderr.write(`[mlx-lm] ${c}`);
  });
  const url = `http://127.0.0.1:${port}`;
  const t0 = Date.now();
  for (;;) {
    if (child.exitCode !== null) throw new Error(`mlx_lm.server exited (${child.exitCode})\n${err}`);
    if (Date.now() - t0 > 180_000) {
      await stopChild(child);
      throw new Error(`mlx_lm.server not ready in 180 s\n${err}`);
    }
    try {
      if ((await fetch(`${url}/v1/models`)).ok) break;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  const bias = Object.fromEntries(eosIds(F32_FOLDER).map((id) => [String(id), -100]));
  log(`mlx-lm: mlx_lm.server on ${url} (EOS ids ${Object.keys(bias).join(', ')} biased -100)`);
  return { name: 'mlx-lm', url, model: 'default_model', extra: { logit_bias: bias }, stop: () => stopChild(child) };
}

// ---------------------------------------------------------------------------
// Client

interface Message {
  role: string;
  content: string;
}

interface StreamResult {
  ttftS: number;
  totalS: number;
  completionTokens: number;
  promptTokens: number;
  cachedTokens: number;
  finishReason: string;
  text: string;
}

async function streamChat(server: Server, messages: Message[], maxTokens: number, extra: Record<string, unknown> = server.extra): Promise<StreamResult> {
  const t0 = performance.now();
  const body = JSON.stringify({
    model: server.model,
    messages,
    max_tokens: maxTokens,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
    ...extra,
  });
  // node:http rather than fetch: undici gives up on response headers after 300 s,
  // and a request queued behind minutes of prefill may legitimately wait that long.
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.request(`${server.url}/v1/chat/completions`, {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(body),
        ...(server.token ? { Authorization: `Bearer ${server.token}` } : {}),
      },
    });
    req.on('response', resolve);
    req.on('error', reject);
    req.end(body);
  });
  if (res.statusCode !== 200) {
    let text = '';
    for await (const c of res) text += c;
    throw new Error(`${server.name}: HTTP ${res.statusCode}: ${text}`);
  }
  const decoder = new TextDecoder();
  let buffer = '';
  let ttft: number | undefined;
  let text = '';
  let finishReason = '';
  let usage: { completion_tokens: number; prompt_tokens: number; prompt_tokens_details?: { cached_tokens?: number } } | undefined;
  for await (const bytes of res as AsyncIterable<Buffer>) {
    buffer += decoder.decode(bytes, { stream: true });
    let cut: number;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, '');
      for (const line of event.split(/\r?\n/)) {
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]') continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(`${server.name}: stream error: ${JSON.stringify(chunk.error)}`);
        for (const c of chunk.choices ?? []) {
          const piece = c.delta?.content;
          if (piece) {
            ttft ??= (performance.now() - t0) / 1000;
            text += piece;
          }
          if (c.finish_reason) finishReason = c.finish_reason;
        }
        if (chunk.usage) usage = chunk.usage;
      }
    }
  }
  const totalS = (performance.now() - t0) / 1000;
  if (!usage) throw new Error(`${server.name}: no usage in the stream`);
  return {
    ttftS: ttft ?? totalS,
    totalS,
    completionTokens: usage.completion_tokens,
    promptTokens: usage.prompt_tokens,
    cachedTokens: usage.prompt_tokens_details?.cached_tokens ?? 0,
    finishReason,
    text,
  };
}

async function scrapeOurs(server: Server): Promise<Map<string, number>> {
  const res = await fetch(`${server.url}/metrics`, { headers: { Authorization: `Bearer ${server.token}` } });
  const values = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m) values.set(m[1], Number(m[2]));
  }
  return values;
}

// ---------------------------------------------------------------------------
// Statistics

/** Nearest-rank percentile. */
const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)];
};

// ---------------------------------------------------------------------------
// Workload 1: concurrent clients

const TOPICS = [
  'how a hash map works', 'why the sky is blue', 'the history of the printing press', 'how vaccines train the immune system',
  'what recursion is in programming', 'how photosynthesis works', 'the causes of the French Revolution', 'how a compiler turns code into a program',
  'the water cycle', 'how public-key cryptography works', 'the life cycle of a star', 'what makes a good code review',
  'how the internet routes packets', 'the rules of chess', 'how a bicycle stays upright', 'what version control is for',
  'how bees make honey', 'the theory of plate tectonics', 'how an electric motor works', 'what a binary search tree is',
  'the plot of Hamlet', 'how to brew a good cup of tea', 'why cats purr', 'how a database index speeds up queries',
  'the invention of the telephone', 'how rainbows form', 'what inflation is in economics', 'how a refrigerator keeps food cold',
  'the structure of DNA', 'how airplanes fly', 'what unit tests are good for', 'how the moon causes tides',
];

function levelMessages(level: number, repeat: number): Message[][] {
  return Array.from({ length: level }, (_, i) => [
    { role: 'system', content: `[run ${repeat}-${level}-${i}] You are a helpful assistant who answers at length.` },
    { role: 'user', content: `Write a detailed, multi-paragraph explanation of ${TOPICS[i % TOPICS.length]}.` },
  ]);
}

interface LevelRun {
  tokS: number;
  ttftP50: number;
  ttftP95: number;
  wallS: number;
  tokens: number;
  atMaxTokens: number;
  requests: number;
}

async function runLevel(server: Server, level: number, repeat: number): Promise<LevelRun> {
  const messages = levelMessages(level, repeat);
  const t0 = performance.now();
  const results = await Promise.all(messages.map((m) => streamChat(server, m, MAX_TOKENS)));
  const wallS = (performance.now() - t0) / 1000;
  const tokens = results.reduce((s, r) => s + r.completionTokens, 0);
  return {
    tokS: tokens / wallS,
    ttftP50: percentile(results.map((r) => r.ttftS), 50),
    ttftP95: percentile(results.map((r) => r.ttftS), 95),
    wallS,
    tokens,
    atMaxTokens: results.filter((r) => r.completionTokens >= MAX_TOKENS).length,
    requests: results.length,
  };
}

// ---------------------------------------------------------------------------
// Workload 2: one file, many questions

function sharedMessages(file: string, functions: string[], n: number): Message[][] {
  const questions = Array.from({ length: n }, (_, i) => {
    const f = functions[(i * 7) % functions.length];
    return [`What does the function ${f} return?`, `Which table does ${f} read from?`, `What is the default limit of ${f}?`, `Summarize what ${f} does in one sentence.`][i % 4];
  });
  return questions.map((q) => [
    { role: 'system', content: 'You answer questions about the source file the user gives. Be brief.' },
    { role: 'user', content: `File: service.ts\n\`\`\`ts\n${file}\n\`\`\`\n\nQuestion: ${q}` },
  ]);
}

interface SharedRun {
  wallS: number;
  promptTokens: number;
  cachedTokens: number;
  /** From /metrics (ours only): prompt tokens actually run through prefill. */
  prefillTokens?: number;
  generatedTokens: number;
  ttftP50: number;
}

async function runShared(server: Server, messages: Message[][], ours: boolean): Promise<SharedRun> {
  const before = ours ? await scrapeOurs(server) : undefined;
  const t0 = performance.now();
  // Greedy answers; EOS allowed on every server (they are short answers).
  const results = await Promise.all(messages.map((m) => streamChat(server, m, SHARED_MAX_TOKENS, {})));
  const wallS = (performance.now() - t0) / 1000;
  const after = ours ? await scrapeOurs(server) : undefined;
  const diff = (k: string) => (after!.get(k) ?? 0) - (before!.get(k) ?? 0);
  return {
    wallS,
    promptTokens: results.reduce((s, r) => s + r.promptTokens, 0),
    cachedTokens: results.reduce((s, r) => s + r.cachedTokens, 0),
    ...(ours ? { prefillTokens: diff('mlx_batch_prefill_tokens_total') } : {}),
    generatedTokens: results.reduce((s, r) => s + r.completionTokens, 0),
    ttftP50: percentile(results.map((r) => r.ttftS), 50),
  };
}

// ---------------------------------------------------------------------------
// Workload 3: the minion workloads

interface WorkloadHttpRun {
  wallS: number;
  ttftP50: number;
  ttftP95: number;
  decodeTps: number;
  generatedTokens: number;
  promptTokens: number;
  cachedTokens: number;
  /** Ours only: the most KV + saved-prefix bytes seen while it ran (/metrics, polled every 250 ms). */
  peakKvBytes?: number;
  /** Ours only: decode tokens / decode seconds inside the engine over the run (/metrics). */
  engineDecodeTps?: number;
}

async function runWorkloadHttp(server: Server, messages: Message[][], ours: boolean): Promise<WorkloadHttpRun> {
  const before = ours ? await scrapeOurs(server) : undefined;
  let peakKv = 0;
  let polling = ours;
  const poll = (async () => {
    while (polling) {
      const m = await scrapeOurs(server);
      peakKv = Math.max(peakKv, (m.get('mlx_batch_kv_cache_bytes') ?? 0) + (m.get('mlx_batch_prefix_cache_bytes') ?? 0));
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  const t0 = performance.now();
  const results = await Promise.all(messages.map((m) => streamChat(server, m, WORKLOAD_MAX_TOKENS, {})));
  const wallS = (performance.now() - t0) / 1000;
  polling = false;
  await poll;
  const after = ours ? await scrapeOurs(server) : undefined;
  const diff = (k: string) => (after!.get(k) ?? 0) - (before!.get(k) ?? 0);
  const firstToken = Math.min(...results.map((r) => r.ttftS));
  const lastEnd = Math.max(...results.map((r) => r.totalS));
  const afterFirst = results.reduce((n, r) => n + Math.max(0, r.completionTokens - 1), 0);
  return {
    wallS,
    ttftP50: percentile(results.map((r) => r.ttftS), 50),
    ttftP95: percentile(results.map((r) => r.ttftS), 95),
    decodeTps: afterFirst / (lastEnd - firstToken),
    generatedTokens: results.reduce((n, r) => n + r.completionTokens, 0),
    promptTokens: results.reduce((n, r) => n + r.promptTokens, 0),
    cachedTokens: results.reduce((n, r) => n + r.cachedTokens, 0),
    ...(ours ? { peakKvBytes: peakKv, engineDecodeTps: diff('mlx_batch_decode_tokens_total') / diff('mlx_batch_decode_seconds_total') } : {}),
  };
}

/** Field-wise medians of runs. */
function medianRun(runs: WorkloadHttpRun[]): WorkloadHttpRun {
  const keys = Object.keys(runs[0]) as Array<keyof WorkloadHttpRun>;
  return Object.fromEntries(keys.map((k) => [k, median(runs.map((r) => r[k] as number))])) as unknown as WorkloadHttpRun;
}

// ---------------------------------------------------------------------------

async function main() {
  const started = Date.now();
  const date = new Date().toISOString().slice(0, 10);
  const command = `npm run bench:serve -- ${process.argv.slice(2).join(' ')}`.trim();
  log(`${command}: levels ${LEVELS.join(',')}, max_tokens ${MAX_TOKENS}, ${REPEATS} repeats`);

  const servers: Server[] = [];
  const stopAll = async () => {
    for (const s of servers.splice(0)) await s.stop();
  };
  process.once('SIGINT', () => void stopAll().then(() => process.exit(130)));

  const concurrency: Record<string, Record<number, LevelRun[]>> = {};
  const shared: Record<string, SharedRun[]> = {};
  const workloads: Array<{ name: string; description: string; runs: Record<string, WorkloadHttpRun[]> }> = [];
  let fileTokens = 0;
  try {
    const ours = await startOurs('ours');
    servers.push(ours);
    const mlx = WITH_MLX_LM ? await startMlxLm() : undefined;
    if (mlx) servers.push(mlx);
    const contenders = [ours, ...(mlx ? [mlx] : [])];
    for (const s of contenders) {
      concurrency[s.name] = {};
      // warm-up (first-call costs: graph compile, allocations)
      await streamChat(s, [{ role: 'user', content: 'Say hello.' }], 8);
    }

    if (!flags['no-concurrency']) {
      for (let r = 0; r < REPEATS; r++) {
        for (const [li, level] of LEVELS.entries()) {
          const order = (r + li) % 2 === 0 ? contenders : [...contenders].reverse();
          for (const s of order) {
            const run = await runLevel(s, level, r);
            (concurrency[s.name][level] ??= []).push(run);
            log(
              `repeat ${r + 1}/${REPEATS} c=${level} ${s.name}: ${run.tokS.toFixed(1)} tok/s, ttft p50 ${run.ttftP50.toFixed(2)} s ` +
                `p95 ${run.ttftP95.toFixed(2)} s, ${run.tokens} tokens (${run.atMaxTokens}/${run.requests} at max_tokens), ${run.wallS.toFixed(1)} s`,
            );
          }
        }
      }
    }

    if (!flags['no-shared']) {
      if (mlx && !flags['shared-mlx-lm']) {
        await mlx.stop();
        servers.splice(servers.indexOf(mlx), 1);
      }
      const tokenizer = await Tokenizer.fromModel(DEFAULT_MODEL);
      const noPrefix = await startOurs('ours-no-prefix', ['--prefix-cache', '0']);
      servers.push(noPrefix);
      await streamChat(noPrefix, [{ role: 'user', content: 'Say hello.' }], 8);
      const variants: Array<[string, Server, boolean]> = [
        ['ours, prefix reuse on', ours, true],
        ['ours, prefix reuse off', noPrefix, true],
        ...(mlx && flags['shared-mlx-lm'] ? [['mlx-lm (its prompt cache)', mlx, false] as [string, Server, boolean]] : []),
      ];
      for (let r = 0; r < SHARED_REPEATS; r++) {
        const file = syntheticFile(1000 + r, FILE_TOKENS, tokenizer);
        fileTokens = file.tokens;
        const messages = sharedMessages(file.text, file.functions, SHARED_QUESTIONS);
        const order = r % 2 === 0 ? variants : [...variants].reverse();
        for (const [label, server, isOurs] of order) {
          const run = await runShared(server, messages, isOurs);
          (shared[label] ??= []).push(run);
          log(
            `repeat ${r + 1}/${SHARED_REPEATS} shared ${label}: ${run.wallS.toFixed(1)} s, prompt ${run.promptTokens}, cached ${run.cachedTokens}` +
              `${run.prefillTokens !== undefined ? `, prefilled ${run.prefillTokens}` : ''}, generated ${run.generatedTokens}`,
          );
        }
      }
    }

    if (WORKLOADS.length > 0) {
      const tokenizer = await Tokenizer.fromModel(DEFAULT_MODEL);
      const mlxForWorkloads = WITH_MLX_LM ? (servers.find((s) => s.name === 'mlx-lm') ?? (await startMlxLm())) : undefined;
      if (mlxForWorkloads && !servers.includes(mlxForWorkloads)) {
        servers.push(mlxForWorkloads);
        await streamChat(mlxForWorkloads, [{ role: 'user', content: 'Say hello.' }], 8);
      }
      const repeats = Number(flags['workload-repeats']);
      const mlxRepeats = Number(flags['workload-mlx-lm-repeats']);
      for (const w of workloadMessages(tokenizer, WORKLOADS, Number(flags['workload-file-tokens']))) {
        const entry = { name: w.name, description: w.description, runs: {} as Record<string, WorkloadHttpRun[]> };
        workloads.push(entry);
        for (let r = 0; r < Math.max(repeats, mlxForWorkloads ? mlxRepeats : 0); r++) {
          // A tag per repeat at the start keeps either server's prompt cache from reusing an earlier repeat.
          const messages = w.messages.map((m) => [{ role: 'user', content: `[run ${r}] ${m.content}` }]);
          const turn: Array<[Server, boolean]> = [];
          if (r < repeats) turn.push([ours, true]);
          const mlxRuns = flags['workload-mlx-lm'] === undefined || flags['workload-mlx-lm'].split(',').includes(w.name);
          if (mlxForWorkloads && mlxRuns && r < mlxRepeats) turn.push([mlxForWorkloads, false]);
          for (const [server, isOurs] of r % 2 === 0 ? turn : turn.reverse()) {
            const run = await runWorkloadHttp(server, messages, isOurs);
            (entry.runs[server.name] ??= []).push(run);
            log(`repeat ${r + 1} ${w.name} ${server.name}: ${run.wallS.toFixed(1)} s, TTFT p50 ${run.ttftP50.toFixed(2)} s, ` +
              `decode ${run.decodeTps.toFixed(1)} tok/s, ${run.generatedTokens} tokens, cached ${run.cachedTokens}/${run.promptTokens}`);
          }
        }
      }
    }
  } finally {
    await stopAll();
  }

  // ------------------------------------------------------------------ report
  const med = (runs: LevelRun[] | undefined, key: keyof LevelRun) => (runs && runs.length ? median(runs.map((x) => x[key])) : NaN);
  const json = {
    command,
    date,
    machine: `${os.cpus().length} × ${cpuLabel()}, ${blasDescription(ROOT)}`,
    settings: { levels: LEVELS, maxTokens: MAX_TOKENS, repeats: REPEATS, sharedRepeats: SHARED_REPEATS, sharedQuestions: SHARED_QUESTIONS, fileTokens, sharedMaxTokens: SHARED_MAX_TOKENS },
    concurrency: Object.fromEntries(
      Object.entries(concurrency).map(([name, levels]) => [
        name,
        Object.fromEntries(
          Object.entries(levels).map(([level, runs]) => [
            level,
            {
              median: { tok_s: med(runs, 'tokS'), ttft_p50_s: med(runs, 'ttftP50'), ttft_p95_s: med(runs, 'ttftP95'), wall_s: med(runs, 'wallS') },
              runs,
            },
          ]),
        ),
      ]),
    ),
    shared: Object.fromEntries(
      Object.entries(shared).map(([label, runs]) => [
        label,
        {
          median: {
            wall_s: median(runs.map((x) => x.wallS)),
            ttft_p50_s: median(runs.map((x) => x.ttftP50)),
            ...(runs[0].prefillTokens !== undefined ? { prefill_tokens: median(runs.map((x) => x.prefillTokens!)) } : {}),
            cached_tokens: median(runs.map((x) => x.cachedTokens)),
          },
          runs,
        },
      ]),
    ),
    workloads: workloads.map((w) => ({
      name: w.name,
      description: w.description,
      servers: Object.fromEntries(Object.entries(w.runs).map(([name, runs]) => [name, { median: medianRun(runs), runs }])),
    })),
    totalSeconds: (Date.now() - started) / 1000,
  };
  fs.mkdirSync(RESULTS, { recursive: true });

  const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '–');
  const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '–');
  const md: string[] = [
    '# HTTP serving benchmark',
    '',
    `${command}, ${date}: ${json.machine}; ${((Date.now() - started) / 60000).toFixed(1)} minutes.`,
    '',
    'Default model (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32) on both servers, CPU. Clients stream over 127.0.0.1;',
    `greedy; max_tokens ${MAX_TOKENS}; medians of ${REPEATS} repeats; the servers alternate which goes first per level.`,
    'mlx_lm.server gets logit_bias -100 on EOS so it always reaches max_tokens; ours stops at EOS when the model ends early, so',
    'tok/s is completion tokens actually generated (each server\'s usage) / wall time of the level; "at max": requests that ran to max_tokens (last repeat).',
    '',
  ];
  if (Object.keys(concurrency).length > 0 && !flags['no-concurrency']) {
    const names = Object.keys(concurrency);
    md.push('## Concurrent clients', '');
    md.push(
      `| clients | ${names.map((n) => `${n} tok/s | ${n} TTFT p50 / p95 s | ${n} at max`).join(' | ')}${names.length > 1 ? ' | ours / mlx-lm tok/s' : ''} |`,
      `|---:|${names.map(() => '---:|---:|---:').join('|')}${names.length > 1 ? '|---:' : ''}|`,
    );
    for (const level of LEVELS) {
      const cells = names.map((n) => {
        const runs = concurrency[n][level];
        const last = runs?.at(-1);
        return `${f1(med(runs, 'tokS'))} | ${f2(med(runs, 'ttftP50'))} / ${f2(med(runs, 'ttftP95'))} | ${last ? `${last.atMaxTokens}/${last.requests}` : '–'}`;
      });
      const ratio = names.length > 1 ? ` | ${f2(med(concurrency.ours[level], 'tokS') / med(concurrency['mlx-lm'][level], 'tokS'))}×` : '';
      md.push(`| ${level} | ${cells.join(' | ')}${ratio} |`);
    }
    md.push('');
  }
  if (Object.keys(shared).length > 0) {
    md.push(
      '## Shared prefix: one file, many questions',
      '',
      `${SHARED_QUESTIONS} questions about one synthetic source file of ${fileTokens} tokens, sent together; greedy, max_tokens ${SHARED_MAX_TOKENS}, EOS allowed; ` +
        `medians of ${SHARED_REPEATS} repeat${SHARED_REPEATS === 1 ? '' : 's'} (a new file each, alternating which variant goes first).`,
      'Prompt tokens and cached tokens are summed over the responses\' usage; prefilled tokens come from our /metrics (mlx-lm reports no such counter).',
      '',
      '| server | wall s | TTFT p50 s | prompt tokens | cached tokens | prefilled tokens | generated tokens |',
      '|---|---:|---:|---:|---:|---:|---:|',
    );
    for (const [label, runs] of Object.entries(shared)) {
      const m = (k: keyof SharedRun) => median(runs.map((x) => (x[k] as number | undefined) ?? NaN));
      md.push(
        `| ${label} | ${f1(m('wallS'))} | ${f2(m('ttftP50'))} | ${m('promptTokens')} | ${m('cachedTokens')} | ${runs[0].prefillTokens !== undefined ? m('prefillTokens') : '–'} | ${m('generatedTokens')} |`,
      );
    }
    md.push('');
  }
  if (!flags['no-concurrency'] || !flags['no-shared']) {
    fs.writeFileSync(path.join(RESULTS, 'serve.json'), JSON.stringify({ ...json, workloads: undefined }, null, 2) + '\n');
    fs.writeFileSync(path.join(RESULTS, 'serve.md'), md.join('\n'));
  }
  if (workloads.length > 0) {
    const wmd = [
      '# HTTP serving benchmark: the minion workloads',
      '',
      `${command}, ${date}: ${json.machine}.`,
      '',
      `The workloads of bench:engine as chat requests, all sent at once; greedy, max_tokens ${WORKLOAD_MAX_TOKENS}, EOS allowed on both servers. ` +
        `Ours: medians of ${flags['workload-repeats']} repeats; mlx_lm.server: ${flags['workload-mlx-lm-repeats']} (it prefills every request's file)` +
          `${flags['workload-mlx-lm'] !== undefined ? `, on ${flags['workload-mlx-lm']} only` : ''}. ` +
        'Decode tok/s: tokens after each request\'s first / (last response end − first first token). Peak KV (ours): KV + saved-prefix bytes polled from /metrics.',
      '',
      '| workload | server | wall s | TTFT p50 / p95 s | decode tok/s | generated tokens | cached / prompt tokens | peak KV MiB |',
      '|---|---|---:|---:|---:|---:|---:|---:|',
    ];
    for (const w of json.workloads) {
      for (const [name, { median: m }] of Object.entries(w.servers)) {
        wmd.push(`| ${w.description} | ${name} | ${f1(m.wallS)} | ${f2(m.ttftP50)} / ${f2(m.ttftP95)} | ${f1(m.decodeTps)} | ${m.generatedTokens} | ` +
          `${m.cachedTokens} / ${m.promptTokens} | ${m.peakKvBytes !== undefined ? (m.peakKvBytes / 2 ** 20).toFixed(0) : '–'} |`);
      }
      const o = w.servers.ours?.median;
      const t = w.servers['mlx-lm']?.median;
      if (o && t) wmd.push(`| | ours / mlx-lm | ${f2(t.wallS / o.wallS)}× sooner | ${f2(t.ttftP50 / o.ttftP50)}× sooner | ${f2(o.decodeTps / t.decodeTps)}× | | | |`);
    }
    wmd.push('');
    fs.writeFileSync(path.join(RESULTS, 'serve-workloads.md'), wmd.join('\n'));
    fs.writeFileSync(path.join(RESULTS, 'serve-workloads.json'), JSON.stringify({ command, date, machine: json.machine, workloads: json.workloads }, null, 2) + '\n');
  }
  log(`wrote the results under ${RESULTS} in ${((Date.now() - started) / 60000).toFixed(1)} minutes`);
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
