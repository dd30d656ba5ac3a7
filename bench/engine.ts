// npm run bench:engine [-- --batch-sizes 1,2,4,8,16,32 --max-tokens 128 --repeats 3
//                         --workloads same-file,same-file-1,four-files,mixed,short-16 --file-tokens 3000
//                         --workload-max-tokens 64 --peers mlx-lm,llamacpp --peer-repeats 1
//                         --peer-workloads same-file-1,four-files,short-16 --llamacpp-file-tokens 3500
//                         --prefill-tokens 3552]
//
// Aggregate decode throughput of our engine against mlx-lm's batch_generate on
// the same weights (the default GGUF dequantized to float32 for both) in the
// same run, alternating engines per batch size so machine noise hits both.
// Writes bench/results/engine.{json,md}.
//
// Then the minion workloads (bench/workloads.ts), prefix grouping on against
// off in the same run, and mlx-lm on the same prompts with --peers mlx-lm
// (--peer-workloads, --peer-repeats: mlx-lm pads every row to the longest and
// shares nothing, so the same-file and mixed workloads prefill 16 × 3,000
// tokens; here one such run had not ended after 38 minutes).
// Writes bench/results/engine-workloads.{json,md}. An empty --batch-sizes or
// --workloads skips that part.
//
// With --peers llamacpp: the same-file workload (16 questions about one
// --llamacpp-file-tokens file) on our engine against llama.cpp's single stream
// (llama-cpp-python, built into .venv-llamacpp on first use) on the same GGUF,
// alternating per repeat. Writes bench/results/engine-llamacpp.{json,md}.
//
// With --prefill-tokens N: prefill of one N-token prompt, ours (in the
// scheduler's 256-token calls) against mlx-lm on the same float32 weights,
// alternating per repeat. Writes bench/results/engine-prefill.{json,md}.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { loadModelSpec } from '../src/engine/model-config.js';
import { createNativeEngine, projectRoot, type NativeEngine } from '../src/engine/native.js';
import { PREFILL_CALL_TOKENS } from '../src/engine/scheduler.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { percentile } from '../src/benchmark/minions.js';
import { cpuLabel } from '../src/benchmark/report.js';
import { blasDescription, median, syntheticFile } from './common.js';
import { pairedBatchRuns, promptsForBatch, questionPrompts, sweepOnce, type SweepRun } from './decode-sweep.js';
import { LLAMA_CPP_PYTHON_VERSION, llamaCppOnce, llamaCppPython, type LlamaCppRun } from './llamacpp.js';
import { buildWorkloads, interleavedDecodeRatios, mlxLmWorkload, prefillSeconds, runWorkload, summarize, type PeerRun, type WorkloadRun } from './workloads.js';

const ROOT = projectRoot(__dirname);
const PYTHON = path.join(ROOT, '.venv', 'bin', 'python');
const DEFAULT_MODEL = path.join(ROOT, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
const F32_FOLDER = path.join(ROOT, 'models', 'SmolLM2-135M-Instruct-f32-mlx');
const RESULTS = path.join(ROOT, 'bench', 'results');
// Decode steps per block of the interleaved same-file ratio (see interleavedDecodeRatios).
const INTERLEAVE_STEPS = 4;

function mlxLm(promptFile: string, batch: number, maxTokens: number, repeats: number, extraArgs: string[] = []): SweepRun[] {
  const out = execFileSync(PYTHON, [path.join(ROOT, 'bench', 'python', 'mlx_lm_batch.py'), '--model', F32_FOLDER,
    '--batch-sizes', String(batch), '--max-tokens', String(maxTokens), '--repeats', String(repeats),
    '--prompt-file', promptFile, ...extraArgs], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 << 20 });
  const parsed = JSON.parse(out);
  return parsed.results[0].repeats as SweepRun[];
}

