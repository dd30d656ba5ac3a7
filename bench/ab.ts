// npm run bench:ab -- --b OTHER.node [--a ADDON.node] [--workloads short-1,short-16,same-file-1,same-file]
//                     [--file-tokens 3000] [--max-tokens 64] [--block 4] [--repeats 3] [--check-steps 4]
//                     [--prefill-tokens 3552] [--prefill-repeats 6] [--json FILE]
//
// Two builds of the native addon side by side in one process, on the default
// model's float32 weights: whether their logits are bit-identical, and how
// fast b runs against a. On a shared machine whose speed drifts by tens of
// percent within minutes, separate benchmark runs cannot show a change of a
// few percent. Here each workload's decode alternates blocks of steps between
// the two builds at the same context length, and prefill alternates whole
// prompts, so the drift cancels in each pair's ratio; medians and quartiles
// of those ratios are printed (above 1: b is faster).
//
// Keep the build to compare against before rebuilding, e.g.
//   cp native/build/Release/mlx_batch.node /tmp/before.node
//   (edit, npm run build:native)
//   npm run bench:ab -- --a /tmp/before.node --b native/build/Release/mlx_batch.node
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { loadModelSpec } from '../src/engine/model-config.js';
import { addonPath, createNativeEngine, projectRoot, type NativeEngine } from '../src/engine/native.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { percentile } from '../src/benchmark/minions.js';
import { median, syntheticFile } from './common.js';
import { buildWorkloads, compareDecodeLogits, interleavedDecodeRatios, prefillSeconds, type LogitsAgreement } from './workloads.js';

const ROOT = projectRoot(__dirname);
const DEFAULT_MODEL = path.join(ROOT, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');

interface Ratios { median: number; q1: number; q3: number; pairs: number }

function summarize(ratios: number[]): Ratios {
  return { median: median(ratios), q1: percentile(ratios, 25), q3: percentile(ratios, 75), pairs: ratios.length };
}

/** b's logits against a's, in words. */
function agreement(l: LogitsAgreement): string {
  if (l.differing === 0) return `identical over ${l.steps} steps`;
  const tokens = l.tokens_differ_at !== undefined ? `, tokens from step ${l.tokens_differ_at}` : '';
  return `${l.differing} of ${l.compared} differ, max ${l.max_abs_diff.toExponential(2)}${tokens}`;
}

async function main() {
  const { values } = parseArgs({
    options: {
      a: { type: 'string' },
      b: { type: 'string' },
      workloads: { type: 'string', default: 'short-1,short-16,same-file-1,same-file' },
      'file-tokens': { type: 'string', default: '3000' },
      'max-tokens': { type: 'string', default: '64' },
      block: { type: 'string', default: '4' },
      repeats: { type: 'string', default: '3' },
      'check-steps': { type: 'string', default: '4' },
      'prefill-tokens': { type: 'string', default: '3552' },
      'prefill-repeats': { type: 'string', default: '6' },
      json: { type: 'string' },
    },
  });
  if (!values.b) throw new Error('--b: the addon build to compare (a .node file) is required');
  const files = { a: path.resolve(values.a ?? addonPath()), b: path.resolve(values.b) };
  for (const [side, file] of Object.entries(files)) {
    if (!fs.existsSync(file)) throw new Error(`--${side}: no addon at ${file}`);
    if (!file.endsWith('.node')) throw new Error(`--${side}: ${file} is not a native addon (a .node file)`);
  }
  const maxTokens = Number(values['max-tokens']), block = Number(values.block), repeats = Number(values.repeats);
  const prefillTokens = Number(values['prefill-tokens']), prefillRepeats = Number(values['prefill-repeats']);
  const checkSteps = Number(values['check-steps']);

  const tokenizer = await Tokenizer.fromModel(DEFAULT_MODEL);
  const spec = await loadModelSpec(DEFAULT_MODEL);
  const a = createNativeEngine(files.a), b = createNativeEngine(files.b);
  const options = { weights: 'float32' as const, device: 'cpu' as const, prefixGrouping: true };
  await a.load(spec, options);
  await b.load(spec, options);
  const report: {
    a: string; b: string; date: string;
    workloads: Array<{ name: string; description: string; logits: LogitsAgreement; b_over_a: Ratios }>;
    prefill?: { tokens: number; b_over_a: Ratios };
  } = { a: files.a, b: files.b, date: new Date().toISOString(), workloads: [] };
  try {
    for (const w of buildWorkloads(tokenizer, values.workloads!.split(',').filter(Boolean), Number(values['file-tokens']))) {
      const logits = await compareDecodeLogits(a, b, w, checkSteps);
      const ratios: number[] = [];
      // a over b per pair of blocks; reported as b over a.
      for (let r = 0; r < repeats; r++) ratios.push(...(await interleavedDecodeRatios({ engine: a, w }, { engine: b, w }, maxTokens, block)).map((x) => 1 / x));
      report.workloads.push({ name: w.name, description: w.description, logits, b_over_a: summarize(ratios) });
      console.error(`[ab] ${w.name}: decode b/a ${median(ratios).toFixed(3)}; logits ${agreement(logits)}`);
    }
    if (prefillTokens > 0 && prefillRepeats > 0) {
      const prompt = Int32Array.from(tokenizer.encode(syntheticFile(11, prefillTokens, tokenizer).text).slice(0, prefillTokens));
      const ratios: number[] = [];
      for (let r = 0, id = 0; r < prefillRepeats; r++) {
        // Which build goes first alternates.
        const [first, second] = r % 2 === 0 ? [a, b] : [b, a];
        const t1 = await prefillSeconds(first, prompt, id++), t2 = await prefillSeconds(second, prompt, id++);
        ratios.push(r % 2 === 0 ? t1 / t2 : t2 / t1);
      }
      report.prefill = { tokens: prompt.length, b_over_a: summarize(ratios) };
      console.error(`[ab] prefill of ${prompt.length} tokens: b/a ${median(ratios).toFixed(3)}`);
    }
  } finally {
    await a.close();
    await b.close();
  }

  const x = (r: Ratios) => `${r.median.toFixed(3)} | ${r.q1.toFixed(3)}–${r.q3.toFixed(3)} | ${r.pairs}`;
  console.log([
    `a: ${files.a}`, `b: ${files.b}`, '',
    '| workload | logits (b against a) | speed b / a, median | quartiles | pairs |', '|---|---|---:|---:|---:|',
    ...report.workloads.map((w) => `| ${w.name}: ${w.description} | ${agreement(w.logits)} | ${x(w.b_over_a)} |`),
    ...(report.prefill ? [`| prefill of ${report.prefill.tokens} tokens | | ${x(report.prefill.b_over_a)} |`] : []),
  ].join('\n'));
  if (values.json) fs.writeFileSync(values.json, JSON.stringify(report, null, 2) + '\n');
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
