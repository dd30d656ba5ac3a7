// npm run bench:gpu [-- --model PATH --weights auto --batch-sizes 1,2,4,8,16,32,64 --max-tokens 64
//                      --repeats 3 --workloads same-file,same-file-1,four-files,mixed,short-16
//                      --file-tokens 3000 --workload-max-tokens 64 --prefill-tokens 3552
//                      --agreement-steps 32 --out bench/results]
//
// The engine on a GPU (MLX's Metal or CUDA backend), where the default GGUF's
// 4- and 8-bit weights stay quantized (--weights auto):
// - agreement with the CPU engine on float32 weights: sixteen short prompts,
//   the GPU fed the CPU's greedy tokens at every step (teacher forcing) so
//   each step's logits compare, then left to pick its own; for the GPU on
//   float32 weights too, which separates the GPU's arithmetic from the
//   quantized weights' and half-precision activations';
// - aggregate decode tok/s by batch size, each repeat beside one row;
// - the minion workloads (bench/workloads.ts), and 16 questions about one
//   file against one question, interleaved in one process;
// - prefill of one long prompt.
// One engine is loaded at a time, except the two the interleaved ratio needs.
// Writes OUT/engine-gpu.{json,md}. `--device cpu` runs it all on the CPU (a smoke test).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { loadModelSpec } from '../src/engine/model-config.js';
import type { ModelSpec } from '../src/engine/model-spec.js';
import { createNativeEngine, projectRoot, type LoadOptions, type LoadedModel, type NativeEngine, type WeightsMode } from '../src/engine/native.js';
import { DEFAULT_SAMPLING } from '../src/engine/scheduler.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { cpuLabel } from '../src/benchmark/report.js';
import { median, syntheticFile } from './common.js';
import { pairedBatchRuns, promptsForBatch, questionPrompts } from './decode-sweep.js';
import { buildWorkloads, interleavedDecodeRatios, prefillSeconds, runWorkload, summarize } from './workloads.js';

const ROOT = projectRoot(__dirname);
const INTERLEAVE_STEPS = 4;

interface Agreement {
  weights: string;
  rows: number;
  /** Positions compared: each row's prefill plus every teacher-forced decode step. */
  positions: number;
  max_abs_diff: number;
  mean_abs_diff: number;
  /** Largest |logit| of the CPU's, for scale. */
  reference_peak: number;
  /** Share of positions whose greedy pick equals the CPU's. */
  top1_agreement: number;
  /** Left to pick its own tokens: rows whose every token equals the CPU's. */
  free_rows_identical: number;
  /** Per row, the first step whose token differs (steps + 1 when none). */
  free_first_difference: number[];
}

interface Reference { first: number[]; prefillLogits: Float32Array[]; tokens: number[][]; logits: Float32Array[][] }

function argmax(xs: Float32Array): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

function rowOf(logits: Float32Array, row: number, vocab: number): Float32Array {
  return logits.subarray(row * vocab, (row + 1) * vocab);
}

/** Prefill every prompt as its own row; first tokens and last-position logits, in prompt order. */
async function prefillAll(engine: NativeEngine, prompts: Int32Array[]) {
  const first: number[] = [];
  const logits: Float32Array[] = [];
  for (const [id, p] of prompts.entries()) {
    await engine.addSequence(id, DEFAULT_SAMPLING, undefined, p.length);
    const r = await engine.prefill(id, p, true, true);
    first.push(r.token!);
    logits.push(r.logits!);
  }
  return { first, logits };
}

/** One decode step's tokens and logits by row id. */
async function step(engine: NativeEngine, inputs?: number[]) {
  const r = await engine.decode({ wantLogits: true, ...(inputs ? { inputs: inputs.map((token, id) => ({ id, token })) } : {}) });
  const vocab = r.logits!.length / r.ids.length;
  const tokens: number[] = [], logits: Float32Array[] = [];
  for (const [i, id] of r.ids.entries()) {
    tokens[id] = r.tokens[i];
    logits[id] = rowOf(r.logits!, i, vocab).slice();
  }
  return { tokens, logits };
}

async function release(engine: NativeEngine, rows: number) {
  for (let id = 0; id < rows; id++) await engine.remove(id);
}

