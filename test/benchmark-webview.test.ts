// The benchmark webview (media/benchmark.ts, bundled to dist/benchmark-webview.js)
// in jsdom with a stub acquireVsCodeApi and, as the webview's CSP does, no
// eval: it draws the three charts with vega (expressions through
// vega-interpreter), the targets and the runs table from a `report` message,
// redraws as runs arrive, and keeps report text out of the markup.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { JSDOM, VirtualConsole } from 'jsdom';
import { buildReport } from '../src/benchmark/report.js';
import { QUICK_SWEEP } from '../src/benchmark/sweep.js';
import type { MinionRun } from '../src/benchmark/types.js';
import type { FromBenchmarkWebview, ToBenchmarkWebview } from '../src/extension/benchmark-protocol.js';

const root = path.resolve(__dirname, '..');
let bundle = '';

before(async () => {
  const { build } = (await import(pathToFileURL(path.join(root, 'esbuild.mjs')).href)) as { build(o: { only: string[] }): Promise<void> };
  await build({ only: ['benchmark-webview'] });
  bundle = fs.readFileSync(path.join(root, 'dist', 'benchmark-webview.js'), 'utf8');
});

const windows: Array<{ close(): void }> = [];
after(() => {
  for (const w of windows) w.close();
});

const EVIL = 'srv <img src=x onerror=alert(1)>';

function run(client: string, mode: 'packed' | 'channels', size: number, wall: number, tokens: number): MinionRun {
  return {
    client, mode, context: 5, size, wall_s: wall, prompt_tokens: 200 * size, cached_tokens: mode === 'channels' ? 150 * (size - 1) : 0,
    prefilled_tokens: 200 * size - (mode === 'channels' ? 150 * (size - 1) : 0), generated_tokens: tokens, tokens_per_s: tokens / wall,
    latency_p50_s: wall / 2, latency_p95_s: wall, json_valid_rate: 1, accuracy: 0.8, answers: [], requests: [],
  };
}

function runs(): MinionRun[] {
  const out: MinionRun[] = [];
  for (const size of QUICK_SWEEP.sizes) {
    for (const mode of ['packed', 'channels'] as const) {
      out.push(run('sequential', mode, size, 10 * size, 40 * size), run('batched', mode, size, 3 * size, 40 * size), run(EVIL, mode, size, 5 * size, 40 * size));
    }
  }
  return out;
}

function load() {
  const errors: string[] = [];
  const virtualConsole = new VirtualConsole();
  virtualConsole.on('jsdomError', (e) => errors.push(`${e.message} ${(e as { detail?: unknown }).detail ?? ''}`));
  virtualConsole.on('error', (...args) => errors.push(args.map(String).join(' ')));
  const dom = new JSDOM('<!doctype html><html lang="en"><head></head><body><div id="app"></div></body></html>', {
    runScripts: 'dangerously', pretendToBeVisual: true, url: 'https://webview.invalid/index.html', virtualConsole,
  });
  windows.push(dom.window);
  const w = dom.window as any;
  // What Chromium has and jsdom lacks: structuredClone (vega-lite uses it); no
  // canvas, so vega measures text by its estimate instead of a 2D context.
  w.structuredClone ??= (v: unknown) => JSON.parse(JSON.stringify(v));
  w.HTMLCanvasElement.prototype.getContext = () => null;
  // The panel's CSP has no 'unsafe-eval': code generation must fail here as it would there.
  const evals: string[] = [];
  w.eval = (src: string) => {
    evals.push(String(src).slice(0, 80));
    throw new w.EvalError('eval is blocked by the CSP');
  };
  const NoFunction = function (...args: unknown[]) {
    evals.push(String(args.at(-1)).slice(0, 80));
    throw new w.EvalError('Function() is blocked by the CSP');
  };
  NoFunction.prototype = w.Function.prototype;
  w.Function = NoFunction;
  const posted: FromBenchmarkWebview[] = [];
  w.acquireVsCodeApi = () => ({ postMessage: (m: unknown) => posted.push(JSON.parse(JSON.stringify(m))) });
  const script = w.document.createElement('script');
  script.textContent = bundle;
  w.document.head.append(script);
  const document = w.document as Document;
  const send = (m: ToBenchmarkWebview) => w.dispatchEvent(new w.MessageEvent('message', { data: JSON.parse(JSON.stringify(m)) }));
  /** Resolves once the charts of `n` runs are drawn. */
  const drawn = async (n: number) => {
    for (let i = 0; i < 200 && document.body.dataset.chartsDrawn !== String(n); i++) await new Promise((r) => setTimeout(r, 25));
    assert.equal(document.body.dataset.chartsDrawn, String(n), `charts of ${n} runs drawn; errors: ${errors.join('\n')}`);
  };
  return { document, posted, send, drawn, errors, evals };
}

