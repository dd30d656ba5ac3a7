// npm run bench:ask [-- --questions 16 --file-tokens 2000 --max-tokens 64 --repeats 1]
//
// The ask pipeline on its own workload: N questions about one synthetic
// source file, through the sidecar, with the chunk's prefix shared (batch N)
// against the same N jobs one at a time (--batch 1), in the same run,
// alternating which goes first per repeat. Reports wall time, prompt tokens
// against prefilled ones, decode tok/s (the engine's decode steps) and the
// pipeline's own time as a share of wall time. Writes bench/results/ask.{json,md}.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { SidecarBackend } from '../src/ask/backends/sidecar.js';
import { runAsk } from '../src/ask/pipeline.js';
import type { AskReport } from '../src/ask/report.js';
import { SidecarClient } from '../src/engine/client.js';
import { projectRoot } from '../src/engine/native.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { machineLabel } from '../src/benchmark/report.js';
import { blasDescription, median, syntheticFile } from './common.js';

const ROOT = projectRoot(__dirname);
const DEFAULT_MODEL = path.join(ROOT, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
const RESULTS = path.join(ROOT, 'bench', 'results');

const { values: flags } = parseArgs({
  options: {
    questions: { type: 'string', default: '16' },
    'file-tokens': { type: 'string', default: '2000' },
    'max-tokens': { type: 'string', default: '64' },
    repeats: { type: 'string', default: '1' },
  },
});
const QUESTIONS = Number(flags.questions);
const FILE_TOKENS = Number(flags['file-tokens']);
const MAX_TOKENS = Number(flags['max-tokens']);
const REPEATS = Number(flags.repeats);
const log = (line: string) => process.stderr.write(`${line}\n`);

interface ModeRun {
  wallSeconds: number;
  promptTokens: number;
  prefilledTokens: number;
  generatedTokens: number;
  decodeTokensPerSecond: number;
  pipelineSeconds: number;
  states: AskReport['totals']['states'];
}

function questionsFor(functions: string[]): string[] {
  return Array.from({ length: QUESTIONS }, (_, i) => {
    const f = functions[(i * 7) % functions.length];
    return [`What does the function ${f} return?`, `Which table does ${f} read from?`, `What is the default limit of ${f}?`,
      `What does ${f} do with rows whose amount is small?`][i % 4];
  });
}

async function runMode(batch: number, text: string, questions: string[]): Promise<ModeRun> {
  const client = new SidecarClient({ modelPath: DEFAULT_MODEL, maxBatch: batch }, { sidecarPath: path.join(ROOT, 'dist', 'sidecar.js') });
  try {
    const backend = new SidecarBackend(client, await client.start());
    const before = await client.metrics();
    const report = await runAsk(backend, { questions, sources: [{ path: 'service.ts', text }], maxTokens: MAX_TOKENS });
    const after = await client.metrics();
    const decodeTokens = after.decodeTokens - before.decodeTokens;
    const decodeSeconds = after.decodeSeconds - before.decodeSeconds;
    const t = report.totals;
    return {
      wallSeconds: t.wall_seconds,
      promptTokens: t.prompt_tokens,
      prefilledTokens: after.prefillTokens - before.prefillTokens,
      generatedTokens: t.generated_tokens,
      decodeTokensPerSecond: decodeSeconds > 0 ? decodeTokens / decodeSeconds : 0,
      pipelineSeconds: t.pipeline_seconds,
      states: t.states,
    };
  } finally {
    await client.stop();
  }
}

async function main(): Promise<void> {
  const tokenizer = await Tokenizer.fromModel(DEFAULT_MODEL);
  const runs: Record<'batched' | 'sequential', ModeRun[]> = { batched: [], sequential: [] };
  let fileTokens = 0;
  for (let r = 0; r < REPEATS; r++) {
    // A new file per repeat, so nothing is reused across repeats.
    const file = syntheticFile(1000 + r, FILE_TOKENS, tokenizer);
    fileTokens = file.tokens;
    const questions = questionsFor(file.functions);
    const order: Array<['batched' | 'sequential', number]> = r % 2 === 0 ? [['batched', QUESTIONS], ['sequential', 1]] : [['sequential', 1], ['batched', QUESTIONS]];
    for (const [mode, batch] of order) {
      log(`repeat ${r + 1}/${REPEATS}: ${mode} (batch ${batch}), ${QUESTIONS} questions about a ${file.tokens}-token file ...`);
      const run = await runMode(batch, file.text, questions);
      log(`  wall ${run.wallSeconds.toFixed(1)} s, prompt ${run.promptTokens}, prefilled ${run.prefilledTokens}, decode ${run.decodeTokensPerSecond.toFixed(1)} tok/s, ` +
        `pipeline ${(100 * run.pipelineSeconds / run.wallSeconds).toFixed(2)}% of wall`);
      runs[mode].push(run);
    }
  }
  const med = (mode: 'batched' | 'sequential', f: (r: ModeRun) => number) => median(runs[mode].map(f));
  const row = (mode: 'batched' | 'sequential', batch: number) =>
    `| ${mode} (batch ${batch}) | ${med(mode, (r) => r.wallSeconds).toFixed(1)} | ${med(mode, (r) => r.promptTokens)} | ${med(mode, (r) => r.prefilledTokens)} ` +
    `| ${med(mode, (r) => r.generatedTokens)} | ${med(mode, (r) => r.decodeTokensPerSecond).toFixed(1)} | ${(100 * med(mode, (r) => r.pipelineSeconds / r.wallSeconds)).toFixed(2)}% |`;
  const speedup = med('sequential', (r) => r.wallSeconds) / med('batched', (r) => r.wallSeconds);
  const md = [
    `# ask: ${QUESTIONS} questions about one file (${new Date().toISOString().slice(0, 10)})`,
    '',
    `Command: \`npm run bench:ask -- --questions ${QUESTIONS} --file-tokens ${FILE_TOKENS} --max-tokens ${MAX_TOKENS} --repeats ${REPEATS}\`. ` +
      `A synthetic ${fileTokens}-token source file, the ask pipeline through the sidecar, default model (float32 on CPU, ${blasDescription(ROOT)}), on ${machineLabel()}, ` +
      `greedy, answers up to ${MAX_TOKENS} tokens (retried once at ${2 * MAX_TOKENS} when cut). Medians of ${REPEATS} repeat(s), modes alternating.`,
    '',
    '| mode | wall s | prompt tokens | prefilled tokens | generated tokens | decode tok/s | pipeline share of wall |',
    '|---|---:|---:|---:|---:|---:|---:|',
    row('batched', QUESTIONS),
    row('sequential', 1),
    '',
    `Batched / one at a time, end to end: ${speedup.toFixed(2)}x.`,
    '',
  ].join('\n');
  fs.mkdirSync(RESULTS, { recursive: true });
  fs.writeFileSync(path.join(RESULTS, 'ask.md'), md);
  fs.writeFileSync(path.join(RESULTS, 'ask.json'), `${JSON.stringify({ settings: { QUESTIONS, FILE_TOKENS, MAX_TOKENS, REPEATS, fileTokens }, machine: machineLabel(), runs }, null, 2)}\n`);
  process.stdout.write(md);
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
