// The seed benchmark's report: minions.json (every run, every answer) and
// minions.md (the table, the targets, and the charts beside it).
import fs from 'node:fs';
import os from 'node:os';
import { sweepRuns } from './charts.js';
import { median } from './minions.js';
import type { MinionRun, MinionsReport, SweepOptions, TargetCheck } from './types.js';

export type { MinionsReport, TargetCheck } from './types.js';
export { sweepRuns };

/**
 * "AMD EPYC (family 26, AVX-512)": the CPU model, and on Linux its family and
 * widest vector extension, which decide the engine's CPU kernels (machines
 * that share a model name differ here).
 */
export function cpuLabel(): string {
  const model = os.cpus()[0]?.model ?? 'cpu';
  let info = '';
  try {
    info = fs.readFileSync('/proc/cpuinfo', 'utf8').split('\n\n')[0] ?? '';
  } catch {
    return model;
  }
  const flags = new Set((/^flags\s*:(.*)$/m.exec(info)?.[1] ?? '').trim().split(/\s+/));
  const family = /^cpu family\s*:\s*(\d+)/m.exec(info)?.[1];
  const vector = flags.has('avx512f') ? 'AVX-512' : flags.has('avx2') ? 'AVX2' : undefined;
  const extra = [family && `family ${family}`, vector].filter(Boolean).join(', ');
  return extra ? `${model} (${extra})` : model;
}

/** "2 × AMD EPYC (family 26, AVX-512), linux-x64": what the figures were measured on. */
export function machineLabel(): string {
  return `${os.cpus().length} × ${cpuLabel()}, ${process.platform}-${process.arch}`;
}

/** A report of `runs` so far (the CLI's when the sweep ends, the webview's after every run). */
export function buildReport(o: Pick<MinionsReport, 'command' | 'model' | 'machine' | 'clients' | 'sweep' | 'runs'> & { created?: string }): MinionsReport {
  return { version: 1, created: o.created ?? new Date().toISOString(), command: o.command, model: o.model, machine: o.machine,
    clients: o.clients, sweep: o.sweep, runs: o.runs, targets: checkTargets(o.runs, o.sweep) };
}

const find = (runs: MinionRun[], client: string, mode: string, context: number, size: number, repeat?: number) =>
  runs.find((r) => r.client === client && r.mode === mode && r.context === context && r.size === size && r.repeat === repeat);

/** A run that generated nothing (a server that was down, every request failed) measured nothing: no target counts it. */
const produced = (r: MinionRun | undefined): r is MinionRun => r !== undefined && r.generated_tokens > 0 && r.tokens_per_s > 0;

/** The median of the paired ratios batched / sequential over the target cell's runs (the sweep's and its repeats). */
export function targetRatios(runs: MinionRun[], sweep: Pick<SweepOptions, 'sizes' | 'sizeSweepContext'>) {
  const big = Math.max(...sweep.sizes);
  const pairs: Array<{ sequential: MinionRun; batched: MinionRun; ratio: number }> = [];
  const repeats = [undefined, ...new Set(runs.filter((r) => r.repeat !== undefined).map((r) => r.repeat!))];
  for (const repeat of repeats) {
    const seq = find(runs, 'sequential', 'channels', sweep.sizeSweepContext, big, repeat);
    const bat = find(runs, 'batched', 'channels', sweep.sizeSweepContext, big, repeat);
    if (produced(seq) && produced(bat)) pairs.push({ sequential: seq, batched: bat, ratio: bat.tokens_per_s / seq.tokens_per_s });
  }
  return { size: big, pairs, median: pairs.length === 0 ? undefined : median(pairs.map((p) => p.ratio)) };
}

/**
 * What the answers' lengths allow a batch, decode only: the longest answer
 * takes its own steps, at least one row's step each, so with per-answer
 * lengths n (sum S, longest L) the batch needs at least L one-row steps plus
 * its extra rows' share. `ceiling` is S / L, the speedup if extra rows cost
 * nothing; `rowShare` is the most an extra row may add to a step, as a
 * fraction of one row's step, for a speedup of `goal` (0 or less: out of reach).
 */