describe('benchmark webview', () => {
  test('draws the three charts, the targets and the table from a report, without eval', async () => {
    const h = load();
    assert.deepEqual(h.posted, [{ type: 'ready' }]);
    const all = runs();
    const report = buildReport({ command: 'test', model: 'SmolLM2', machine: '2 × cpu', clients: { sequential: 'one at a time', batched: 'batched', [EVIL]: 'a server' }, sweep: QUICK_SWEEP, runs: all });
    h.send({ type: 'report', report, status: 'done', savedTo: '/tmp/minions.json' });
    await h.drawn(all.length);
    const figures = [...h.document.querySelectorAll<HTMLElement>('figure.bench-chart')];
    assert.deepEqual(figures.map((f) => f.dataset.chart), ['context_sweep', 'long_context_clients', 'batch_size_sweep']);
    for (const f of figures) assert.ok(f.querySelector('svg'), `${f.dataset.chart} has an SVG`);
    // One bar per run in the batch-size sweep (every run is at its 5-sentence document).
    const sizeBars = figures[2].querySelectorAll('g.mark-rect path');
    assert.equal(sizeBars.length, all.length, 'a bar per (client, mode, size)');
    const labels = [...figures[2].querySelectorAll('text')].map((t) => t.textContent);
    for (const c of ['sequential', 'batched']) assert.ok(labels.includes(c), `legend names ${c}: ${labels.join('|')}`);
    const rows = h.document.querySelectorAll('.bench-runs tbody tr');
    assert.equal(rows.length, all.length);
    assert.match(h.document.querySelector('.bench-targets')!.textContent!, /batched ≥ srv/);
    assert.equal(h.document.querySelectorAll('img').length, 0, 'report text never becomes markup');
    assert.deepEqual(h.evals, [], 'nothing was evaluated');
    assert.deepEqual(h.errors, []);
  });

  test('redraws as runs arrive; Cancel posts cancel while running', async () => {
    const h = load();
    const all = runs();
    const report = (n: number) => buildReport({ command: 'test', model: 'm', machine: 'x', clients: {}, sweep: QUICK_SWEEP, runs: all.slice(0, n) });
    h.send({ type: 'report', status: 'running', progress: { done: 0, total: all.length } });
    assert.match(h.document.querySelector('.bench-status')!.textContent!, /Running · 0 \/ 12 runs/);
    h.send({ type: 'report', report: report(3), status: 'running', progress: { done: 3, total: all.length } });
    await h.drawn(3);
    assert.equal(h.document.querySelectorAll('.bench-runs tbody tr').length, 3);
    (h.document.querySelector('button.bench-cancel') as HTMLButtonElement).click();
    assert.deepEqual(h.posted.at(-1), { type: 'cancel' });
    h.send({ type: 'report', report: report(all.length), status: 'cancelled', progress: { done: all.length, total: all.length } });
    await h.drawn(all.length);
    assert.equal(h.document.querySelector('button.bench-cancel'), null, 'no Cancel once stopped');
    assert.match(h.document.querySelector('.bench-status')!.textContent!, /Cancelled/);
    assert.deepEqual(h.errors, []);
  });
});