async function main() {
  const { values } = parseArgs({
    options: {
      'batch-sizes': { type: 'string', default: '1,2,4,8,16,32' },
      'max-tokens': { type: 'string', default: '128' },
      repeats: { type: 'string', default: '3' },
      workloads: { type: 'string', default: 'same-file,same-file-1,four-files,mixed,short-16' },
      'file-tokens': { type: 'string', default: '3000' },
      'workload-max-tokens': { type: 'string', default: '64' },
      peers: { type: 'string', default: '' },
      'peer-repeats': { type: 'string' },
      'peer-workloads': { type: 'string' },
      'llamacpp-file-tokens': { type: 'string', default: '3500' },
      'llamacpp-threads': { type: 'string', default: String(os.cpus().length) },
      'prefill-tokens': { type: 'string', default: '0' },
    },
  });
  const batches = values['batch-sizes']!.split(',').filter(Boolean).map(Number);
  const workloadNames = values.workloads!.split(',').filter(Boolean);
  const peers = values.peers!.split(',').filter(Boolean);
  for (const p of peers) if (p !== 'mlx-lm' && p !== 'llamacpp') throw new Error(`unknown peer '${p}' (mlx-lm, llamacpp)`);
  // Build the peer before anything is timed: the build takes both cores for minutes.
  const llamaPython = peers.includes('llamacpp') ? llamaCppPython(ROOT, console.error) : undefined;
  const maxTokens = Number(values['max-tokens']);
  const repeats = Number(values.repeats);

  console.error('[bench] preparing float32 weights for mlx-lm');
  execFileSync(PYTHON, [path.join(ROOT, 'scripts', 'gguf_to_mlx.py'), DEFAULT_MODEL, F32_FOLDER], { stdio: 'inherit' });

  const tokenizer = await Tokenizer.fromModel(DEFAULT_MODEL);
  const prompts = questionPrompts(tokenizer);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-bench-'));
  const engine = createNativeEngine();
  try {
    const spec = await loadModelSpec(DEFAULT_MODEL);
    const loaded = await engine.load(spec, { weights: 'float32', device: 'auto' });

    const rows = [];
    if (batches.length > 0) await sweepOnce(engine, prompts.slice(0, 2), 8); // warm-up
    for (const batch of batches) {
      const batchPrompts = promptsForBatch(prompts, batch);
      const promptFile = path.join(tmp, `prompts-${batch}.json`);
      fs.writeFileSync(promptFile, JSON.stringify(batchPrompts));
      const { runs: ours, scaling } = await pairedBatchRuns(engine, batchPrompts, maxTokens, repeats);
      console.error(`[bench] ours    batch ${batch}: ${ours.map((r) => r.decode_tps.toFixed(1)).join(', ')} tok/s; over 1 row beside it: ${scaling.map((x) => x.toFixed(2)).join(', ')}`);
      const theirs = mlxLm(promptFile, batch, maxTokens, repeats);
      console.error(`[bench] mlx-lm  batch ${batch}: ${theirs.map((r) => r.decode_tps.toFixed(1)).join(', ')} tok/s`);
      rows.push({
        batch,
        scaling_vs_batch1: median(scaling),
        ours: { runs: ours, decode_tps: median(ours.map((r) => r.decode_tps)), prefill_tps: median(ours.map((r) => r.prefill_tps)), peak_memory_bytes: median(ours.map((r) => r.peak_memory_bytes)) },
        mlx_lm: { runs: theirs, decode_tps: median(theirs.map((r) => r.decode_tps)), prefill_tps: median(theirs.map((r) => r.prefill_tps)), peak_memory_bytes: median(theirs.map((r) => r.peak_memory_bytes)) },
      });
    }
    if (workloadNames.length > 0) {
      await benchWorkloads(engine, spec, tokenizer, workloadNames, Number(values['file-tokens']),
        Number(values['workload-max-tokens']), repeats, Number(values['peer-repeats'] ?? repeats), peers.filter((p) => p === 'mlx-lm'),
        values['peer-workloads']?.split(',').filter(Boolean) ?? workloadNames, tmp);
    }
    if (Number(values['prefill-tokens']) > 0) await benchPrefill(engine, tokenizer, Number(values['prefill-tokens']), repeats, tmp);
    if (llamaPython) {
      await benchLlamaCpp(engine, tokenizer, llamaPython, Number(values['llamacpp-file-tokens']),
        Number(values['workload-max-tokens']), repeats, Number(values['llamacpp-threads']), tmp);
    }
    if (batches.length === 0) return;
    const report = {
      date: new Date().toISOString(),
      command: `npm run bench:engine -- --batch-sizes ${batches.join(',')} --max-tokens ${maxTokens} --repeats ${repeats}`,
      machine: { cpus: os.cpus().length, cpu: cpuLabel(), memory_bytes: os.totalmem(), platform: `${process.platform}-${process.arch}` },
      device: loaded.device, weights: loaded.weights, blas: blasDescription(ROOT),
      model: path.relative(ROOT, DEFAULT_MODEL), mlx_lm_model: path.relative(ROOT, F32_FOLDER),
      max_tokens: maxTokens, repeats,
      rows: rows.map((r) => ({ ...r, ratio: r.ours.decode_tps / r.mlx_lm.decode_tps })),
    };
    fs.mkdirSync(RESULTS, { recursive: true });
    fs.writeFileSync(path.join(RESULTS, 'engine.json'), JSON.stringify(report, null, 2) + '\n');
    const mib = (b: number) => (b / 2 ** 20).toFixed(0);
    const md = [
      '# Engine benchmark: aggregate decode throughput',
      '',
      `${report.command}, ${report.date.slice(0, 10)}: ${report.machine.cpus} × ${report.machine.cpu}, ${report.device}, ${report.blas}.`,
      `Default model (SmolLM2-135M-Instruct): mlx-lm on float32 weights; ours on the same float32 weights, computed from the GGUF's own Q4_1/Q8_0 tensors on CPUs with AVX2 (decode steps of up to 32 rows; with AVX-512 every step, and the projections' float32 copies are then not loaded); greedy; every row decodes ${maxTokens} tokens; medians of ${repeats} repeats. "vs batch 1": each repeat's batch run over a one-row run made right after it, the median of those ratios.`,
      '',
      '| batch | ours tok/s | mlx-lm tok/s | ours / mlx-lm | ours vs batch 1 | ours peak MiB | mlx-lm peak MiB |',
      '|---:|---:|---:|---:|---:|---:|---:|',
      ...report.rows.map((r) => `| ${r.batch} | ${r.ours.decode_tps.toFixed(1)} | ${r.mlx_lm.decode_tps.toFixed(1)} | ${r.ratio.toFixed(2)}× | ${r.scaling_vs_batch1.toFixed(1)}× | ${mib(r.ours.peak_memory_bytes)} | ${mib(r.mlx_lm.peak_memory_bytes)} |`),
      '',
    ].join('\n');
    fs.writeFileSync(path.join(RESULTS, 'engine.md'), md);
    console.log(md);
  } finally {
    await engine.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

async function benchWorkloads(grouped: NativeEngine, spec: Awaited<ReturnType<typeof loadModelSpec>>, tokenizer: Tokenizer,
  names: string[], fileTokens: number, maxTokens: number, repeats: number, peerRepeats: number, peers: string[], peerWorkloads: string[], tmp: string) {
  const copied = createNativeEngine();
  // A second grouped engine holds the one-row side of the interleaved same-file ratio.
  const beside = createNativeEngine();
  try {
    const loaded = await copied.load(spec, { weights: 'float32', device: 'auto', prefixGrouping: false });
    const workloads = buildWorkloads(tokenizer, names, fileTokens);
    type Summary = ReturnType<typeof summarize>;
    interface PeerSummary { runs: PeerRun[]; decode_tps: number; wall_s: number; peak_memory_bytes: number }
    const results: Array<{ name: string; description: string; rows: number; prompt_tokens: number; grouped: Summary; copied: Summary; mlx_lm?: PeerSummary }> = [];
    // The 16-row over 1-row ratio of the same file, and the short batch over
    // the mixed one, from runs made seconds apart: measured a workload apart,
    // they followed the machine's drift (mixed lengths: 0.92x in one run, 1.30x in the next).
    const single = workloads.find((w) => w.name === 'same-file-1');
    const short = workloads.find((w) => w.name === 'short-16');
    const sameFilePairs: number[] = [], mixedPairs: number[] = [], sameFileInterleaved: number[] = [], mixedInterleaved: number[] = [];
    const interleave = (single && workloads.some((w) => w.name === 'same-file')) || (short && workloads.some((w) => w.name === 'mixed'));
    if (interleave) await beside.load(spec, { weights: 'float32', device: 'auto', prefixGrouping: true });
    for (const w of workloads) {
      const runs: Record<'grouped' | 'copied', WorkloadRun[]> = { grouped: [], copied: [] };
      for (let r = 0; r < repeats; r++) {
        // Alternate which path goes first, so drifting machine load hits both.
        const order = r % 2 === 0 ? (['grouped', 'copied'] as const) : (['copied', 'grouped'] as const);
        for (const path_ of order) runs[path_].push(await runWorkload(path_ === 'grouped' ? grouped : copied, w, maxTokens));
        if (w.name === 'same-file' && single) {
          sameFilePairs.push(runs.grouped[runs.grouped.length - 1].decode_tps / (await runWorkload(grouped, single, maxTokens)).decode_tps);
          sameFileInterleaved.push(...await interleavedDecodeRatios({ engine: grouped, w }, { engine: beside, w: single }, maxTokens, INTERLEAVE_STEPS));
        }
        if (w.name === 'mixed' && short) {
          mixedPairs.push((await runWorkload(grouped, short, maxTokens)).decode_tps / runs.grouped[runs.grouped.length - 1].decode_tps);
          // As for the same file: whole runs seconds apart swung this ratio from 0.99 to 1.49 in one bench run.
          mixedInterleaved.push(...await interleavedDecodeRatios({ engine: beside, w: short }, { engine: grouped, w }, maxTokens, INTERLEAVE_STEPS));
        }
      }
      if (sameFilePairs.length && w.name === 'same-file') {
        console.error(`[bench] same-file over same-file-1 beside it: ${sameFilePairs.map((v) => v.toFixed(2)).join(', ')}; ` +
          `interleaved every ${INTERLEAVE_STEPS} steps: median ${median(sameFileInterleaved).toFixed(2)} of ${sameFileInterleaved.length} pairs ` +
          `(quartiles ${percentile(sameFileInterleaved, 25).toFixed(2)}..${percentile(sameFileInterleaved, 75).toFixed(2)})`);
      }
      if (mixedPairs.length && w.name === 'mixed') {
        console.error(`[bench] short-16 beside it over mixed: ${mixedPairs.map((v) => v.toFixed(2)).join(', ')}; ` +
          `interleaved every ${INTERLEAVE_STEPS} steps: median ${median(mixedInterleaved).toFixed(2)} of ${mixedInterleaved.length} pairs ` +
          `(quartiles ${percentile(mixedInterleaved, 25).toFixed(2)}..${percentile(mixedInterleaved, 75).toFixed(2)})`);
      }
      const summary = { grouped: summarize(runs.grouped), copied: summarize(runs.copied) };
      console.error(`[bench] ${w.name}: grouped ${summary.grouped.decode_tps.toFixed(1)} tok/s, ${summary.grouped.wall_s.toFixed(1)} s; ` +
        `copied ${summary.copied.decode_tps.toFixed(1)} tok/s, ${summary.copied.wall_s.toFixed(1)} s`);
      let mlxLm: PeerSummary | undefined;
      if (peers.includes('mlx-lm') && peerWorkloads.includes(w.name)) {
        const theirs = mlxLmWorkload(PYTHON, path.join(ROOT, 'bench', 'python', 'mlx_lm_batch.py'), F32_FOLDER, w, maxTokens, peerRepeats, tmp);
        mlxLm = { runs: theirs, decode_tps: median(theirs.map((r) => r.decode_tps)), wall_s: median(theirs.map((r) => r.wall_s)), peak_memory_bytes: median(theirs.map((r) => r.peak_memory_bytes)) };
        console.error(`[bench] ${w.name}: mlx-lm ${mlxLm.decode_tps.toFixed(1)} tok/s, ${mlxLm.wall_s.toFixed(1)} s`);
      }
      results.push({
        name: w.name, description: w.description, rows: w.rows.length,
        prompt_tokens: w.rows.reduce((n, r) => n + r.prompt.length, 0), ...summary, ...(mlxLm ? { mlx_lm: mlxLm } : {}),
      });
    }
    const by = (n: string) => results.find((r) => r.name === n);
    const ratio = (a?: number, b?: number) => (a !== undefined && b !== undefined ? a / b : null);
    const targets = {
      same_file_decode_16_vs_1: sameFileInterleaved.length ? median(sameFileInterleaved)
        : sameFilePairs.length ? median(sameFilePairs) : ratio(by('same-file')?.grouped.decode_tps, by('same-file-1')?.grouped.decode_tps),
      same_file_decode_16_vs_1_run_pairs: sameFilePairs.length ? median(sameFilePairs) : null,
      same_file_peak_kv_16_vs_1: ratio(by('same-file')?.grouped.peak_kv_bytes, by('same-file-1')?.grouped.peak_kv_bytes),
      mixed_vs_short_decode: mixedInterleaved.length ? median(mixedInterleaved)
        : mixedPairs.length ? median(mixedPairs) : ratio(by('short-16')?.grouped.decode_tps, by('mixed')?.grouped.decode_tps),
      mixed_vs_short_decode_run_pairs: mixedPairs.length ? median(mixedPairs) : null,
    };
    const report = {
      date: new Date().toISOString(),
      command: `npm run bench:engine -- ${process.argv.slice(2).map((a) => (a === '' ? "''" : a)).join(' ')}`.trim(),
      machine: { cpus: os.cpus().length, cpu: cpuLabel(), platform: `${process.platform}-${process.arch}` },
      device: loaded.device, weights: loaded.weights, blas: blasDescription(ROOT), max_tokens: maxTokens, repeats,
      ...(peers.length ? { peer_repeats: peerRepeats } : {}), workloads: results, targets,
    };
    fs.mkdirSync(RESULTS, { recursive: true });
    fs.writeFileSync(path.join(RESULTS, 'engine-workloads.json'), JSON.stringify(report, null, 2) + '\n');
    const mib = (b: number) => (b / 2 ** 20).toFixed(0);
    const x = (v: number | null) => (v === null ? '-' : `${v.toFixed(2)}×`);
    const md = [
      '# Engine benchmark: the minion workloads',
      '',
      `${report.command}, ${report.date.slice(0, 10)}: ${report.machine.cpus} × ${report.machine.cpu}, ${report.device}, ${report.blas}.`,
      `Default model as float32; greedy; every row decodes ${maxTokens} tokens; medians of ${repeats} repeats${peers.length ? ` (mlx-lm: ${peerRepeats})` : ''}. ` +
        '"grouped": rows sharing a file read its KV in place, once per step; "copied": each row copies the file\'s KV (the path before grouping). ' +
        'Both prefill a shared file once. Wall time is end to end (prefill and decode); decode tok/s counts every row\'s tokens over the decode phase; peak KV is the most KV and saved-prefix bytes held at once.',
      '',
      `| workload | rows | grouped decode tok/s | copied decode tok/s | grouped wall s | copied wall s | grouped peak KV MiB | copied peak KV MiB${peers.length ? ' | mlx-lm decode tok/s | mlx-lm wall s | mlx-lm peak MiB (all MLX memory)' : ''} |`,
      `|---|---:|---:|---:|---:|---:|---:|---:${peers.length ? '|---:|---:|---:' : ''}|`,
      ...results.map((r) => `| ${r.description} | ${r.rows} | ${r.grouped.decode_tps.toFixed(1)} | ${r.copied.decode_tps.toFixed(1)} | ` +
        `${r.grouped.wall_s.toFixed(1)} | ${r.copied.wall_s.toFixed(1)} | ${mib(r.grouped.peak_kv_bytes)} | ${mib(r.copied.peak_kv_bytes)}` +
        `${peers.length ? ` | ${r.mlx_lm?.decode_tps.toFixed(1) ?? '-'} | ${r.mlx_lm?.wall_s.toFixed(1) ?? '-'} | ${r.mlx_lm ? mib(r.mlx_lm.peak_memory_bytes) : '-'}` : ''} |`),
      '',
      sameFileInterleaved.length
        ? `Same file, decode at 16 rows against 1 row (grouped; two engines hold the 16 rows and the 1 row, decode alternates ${INTERLEAVE_STEPS} steps of each, median over ${sameFileInterleaved.length} pairs of blocks, quartiles ${percentile(sameFileInterleaved, 25).toFixed(2)}..${percentile(sameFileInterleaved, 75).toFixed(2)}): ${x(targets.same_file_decode_16_vs_1)} (target ≥ 8×). Whole runs, each 16-row run over a 1-row run right after it: ${sameFilePairs.map((v) => `${v.toFixed(2)}×`).join(', ')}.`
        : `Same file, decode at 16 rows against 1 row (grouped${sameFilePairs.length ? ', each 16-row run over a 1-row run right after it, median' : ''}): ${x(targets.same_file_decode_16_vs_1)} (target ≥ 8×).`,
      `Same file, peak KV at 16 rows against 1 row (grouped): ${x(targets.same_file_peak_kv_16_vs_1)} (target ≤ 1.5×).`,
      mixedInterleaved.length
        ? `Mixed lengths: sixteen short prompts decode ${x(targets.mixed_vs_short_decode)} as fast as the mixed batch (two engines hold the two batches, decode alternates ${INTERLEAVE_STEPS} steps of each, median over ${mixedInterleaved.length} pairs of blocks, quartiles ${percentile(mixedInterleaved, 25).toFixed(2)}..${percentile(mixedInterleaved, 75).toFixed(2)}) (target ≤ 1.25×). Whole runs, each mixed run against a short run right after it: ${mixedPairs.map((v) => `${v.toFixed(2)}×`).join(', ')}.`
        : `Mixed lengths: sixteen short prompts decode ${x(targets.mixed_vs_short_decode)} as fast as the mixed batch${mixedPairs.length ? ' (each mixed run against a short run right after it, median)' : ''} (target ≤ 1.25×).`,
      '',
    ].join('\n');
    fs.writeFileSync(path.join(RESULTS, 'engine-workloads.md'), md);
    console.log(md);
  } finally {
    await copied.close();
    await beside.close();
  }
}

/**
 * Prefill of one long prompt, ours against mlx-lm on the same float32 weights,
 * alternating per repeat. Ours reads it the way the scheduler does, in calls of
 * PREFILL_CALL_TOKENS; mlx-lm's batch_generate prefills in its own steps.
 */
async function benchPrefill(engine: NativeEngine, tokenizer: Tokenizer, tokens: number, repeats: number, tmp: string) {
  const prompt = tokenizer.encode(syntheticFile(11, tokens, tokenizer).text).slice(0, tokens);
  const promptFile = path.join(tmp, 'prefill.json');
  fs.writeFileSync(promptFile, JSON.stringify([prompt]));
  const oursOnePrefill = async (id: number) => prompt.length / await prefillSeconds(engine, Int32Array.from(prompt), id);
  await oursOnePrefill(repeats); // warm-up
  const ours: number[] = [];
  const theirs: number[] = [];
  for (let r = 0; r < repeats; r++) {
    // Its warm-up on a cut prompt: a full one would double its time.
    const mlx = () => theirs.push(mlxLm(promptFile, 1, 1, 1, ['--warm-up-prompt-tokens', '256'])[0].prefill_tps);
    if (r % 2 === 1) mlx();
    ours.push(await oursOnePrefill(r));
    if (r % 2 === 0) mlx();
    console.error(`[bench] prefill, repeat ${r + 1}: ours ${ours.at(-1)!.toFixed(1)} tok/s, mlx-lm ${theirs.at(-1)!.toFixed(1)} tok/s`);
  }
  const report = {
    date: new Date().toISOString(),
    command: `npm run bench:engine -- --batch-sizes '' --workloads '' --prefill-tokens ${tokens} --repeats ${repeats}`,
    machine: { cpus: os.cpus().length, cpu: cpuLabel(), platform: `${process.platform}-${process.arch}` },
    blas: blasDescription(ROOT), prompt_tokens: prompt.length, chunk_tokens: PREFILL_CALL_TOKENS,
    ours_tps: ours, mlx_lm_tps: theirs, ours_median: median(ours), mlx_lm_median: median(theirs),
  };
  const ratio = report.ours_median / report.mlx_lm_median;
  fs.mkdirSync(RESULTS, { recursive: true });
  fs.writeFileSync(path.join(RESULTS, 'engine-prefill.json'), JSON.stringify({ ...report, ratio }, null, 2) + '\n');
  const md = [
    '# Engine benchmark: prefill of a long prompt',
    '',
    `${report.command}, ${report.date.slice(0, 10)}: ${report.machine.cpus} × ${report.machine.cpu}, ${report.blas}.`,
    `One ${prompt.length}-token prompt (a generated source file), the default model's float32 weights for both; ours in ${PREFILL_CALL_TOKENS}-token calls with the cache sized for the prompt when it is added, as the scheduler does, mlx-lm's batch_generate in its own prefill steps; alternating per repeat, medians of ${repeats}.`,
    '',
    '| engine | prefill tok/s (median) | runs |',
    '|---|---:|---|',
    `| ours | ${report.ours_median.toFixed(1)} | ${ours.map((x) => x.toFixed(1)).join(', ')} |`,
    `| mlx-lm | ${report.mlx_lm_median.toFixed(1)} | ${theirs.map((x) => x.toFixed(1)).join(', ')} |`,
    '',
    `Ours prefills at ${ratio.toFixed(2)}× mlx-lm's rate (target: ≥ 2× the rate when prefill was first measured, when ours and mlx-lm both ran at about 89 tok/s).`,
    '',
  ].join('\n');
  fs.writeFileSync(path.join(RESULTS, 'engine-prefill.md'), md);
  console.log(md);
}

/** The same-file workload on our engine (batched, grouped) against llama.cpp's single stream. */
async function benchLlamaCpp(engine: NativeEngine, tokenizer: Tokenizer, python: string, fileTokens: number,
  maxTokens: number, repeats: number, threads: number, tmp: string) {
  const [w] = buildWorkloads(tokenizer, ['same-file'], fileTokens);
  const promptFile = path.join(tmp, 'llamacpp-same-file.json');
  fs.writeFileSync(promptFile, JSON.stringify(w.rows.map((r) => Array.from(r.prompt))));
  const ours: WorkloadRun[] = [];
  const theirs: LlamaCppRun[] = [];
  let version = LLAMA_CPP_PYTHON_VERSION;
  for (let r = 0; r < repeats; r++) {
    const llama = () => {
      const once = llamaCppOnce(python, ROOT, DEFAULT_MODEL, promptFile, maxTokens, threads);
      theirs.push(once.run);
      version = once.version;
    };
    if (r % 2 === 1) llama();
    ours.push(await runWorkload(engine, w, maxTokens));
    if (r % 2 === 0) llama();
    console.error(`[bench] llama.cpp comparison, repeat ${r + 1}: ours ${ours.at(-1)!.wall_s.toFixed(1)} s, ` +
      `llama.cpp ${theirs.at(-1)!.wall_s.toFixed(1)} s`);
  }
  const sum = (runs: Array<{ wall_s: number; decode_tps: number; prefill_s: number; prefilled_tokens: number }>) => ({
    wall_s: median(runs.map((r) => r.wall_s)),
    decode_tps: median(runs.map((r) => r.decode_tps)),
    prefill_s: median(runs.map((r) => r.prefill_s)),
    prefilled_tokens: median(runs.map((r) => r.prefilled_tokens)),
  });
  const report = {
    date: new Date().toISOString(),
    command: `npm run bench:engine -- ${process.argv.slice(2).map((a) => (a === '' ? "''" : a)).join(' ')}`.trim(),
    machine: { cpus: os.cpus().length, cpu: cpuLabel(), platform: `${process.platform}-${process.arch}` },
    workload: w.description, rows: w.rows.length, prompt_tokens: w.rows[0].prompt.length, max_tokens: maxTokens, repeats,
    ours: { ...sum(ours), runs: ours },
    llama_cpp: { ...sum(theirs), runs: theirs, llama_cpp_python: version, threads, stream: 'single' },
  };
  const ratio = report.llama_cpp.wall_s / report.ours.wall_s;
  fs.mkdirSync(RESULTS, { recursive: true });
  fs.writeFileSync(path.join(RESULTS, 'engine-llamacpp.json'), JSON.stringify({ ...report, llama_cpp_wall_over_ours: ratio }, null, 2) + '\n');
  const line = (name: string, r: ReturnType<typeof sum>) =>
    `| ${name} | ${r.wall_s.toFixed(1)} | ${r.prefill_s.toFixed(1)} | ${r.prefilled_tokens} | ${r.decode_tps.toFixed(1)} |`;
  const md = [
    '# Engine benchmark: against llama.cpp',
    '',
    `${report.command}, ${report.date.slice(0, 10)}: ${report.machine.cpus} × ${report.machine.cpu}.`,
    `${w.description} (prompts of ${report.prompt_tokens} tokens), ${maxTokens} tokens per answer (EOS ignored by both), greedy; medians of ${repeats} repeats, alternating which goes first.`,
    `Ours: the engine batched, all ${w.rows.length} rows at once, the file prefilled once and shared (float32 weights from the default GGUF). ` +
      `llama.cpp: llama-cpp-python ${version} on the same GGUF (Q4_1 weights, float16 KV), ${threads} threads, a single stream answering the questions one after another, ` +
      'reusing the file\'s KV from the previous question (its own prefix match).',
    '',
    '| engine | wall s | prefill s | prefilled tokens | decode tok/s |',
    '|---|---:|---:|---:|---:|',
    line('ours, batched', report.ours),
    line('llama.cpp, single stream', report.llama_cpp),
    '',
    `llama.cpp takes ${ratio.toFixed(2)}× our wall time (target: ours ends sooner, > 1×).`,
    '',
  ].join('\n');
  fs.writeFileSync(path.join(RESULTS, 'engine-llamacpp.md'), md);
  console.log(md);
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