export function lengthCeiling(run: Pick<MinionRun, 'requests'>, goal: number) {
  const n = run.requests.map((r) => r.generated_tokens).filter((x) => x > 0);
  if (n.length === 0) return undefined;
  const sum = n.reduce((a, b) => a + b, 0), longest = Math.max(...n);
  // S·a ≥ goal · (L·a + (S − L)·b)  ⇔  b/a ≤ (S − goal·L) / (goal·(S − L)).
  const rowShare = sum === longest ? 0 : (sum - goal * longest) / (goal * (sum - longest));
  return { shortest: Math.min(...n), longest, sum, ceiling: sum / longest, rowShare };
}

function ceilingNote(run: MinionRun, goal: number): string {
  const c = lengthCeiling(run, goal);
  if (!c) return '';
  const need = c.rowShare > 0 ? `${goal}× needs each extra row to add at most 1/${(1 / c.rowShare).toFixed(1)} of one row's step`
    : `${goal}× is out of reach at any speed`;
  return `. Answers ${c.shortest}-${c.longest} tokens, ${c.sum} in all: with extra rows free the batch could be at most ` +
    `${c.ceiling.toFixed(1)}× as fast (its longest answer takes ${c.longest} steps), and ${need}`;
}

/** The issue's targets, each met, missed, or not measured (null), with the figures. */
export function checkTargets(allRuns: MinionRun[], sweep: Omit<SweepOptions, 'signal'>): TargetCheck[] {
  const checks: TargetCheck[] = [];
  const target = targetRatios(allRuns, sweep);
  const runs = sweepRuns(allRuns);
  const each = target.pairs.map((p) => `${p.batched.tokens_per_s.toFixed(1)} vs ${p.sequential.tokens_per_s.toFixed(1)} tok/s (${p.ratio.toFixed(2)}×)`);
  checks.push(target.median !== undefined
    ? { target: `channels at batch ${target.size}: batched throughput ≥ 5× sequential`, met: target.median >= 5,
      detail: (target.pairs.length === 1 ? each[0]
        : `median ${target.median.toFixed(2)}× over ${target.pairs.length} runs of each, back to back: ${each.join('; ')}`) +
        ceilingNote(target.pairs[0].batched, 5) }
    : { target: `channels at batch ${target.size}: batched throughput ≥ 5× sequential`, met: null, detail: 'not measured (needs both clients, each with output)' });
  const servers = [...new Set(runs.map((r) => r.client))].filter((c) => c !== 'sequential' && c !== 'batched');
  for (const server of servers) {
    const misses: string[] = [];
    let cells = 0;
    let silent = 0;
    for (const r of runs.filter((x) => x.client === server)) {
      const ours = find(runs, 'batched', r.mode, r.context, r.size);
      if (!ours) continue;
      if (!produced(r) || !produced(ours)) {
        silent++;
        continue;
      }
      cells++;
      if (ours.wall_s > r.wall_s || ours.tokens_per_s < r.tokens_per_s) {
        misses.push(`${r.mode} ${r.context} sentences × ${r.size}: ${ours.wall_s.toFixed(1)} vs ${r.wall_s.toFixed(1)} s, ${ours.tokens_per_s.toFixed(1)} vs ${r.tokens_per_s.toFixed(1)} tok/s`);
      }
    }
    checks.push({
      target: `batched ≥ ${server} in wall time and throughput at every size`,
      met: cells === 0 ? null : misses.length === 0,
      detail: (cells === 0 ? 'not measured' : misses.length === 0 ? `all ${cells} cells` : `missed in ${misses.length} of ${cells}: ${misses.join('; ')}`) +
        (silent ? `; ${silent} cell${silent === 1 ? '' : 's'} left out: a client generated nothing there (see its errors)` : ''),
    });
  }
  const accMisses: string[] = [];
  let accCells = 0;
  for (const r of runs.filter((x) => x.mode === 'channels')) {
    const packed = find(runs, r.client, 'packed', r.context, r.size);
    if (!produced(packed) || !produced(r)) continue;
    accCells++;
    if (r.accuracy < packed.accuracy) accMisses.push(`${r.client} ${r.context}×${r.size}: ${pct(r.accuracy)} vs ${pct(packed.accuracy)}`);
  }
  checks.push({
    target: 'channels accuracy ≥ packed accuracy at every batch size',
    met: accCells === 0 ? null : accMisses.length === 0,
    detail: accCells === 0 ? 'not measured' : accMisses.length === 0 ? `all ${accCells} cells` : `missed in ${accMisses.length} of ${accCells}: ${accMisses.join('; ')}`,
  });
  return checks;
}

