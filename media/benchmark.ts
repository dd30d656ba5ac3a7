// The benchmark webview: the seed benchmark's report drawn from the whole
// report in every `report` message (src/extension/benchmark-protocol.ts):
// status and progress, the targets, the three charts, and the runs table.
// Bundled by esbuild.mjs to dist/benchmark-webview.js (browser, iife).
//
// Charts: the same Vega-Lite specs the CLI renders to SVG files
// (src/benchmark/charts.ts), drawn here as SVG by vega. The webview's CSP has
// no 'unsafe-eval', so vega parses expressions to an AST and runs them with
// vega-interpreter instead of generating code. All text goes in as textContent.
import { parse, View } from 'vega';
import { expressionInterpreter } from 'vega-interpreter';
import { compile } from 'vega-lite';
import { chartSpecs, sweepRuns } from '../src/benchmark/charts.js';
import type { MinionRun, MinionsReport } from '../src/benchmark/types.js';
import type { FromBenchmarkWebview, ToBenchmarkWebview } from '../src/extension/benchmark-protocol.js';

interface VsCodeApi {
  postMessage(message: unknown): void;
}
declare function acquireVsCodeApi(): VsCodeApi;

const vscode = acquireVsCodeApi();
const post = (m: FromBenchmarkWebview) => vscode.postMessage(m);
const app = document.getElementById('app')!;
let views: View[] = [];
/** Charts are redrawn only when the runs change, not on every progress message. */
let drawnRuns = -1;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, text?: string, className?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (className) e.className = className;
  return e;
}

const pct = (x: number) => `${Math.round(100 * x)}%`;
const STATUS: Record<ToBenchmarkWebview['status'], string> = { running: 'Running', done: 'Done', cancelled: 'Cancelled', failed: 'Failed' };

function header(m: ToBenchmarkWebview): HTMLElement {
  const box = el('header', undefined, 'bench-header');
  box.append(el('h1', 'Minions benchmark'));
  const status = el('p', undefined, `bench-status bench-${m.status}`);
  status.setAttribute('role', 'status');
  const progress = m.progress ? ` · ${m.progress.done} / ${m.progress.total} runs${m.progress.current ? ` · now: ${m.progress.current}` : ''}` : '';
  status.textContent = `${STATUS[m.status]}${progress}`;
  box.append(status);
  if (m.error) box.append(el('p', m.error, 'bench-error'));
  if (m.status === 'running') {
    const cancel = el('button', 'Cancel', 'bench-cancel');
    cancel.addEventListener('click', () => post({ type: 'cancel' }));
    box.append(cancel);
  }
  if (m.report) {
    box.append(el('p', `${m.report.model} · ${m.report.machine} · ${m.report.created.slice(0, 16).replace('T', ' ')} UTC`, 'bench-meta'));
    const clients = el('ul', undefined, 'bench-clients');
    for (const [name, what] of Object.entries(m.report.clients)) {
      const li = el('li');
      li.append(el('strong', name), document.createTextNode(`: ${what}`));
      clients.append(li);
    }
    box.append(clients);
  }
  if (m.savedTo) box.append(el('p', `Saved to ${m.savedTo}`, 'bench-meta'));
  return box;
}

function targets(report: MinionsReport): HTMLElement {
  const section = el('section', undefined, 'bench-targets');
  section.append(el('h2', 'Targets'));
  const list = el('ul');
  for (const t of report.targets) {
    const state = t.met === null ? 'not measured' : t.met ? 'met' : 'missed';
    const li = el('li', undefined, `target-${state.replace(' ', '-')}`);
    li.append(el('strong', state), document.createTextNode(`: ${t.target} (${t.detail})`));
    list.append(li);
  }
  section.append(list);
  return section;
}

function table(runs: MinionRun[]): HTMLElement {
  const section = el('section', undefined, 'bench-runs');
  section.append(el('h2', 'Runs'));
  const t = el('table');
  const head = el('tr');
  for (const h of ['client', 'mode', 'sentences', 'questions', 'wall s', 'prompt (prefilled / reused)', 'generated', 'tok/s', 'latency p50 / p95 s', 'JSON valid', 'accuracy']) {
    head.append(el('th', h));
  }
  t.append(el('thead'));
  t.tHead!.append(head);
  const body = el('tbody');
  for (const r of runs) {
    const tr = el('tr');
    for (const cell of [r.client, r.mode, String(r.context), String(r.size), r.wall_s.toFixed(1), `${r.prompt_tokens} (${r.prefilled_tokens} / ${r.cached_tokens})`,
      String(r.generated_tokens), r.tokens_per_s.toFixed(1), `${r.latency_p50_s.toFixed(1)} / ${r.latency_p95_s.toFixed(1)}`, pct(r.json_valid_rate), pct(r.accuracy)]) {
      tr.append(el('td', cell));
    }
    body.append(tr);
  }
  t.append(body);
  section.append(t);
  return section;
}

/** Draws each chart into its own element; a chart that fails says so in place of the chart. */
async function drawCharts(report: MinionsReport, into: HTMLElement): Promise<void> {
  for (const v of views) v.finalize();
  views = [];
  for (const chart of chartSpecs(report.runs, report.sweep)) {
    const figure = el('figure', undefined, 'bench-chart');
    figure.dataset.chart = chart.name;
    const target = el('div');
    figure.append(target, el('figcaption', chart.title));
    into.append(figure);
    try {
      const runtime = parse(compile(chart.spec as never).spec, undefined, { ast: true });
      const view = new View(runtime, { expr: expressionInterpreter, renderer: 'svg', container: target, hover: true });
      views.push(view);
      await view.runAsync();
    } catch (e) {
      target.replaceChildren(el('p', `This chart could not be drawn: ${(e as Error).message}`, 'bench-error'));
    }
  }
}

let charts: HTMLElement | undefined;

async function render(m: ToBenchmarkWebview): Promise<void> {
  const runs = m.report?.runs.length ?? 0;
  const keepCharts = charts !== undefined && runs === drawnRuns;
  const parts: HTMLElement[] = [header(m)];
  if (!m.report || runs === 0) {
    parts.push(el('p', m.status === 'running' ? 'The first run of the sweep is under way; charts appear as runs end.' : 'No runs.', 'bench-empty'));
    app.replaceChildren(...parts);
    return;
  }
  parts.push(targets(m.report));
  if (!keepCharts) {
    charts = el('section', undefined, 'bench-charts');
    charts.append(el('h2', 'Charts'));
  }
  // The target cell's repeats count in its target line, not in the table.
  parts.push(charts!, table(sweepRuns(m.report.runs)));
  app.replaceChildren(...parts);
  if (!keepCharts) {
    drawnRuns = runs;
    await drawCharts(m.report, charts!);
  }
  document.body.dataset.chartsDrawn = String(drawnRuns);
}

window.addEventListener('message', (event: MessageEvent) => {
  const m = event.data as ToBenchmarkWebview;
  if (m?.type === 'report') void render(m);
});
document.body.classList.add('mlx-bench');
post({ type: 'ready' });