async function referenceRun(engine: NativeEngine, prompts: Int32Array[], steps: number): Promise<Reference> {
  const { first, logits: prefillLogits } = await prefillAll(engine, prompts);
  const tokens: number[][] = [], logits: Float32Array[][] = [];
  for (let s = 0; s < steps; s++) {
    const r = await step(engine);
    tokens.push(r.tokens);
    logits.push(r.logits);
  }
  await release(engine, prompts.length);
  return { first, prefillLogits, tokens, logits };
}

async function agreementWith(engine: NativeEngine, weights: string, prompts: Int32Array[], ref: Reference): Promise<Agreement> {
  let maxDiff = 0, sumDiff = 0, values = 0, peak = 0, same = 0, positions = 0;
  const compare = (got: Float32Array, want: Float32Array) => {
    for (let i = 0; i < want.length; i++) {
      const d = Math.abs(got[i] - want[i]);
      maxDiff = Math.max(maxDiff, Number.isNaN(d) ? Infinity : d);
      sumDiff += d;
      peak = Math.max(peak, Math.abs(want[i]));
    }
    values += want.length;
    positions++;
    if (argmax(got) === argmax(want)) same++;
  };
  const forced = await prefillAll(engine, prompts);
  forced.logits.forEach((l, row) => compare(l, ref.prefillLogits[row]));
  let inputs = ref.first;
  for (const [s, want] of ref.logits.entries()) {
    const r = await step(engine, inputs);
    want.forEach((l, row) => compare(r.logits[row], l));
    inputs = ref.tokens[s];
  }
  await release(engine, prompts.length);

  const free = await prefillAll(engine, prompts);
  const firstDifference = prompts.map((_, row) => (free.first[row] === ref.first[row] ? ref.tokens.length + 1 : 0));
  for (const [s, want] of ref.tokens.entries()) {
    const r = await step(engine);
    want.forEach((t, row) => {
      if (firstDifference[row] > s + 1 && r.tokens[row] !== t) firstDifference[row] = s + 1;
    });
  }
  await release(engine, prompts.length);
  return {
    weights, rows: prompts.length, positions, max_abs_diff: maxDiff, mean_abs_diff: sumDiff / values, reference_peak: peak,
    top1_agreement: same / positions,
    free_rows_identical: firstDifference.filter((d) => d > ref.tokens.length).length,
    free_first_difference: firstDifference,
  };
}

async function loadEngine(spec: ModelSpec, options: LoadOptions): Promise<{ engine: NativeEngine; loaded: LoadedModel; load_s: number }> {
  const engine = createNativeEngine();
  const t0 = performance.now();
  const loaded = await engine.load(spec, options);
  return { engine, loaded, load_s: (performance.now() - t0) / 1000 };
}