const pct = (x: number) => `${(100 * x).toFixed(0)}%`;

/** Why answers were not valid, per reason, most common first; `example` quotes a reply that was not JSON. */
export function invalidAnswers(runs: MinionRun[]): Array<{ client: string; mode: string; answers: number; invalid: number; reasons: Array<[string, number]>; example?: string }> {
  const groups = new Map<string, MinionRun[]>();
  for (const r of sweepRuns(runs)) {
    const key = `${r.client}\0${r.mode}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  return [...groups.entries()].map(([key, group]) => {
    const [client, mode] = key.split('\0');
    const answers = group.flatMap((r) => r.answers);
    const counts = new Map<string, number>();
    let example: string | undefined;
    const invalid = answers.filter((x) => !x.valid);
    for (const a of invalid) {
      const notJson = /not a JSON object|not the JSON list|not valid JSON/.test(a.error ?? '');
      const reason = a.ended === 'loop' ? 'fell into a loop' : a.ended === 'length' ? 'cut at the output cap'
        : a.ended === 'error' ? 'failed' : notJson ? 'not the JSON asked for' : 'JSON of the wrong shape';
      counts.set(reason, (counts.get(reason) ?? 0) + 1);
      example ??= notJson ? /: (".*)$/s.exec(a.error ?? '')?.[1] : undefined;
    }
    return { client, mode, answers: answers.length, invalid: invalid.length,
      reasons: [...counts.entries()].sort((a, b) => b[1] - a[1]), ...(example ? { example } : {}) };
  });
}

export function reportMarkdown(report: MinionsReport, charts: string[]): string {
  const lines = [
    '# Minions benchmark',
    '',
    `\`${report.command}\`, ${report.created.slice(0, 10)}: ${report.machine}; model ${report.model}.`,
    '',
    ...Object.entries(report.clients).map(([name, what]) => `- **${name}**: ${what}`),
    '',
    `Documents of ${report.sweep.contexts.join(', ')} sentences at ${report.sweep.contextSweepSize} questions, and ${report.sweep.sizes.join(', ')} questions ` +
      `about a ${report.sweep.sizeSweepContext}-sentence document (seed ${report.sweep.seed}). Packed: the questions in one message, one JSON list back; ` +
      'channels: one question per decoding channel through the ask pipeline, the document a shared prefix. Greedy. ' +
      'Latency: each answer\'s end from the start of its run (packed answers all end with the one reply). ' +
      'For every client, a reply that falls into a loop (one piece of text repeated back to back) is stopped there and counted as not valid.',
    '',
    '## Targets',
    '',
    ...report.targets.map((t) => `- ${t.met === null ? 'not measured' : t.met ? 'met' : '**missed**'}: ${t.target} (${t.detail})`),
    '',
    ...(charts.length ? ['## Charts', '', ...charts.map((c) => `![${c}](${c})`), ''] : []),
    '## Answers that are not valid',
    '',
    ...invalidAnswers(report.runs).map((g) => `- ${g.client}, ${g.mode}: ` + (g.invalid === 0 ? `all ${g.answers} valid`
      : `${g.invalid} of ${g.answers} not valid: ${g.reasons.map(([why, n]) => `${n} ${why}`).join(', ')}${g.example ? ` (e.g. ${g.example})` : ''}`)),
    '',
    '## Runs',
    '',
    '| client | mode | sentences | questions | wall s | prompt tokens (prefilled / reused) | generated | tok/s | latency p50 / p95 s | JSON valid | accuracy |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...sweepRuns(report.runs).map((r) => `| ${r.client} | ${r.mode} | ${r.context} | ${r.size} | ${r.wall_s.toFixed(1)} | ${r.prompt_tokens} (${r.prefilled_tokens} / ${r.cached_tokens}) | ` +
      `${r.generated_tokens} | ${r.tokens_per_s.toFixed(1)} | ${r.latency_p50_s.toFixed(1)} / ${r.latency_p95_s.toFixed(1)} | ${pct(r.json_valid_rate)} | ${pct(r.accuracy)} |`),
    '',
  ];
  return lines.join('\n');
}