async function main() {
  const { values } = parseArgs({
    options: {
      model: { type: 'string', default: path.join(ROOT, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf') },
      device: { type: 'string', default: 'gpu' },
      weights: { type: 'string', default: 'auto' },
      'batch-sizes': { type: 'string', default: '1,2,4,8,16,32,64' },
      'max-tokens': { type: 'string', default: '64' },
      repeats: { type: 'string', default: '3' },
      workloads: { type: 'string', default: 'same-file,same-file-1,four-files,mixed,short-16' },
      'file-tokens': { type: 'string', default: '3000' },
      'workload-max-tokens': { type: 'string', default: '64' },
      'prefill-tokens': { type: 'string', default: '3552' },
      'agreement-steps': { type: 'string', default: '32' },
      out: { type: 'string', default: path.join(ROOT, 'bench', 'results') },
    },
  });
  const device = values.device as 'gpu' | 'cpu';
  if (device !== 'gpu' && device !== 'cpu') throw new Error(`--device is gpu or cpu, not '${device}'`);
  const weights = values.weights as WeightsMode;
  const batches = values['batch-sizes']!.split(',').filter(Boolean).map(Number);
  const workloadNames = values.workloads!.split(',').filter(Boolean);
  const [maxTokens, repeats, fileTokens, workloadMax, prefillTokens, agreementSteps] =
    ['max-tokens', 'repeats', 'file-tokens', 'workload-max-tokens', 'prefill-tokens', 'agreement-steps'].map((k) => Number(values[k as keyof typeof values]));
  const log = (s: string) => console.error(`[bench:gpu] ${s}`);

  const spec = await loadModelSpec(values.model!);
  const tokenizer = await Tokenizer.fromModel(values.model!);
  const prompts = questionPrompts(tokenizer);
  const agreementPrompts = prompts.slice(0, 16).map((p) => Int32Array.from(p));

  // The CPU's float32 logits first, then each GPU engine against them, one engine at a time.
  let reference: Reference | undefined;
  const agreements: Agreement[] = [];
  if (agreementSteps > 0) {
    const cpu = await loadEngine(spec, { weights: 'float32', device: 'cpu' });
    reference = await referenceRun(cpu.engine, agreementPrompts, agreementSteps);
    await cpu.engine.close();
    for (const w of [...new Set<WeightsMode>([weights, 'float32'])]) {
      const other = await loadEngine(spec, { weights: w, device });
      const a = await agreementWith(other.engine, other.loaded.weights, agreementPrompts, reference);
      await other.engine.close();
      log(`agreement, ${device} ${a.weights}: max |Δ| ${a.max_abs_diff.toExponential(2)} (logits up to ${a.reference_peak.toFixed(1)}), ` +
        `greedy picks equal ${(100 * a.top1_agreement).toFixed(1)}%, free-running rows identical ${a.free_rows_identical}/${a.rows}`);
      agreements.push(a);
    }
  }

  const held = await loadEngine(spec, { weights, device });
  const { engine, loaded } = held;
  log(`loaded on ${loaded.device}: ${loaded.weights}, ${(loaded.parameterBytes / 2 ** 20).toFixed(1)} MiB in ${held.load_s.toFixed(2)} s${loaded.weightsNote ? ` (${loaded.weightsNote})` : ''}`);
  const sweep = [];
  for (const batch of batches) {
    const r = await pairedBatchRuns(engine, promptsForBatch(prompts, batch), maxTokens, repeats);
    log(`batch ${batch}: ${r.runs.map((x) => x.decode_tps.toFixed(1)).join(', ')} tok/s; over 1 row beside it ${r.scaling.map((x) => x.toFixed(2)).join(', ')}`);
    sweep.push({ batch, decode_tps: r.decode_tps, scaling_vs_batch1: r.scaling_vs_batch1,
      peak_memory_bytes: median(r.runs.map((x) => x.peak_memory_bytes)), runs: r.runs, scaling: r.scaling });
  }

  const workloads = [];
  for (const w of buildWorkloads(tokenizer, workloadNames, fileTokens)) {
    await runWorkload(engine, w, 4); // warm
    const runs = [];
    for (let r = 0; r < repeats; r++) runs.push(await runWorkload(engine, w, workloadMax));
    const s = summarize(runs);
    log(`${w.name}: decode ${s.decode_tps.toFixed(1)} tok/s, wall ${s.wall_s.toFixed(2)} s`);
    workloads.push({ name: w.name, description: w.description, ...s });
  }
  let sameFile: { ratios: number[]; median: number } | undefined;
  if (workloadNames.includes('same-file') && workloadNames.includes('same-file-1')) {
    const [many, one] = buildWorkloads(tokenizer, ['same-file', 'same-file-1'], fileTokens);
    const beside = await loadEngine(spec, { weights, device });
    const ratios: number[] = [];
    for (let r = 0; r < repeats; r++) {
      ratios.push(...await interleavedDecodeRatios({ engine, w: many }, { engine: beside.engine, w: one }, workloadMax, INTERLEAVE_STEPS));
    }
    await beside.engine.close();
    sameFile = { ratios, median: median(ratios) };
    log(`same file, 16 rows over 1 (interleaved): ${sameFile.median.toFixed(2)}×`);
  }

  let prefill: { tokens: number; seconds: number[]; tokens_per_s: number } | undefined;
  if (prefillTokens > 0) {
    const prompt = Int32Array.from(tokenizer.encode(syntheticFile(11, prefillTokens, tokenizer).text).slice(0, prefillTokens));
    await prefillSeconds(engine, prompt, 0); // warm
    const seconds = [];
    for (let r = 0; r < repeats; r++) seconds.push(await prefillSeconds(engine, prompt, 0));
    prefill = { tokens: prompt.length, seconds, tokens_per_s: prompt.length / median(seconds) };
    log(`prefill of ${prompt.length} tokens: ${prefill.tokens_per_s.toFixed(0)} tok/s`);
  }
  await engine.close();

  const report = {
    date: new Date().toISOString(),
    command: `npm run bench:gpu -- --device ${device} --weights ${weights} --batch-sizes ${batches.join(',')} --max-tokens ${maxTokens} --repeats ${repeats}`,
    machine: { cpus: os.cpus().length, cpu: cpuLabel(), memory_bytes: os.totalmem(), platform: `${process.platform}-${process.arch}`, gpu: process.env.GPU_NAME },
    model: path.basename(values.model!),
    loaded: { ...loaded, load_s: held.load_s },
    agreement: { steps: agreementSteps, results: agreements },
    sweep, workloads, same_file_interleaved: sameFile, prefill,
  };
  fs.mkdirSync(values.out!, { recursive: true });
  fs.writeFileSync(path.join(values.out!, 'engine-gpu.json'), JSON.stringify(report, null, 2) + '\n');
  const mib = (b: number) => (b / 2 ** 20).toFixed(0);
  const md = [
    '# Engine benchmark on a GPU',
    '',
    `${report.command}, ${report.date.slice(0, 10)}: ${report.machine.gpu ?? device}, ${report.machine.cpus} × ${report.machine.cpu}; ` +
      `model ${report.model}, loaded as ${loaded.weights} on ${loaded.device} (${mib(loaded.parameterBytes)} MiB${loaded.weightsNote ? `; ${loaded.weightsNote}` : ''}) in ${held.load_s.toFixed(2)} s.`,
    '',
    ...(agreements.length ? [
      `## Agreement with the CPU engine (float32 weights)`,
      '',
      `Sixteen short prompts. Teacher-forced: each row's prefill and ${agreementSteps} decode steps fed the CPU's greedy tokens, logits compared at every position. Free-running: each engine picks its own tokens for ${agreementSteps} steps.`,
      '',
      '| weights | positions | max abs diff | mean abs diff | largest CPU logit | greedy picks equal | free-running rows identical | first differing step per row |',
      '|---|---:|---:|---:|---:|---:|---:|---|',
      ...agreements.map((a) => `| ${a.weights} | ${a.positions} | ${a.max_abs_diff.toExponential(2)} | ${a.mean_abs_diff.toExponential(2)} | ${a.reference_peak.toFixed(1)} | ${(100 * a.top1_agreement).toFixed(1)}% | ${a.free_rows_identical} / ${a.rows} | ${a.free_first_difference.map((d) => (d > agreementSteps ? '-' : d)).join(' ')} |`),
      '',
    ] : []),
    '## Decode by batch size',
    '',
    `Short chat prompts, every row decoding ${maxTokens} tokens, greedy; medians of ${repeats}. "vs batch 1": each repeat over one row run right after it.`,
    '',
    '| batch | tok/s | vs batch 1 | peak MiB |',
    '|---:|---:|---:|---:|',
    ...sweep.map((r) => `| ${r.batch} | ${r.decode_tps.toFixed(1)} | ${r.scaling_vs_batch1.toFixed(1)}× | ${mib(r.peak_memory_bytes)} |`),
    '',
    ...(workloads.length ? [
      '## Minion workloads',
      '',
      `\`max_tokens\` ${workloadMax}, medians of ${repeats}; files shared as prefixes as the scheduler does.`,
      '',
      '| workload | decode tok/s | wall s | peak KV MiB |',
      '|---|---:|---:|---:|',
      ...workloads.map((w) => `| ${w.name}: ${w.description} | ${w.decode_tps.toFixed(1)} | ${w.wall_s.toFixed(2)} | ${mib(w.peak_kv_bytes)} |`),
      '',
      ...(sameFile ? [`Same file, 16 rows over 1 row, decode interleaved in ${INTERLEAVE_STEPS}-step blocks: **${sameFile.median.toFixed(2)}×** (median of ${sameFile.ratios.length} pairs).`, ''] : []),
    ] : []),
    ...(prefill ? [`## Prefill`, '', `One ${prefill.tokens}-token prompt: **${prefill.tokens_per_s.toFixed(0)} tok/s** (median of ${repeats}: ${prefill.seconds.map((s) => s.toFixed(3)).join(', ')} s).`, ''] : []),
  ].join('\n');
  fs.writeFileSync(path.join(values.out!, 'engine-gpu.md'), md);
  log(`wrote ${path.join(values.out!, 'engine-gpu.md')}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
