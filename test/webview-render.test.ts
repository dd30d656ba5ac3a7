// The results webview (media/results.ts, bundled to dist/webview.js) run in
// jsdom with a stub acquireVsCodeApi: it draws runs from `runs`, patches rows
// from `jobs`, never turns model text into markup, and posts the typed
// messages of src/extension/webview-protocol.ts.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { JSDOM, VirtualConsole } from 'jsdom';
import type { JobResult } from '../src/ask/report.js';
import type { FromWebview, RunJob, RunView, ToWebview } from '../src/extension/webview-protocol.js';

const root = path.resolve(__dirname, '..');
const bundlePath = path.join(root, 'dist', 'webview.js');
let bundle = '';

before(async () => {
  // Build just the webview bundle, with the config a user's build uses.
  const { build } = (await import(pathToFileURL(path.join(root, 'esbuild.mjs')).href)) as {
    build(o: { only: string[] }): Promise<void>;
  };
  await build({ only: ['webview'] });
  bundle = fs.readFileSync(bundlePath, 'utf8');
});

const RUN_ID = 'run-1';
const EVIL = 'Yes. <img src=x onerror=alert(1)> and <script>alert(2)</script> and **bold**';

function result(job: RunJob, over: Partial<JobResult>): JobResult {
  return {
    id: job.id,
    file: job.file,
    start_line: job.start_line,
    end_line: job.end_line,
    state: 'found',
    answer: null,
    explanation: null,
    citation: null,
    verified: false,
    error: null,
    prompt_tokens: 3552,
    cached_tokens: 100,
    generated_tokens: 42,
    attempts: 1,
    seconds: 1.5,
    ...over,
  };
}

function job(question: number, file: string, start: number, end: number, over: Partial<RunJob> = {}): RunJob {
  return { id: `q${question}:${file}:${start}-${end}`, question, file, start_line: start, end_line: end, phase: 'queued', ...over };
}

function makeRun(): RunView {
  const found = job(0, 'src/auth.ts', 1, 40, { phase: 'found' });
  found.result = result(found, {
    answer: EVIL,
    explanation: 'Because <b>the token</b> is checked <img src=x onerror=alert(3)>',
    citation: { start_line: 12, end_line: 13, quote: 'if (!token) <script>alert(4)</script>' },
    verified: true,
  });
  const notFound = job(0, 'src/auth.ts', 41, 80, { phase: 'not_found' });
  notFound.result = result(notFound, { state: 'not_found', explanation: 'Nothing about it here.' });
  const queued = job(0, 'src/db.ts', 1, 30, { phase: 'queued', prompt_tokens: 3552 });
  const generating = job(0, 'src/db.ts', 31, 60, { phase: 'generating', text: '{"answer": "<img src=x onerror=alert(5)>', generated_tokens: 12 });
  const error = job(0, 'src/util.ts', 1, 10, { phase: 'error' });
  error.result = result(error, { state: 'error', error: 'model said <script>alert(6)</script>' });
  const unverified = job(0, 'src/util.ts', 11, 20, { phase: 'found' });
  unverified.result = result(unverified, { answer: 'Maybe.', citation: { start_line: null, end_line: null, quote: 'invented quote' }, verified: false });
  const reading = job(1, 'src/auth.ts', 1, 40, { phase: 'reading', prefilled_tokens: 512, prompt_tokens: 2048 });
  const truncated = job(1, 'src/db.ts', 1, 30, { phase: 'truncated' });
  truncated.result = result(truncated, { state: 'truncated', error: 'ran out of tokens' });
  return {
    id: RUN_ID,
    started: '2026-05-01T10:00:00.000Z',
    status: 'running',
    questions: ['Where is the auth token checked?', 'Which tables are written?'],
    scope: '3 files in src/',
    model: 'SmolLM2-135M',
    jobs: [found, notFound, queued, generating, error, unverified, reading, truncated],
    skipped: [{ file: 'big.bin', reason: 'binary <b>file</b>' }],
    summaries: ['The token is checked in **auth.ts** <img src=x onerror=alert(7)>', null],
    elapsedSeconds: 12.5,
    generatedTokens: 300,
    tokensPerSecond: 24,
  };
}

function olderRun(): RunView {
  const j = job(0, 'README.md', 1, 5, { phase: 'not_found' });
  j.result = result(j, { state: 'not_found' });
  return {
    id: 'run-0',
    started: '2026-04-30T09:00:00.000Z',
    status: 'done',
    questions: ['Old question?'],
    scope: 'open editors',
    model: 'm',
    jobs: [j],
    skipped: [],
    summaries: [null],
    elapsedSeconds: 3,
    generatedTokens: 10,
    tokensPerSecond: 3.3,
  };
}

const windows: Array<{ close(): void }> = [];
after(() => {
  for (const w of windows) w.close();
});

interface Harness {
  window: JSDOM['window'];
  document: Document;
  posted: FromWebview[];
  state(): any;
  send(msg: ToWebview): void;
  errors: string[];
  alerts: unknown[];
  row(id: string): HTMLElement;
  settle(): Promise<void>;
}

/** Loads dist/webview.js into a fresh jsdom window. `components`: give jsdom what the vscode-elements components need. */
function load({ components, savedState }: { components: boolean; savedState?: unknown }): Harness {
  const errors: string[] = [];
  const virtualConsole = new VirtualConsole();
  virtualConsole.on('jsdomError', (e) => errors.push(`${e.message} ${(e as { detail?: unknown }).detail ?? ''}`));
  virtualConsole.on('error', (...args) => errors.push(args.map(String).join(' ')));
  // The page src/extension/results-panel.ts serves, less its CSP and links.
  const dom = new JSDOM('<!doctype html><html lang="en"><head></head><body><div id="app"></div></body></html>', {
    runScripts: 'dangerously',
    pretendToBeVisual: true,
    url: 'https://webview.invalid/index.html',
    virtualConsole,
  });
  const w = dom.window as any;
  windows.push(dom.window);
  if (components) {
    // jsdom lacks these; VS Code's Chromium has them.
    w.ElementInternals.prototype.setFormValue ??= function () {};
    w.ElementInternals.prototype.setValidity ??= function () {};
    w.ResizeObserver ??= class {
      observe() {}
      unobserve() {}
      disconnect() {}
    };
    Object.defineProperty(w.HTMLElement.prototype, 'innerText', {
      configurable: true,
      get() {
        return this.textContent;
      },
      set(v: string) {
        this.textContent = v;
      },
    });
  }
  const posted: FromWebview[] = [];
  let saved: unknown = savedState === undefined ? undefined : JSON.parse(JSON.stringify(savedState));
  const alerts: unknown[] = [];
  w.alert = (x: unknown) => alerts.push(x);
  w.acquireVsCodeApi = () => ({
    postMessage: (m: unknown) => posted.push(JSON.parse(JSON.stringify(m))),
    getState: () => saved,
    setState: (s: unknown) => {
      saved = JSON.parse(JSON.stringify(s));
    },
  });
  const script = w.document.createElement('script');
  script.textContent = bundle;
  w.document.head.append(script);
  script.remove();
  const document = w.document as Document;
  return {
    window: dom.window,
    document,
    posted,
    state: () => saved as any,
    send: (msg) => w.dispatchEvent(new w.MessageEvent('message', { data: JSON.parse(JSON.stringify(msg)) })),
    errors,
    alerts,
    row: (id) => {
      const found = [...document.querySelectorAll<HTMLElement>('article.job')].find((e) => e.dataset.jobId === id);
      assert.ok(found, `no row for ${id}`);
      return found;
    },
    settle: () => new Promise((r) => setTimeout(r, 30)),
  };
}

function jobsMessage(updates: Array<Partial<RunJob> & { id: string }>, run = makeRun()): ToWebview {
  const byId = new Map(run.jobs.map((j) => [j.id, j]));
  return {
    type: 'jobs',
    runId: RUN_ID,
    updates: updates.map((u) => {
      const base = byId.get(u.id)!;
      return { question: base.question, file: base.file, start_line: base.start_line, end_line: base.end_line, phase: base.phase, ...u };
    }),
    elapsedSeconds: 20,
    generatedTokens: 400,
    tokensPerSecond: 20,
  };
}

function assertNoDangerousElements(document: Document): void {
  assert.equal(document.querySelectorAll('img, script, iframe, object, embed, svg, style').length, 0, 'dangerous element created');
  for (const e of document.querySelectorAll('*')) {
    for (const a of e.getAttributeNames()) assert.ok(!a.toLowerCase().startsWith('on'), `event handler attribute ${a} on ${e.tagName}`);
    const href = e.getAttribute('href');
    if (href !== null) assert.match(href, /^https?:\/\//);
  }
}

const ID = {
  found: 'q0:src/auth.ts:1-40',
  notFound: 'q0:src/auth.ts:41-80',
  queued: 'q0:src/db.ts:1-30',
  generating: 'q0:src/db.ts:31-60',
  error: 'q0:src/util.ts:1-10',
  unverified: 'q0:src/util.ts:11-20',
  reading: 'q1:src/auth.ts:1-40',
  truncated: 'q1:src/db.ts:1-30',
};

for (const components of [true, false]) {
  describe(components ? 'with vscode-elements components' : 'without components (degraded, plain elements)', () => {
    test('posts ready on load and shows the empty state', () => {
      const h = load({ components });
      assert.deepEqual(h.posted[0], { type: 'ready' });
      assert.ok(h.document.querySelector('#app > main.app'), 'mounted in #app');
      assert.equal(h.posted.length, 1);
      assert.equal(h.document.querySelector<HTMLElement>('.empty')?.hidden, false);
      assert.equal(h.document.querySelector<HTMLElement>('section.run')?.hidden, true);
      assert.deepEqual(h.errors, []);
    });

    test('draws a run grouped by question then file, with phases and safe content', async () => {
      const h = load({ components });
      h.send({ type: 'runs', runs: [olderRun(), makeRun()] });
      await h.settle();
      const { document } = h;

      // Grouped by question, then by file in job order.
      const panels = [...document.querySelectorAll<HTMLElement>('.question-panel')];
      assert.deepEqual(panels.map((p) => p.dataset.question), ['0', '1']);
      const q0 = panels[0];
      assert.deepEqual([...q0.querySelectorAll<HTMLElement>('.file-group')].map((g) => g.dataset.file), ['src/auth.ts', 'src/db.ts', 'src/util.ts']);
      assert.equal(q0.querySelectorAll('article.job').length, 6);
      assert.equal(panels[1].querySelectorAll('article.job').length, 2);
      for (const row of document.querySelectorAll<HTMLElement>('article.job')) {
        assert.equal(row.closest<HTMLElement>('.question-panel')?.dataset.question, row.dataset.question);
        assert.equal(row.closest<HTMLElement>('.file-group')?.dataset.file, row.dataset.jobId!.split(':')[1]);
      }
      assert.match(q0.querySelector('.question-text')?.textContent ?? '', /Where is the auth token checked\?/);

      // Phases.
      assert.equal(h.row(ID.queued).querySelector('.badge')?.textContent, 'queued');
      assert.equal(h.row(ID.reading).querySelector('.badge')?.textContent, 'reading 512 / 2,048 tokens');
      assert.equal(h.row(ID.generating).querySelector('.badge')?.textContent, 'generating · 12 tokens');
      const stream = h.row(ID.generating).querySelector<HTMLElement>('pre.stream')!;
      assert.equal(stream.hidden, false);
      assert.equal(stream.textContent, '{"answer": "<img src=x onerror=alert(5)>');
      assert.equal(stream.children.length, 0);
      assert.equal(h.row(ID.found).querySelector('.badge')?.textContent, 'found');
      assert.equal(h.row(ID.unverified).querySelector('.badge')?.textContent, 'found · unverified');
      assert.equal(h.row(ID.notFound).querySelector('.badge')?.textContent, 'not found');
      assert.equal(h.row(ID.error).querySelector('.job-error')?.textContent, 'model said <script>alert(6)</script>');

      // The found answer: Markdown rendered, raw HTML shown as text.
      const found = h.row(ID.found);
      assert.equal(found.querySelector('.answer strong')?.textContent, 'bold');
      assert.match(found.querySelector('.answer')?.textContent ?? '', /<img src=x onerror=alert\(1\)>/);
      assert.equal(found.querySelector('.explanation')?.textContent, 'Because <b>the token</b> is checked <img src=x onerror=alert(3)>');
      assert.equal(found.querySelector('.citation .quote')?.textContent, 'if (!token) <script>alert(4)</script>');
      assert.match(found.querySelector('.cite-mark')?.textContent ?? '', /verified · lines 12–13/);
      assert.match(h.row(ID.unverified).querySelector('.cite-mark')?.textContent ?? '', /unverified/);
      assert.equal(document.querySelector('.summary-body strong')?.textContent, 'auth.ts');
      assertNoDangerousElements(document);

      // Header: status, counts (aria-live), stats.
      assert.equal(document.querySelector('.status-pill')?.textContent, 'running');
      const counts = document.querySelector<HTMLElement>('.run-counts')!;
      assert.equal(counts.getAttribute('aria-live'), 'polite');
      const count = (k: string) => counts.querySelector(`.count-${k} .count-value`)?.textContent;
      assert.deepEqual(
        ['found', 'not_found', 'unverified', 'truncated', 'error', 'cancelled', 'queued', 'running'].map(count),
        ['2', '1', '1', '1', '1', '0', '1', '2'],
      );
      assert.match(document.querySelector('.run-stats')?.textContent ?? '', /5 \/ 8 jobs · 13 s · 300 tokens generated · 24\.0 tok\/s/);
      assert.match(document.querySelector('.skipped')?.textContent ?? '', /big\.bin — binary <b>file<\/b>/);
      assert.deepEqual(h.alerts, []);
      assert.deepEqual(h.errors, []);
    });

    test('patches rows in place from jobs updates: queued -> reading -> generating -> found', async () => {
      const h = load({ components });
      h.send({ type: 'runs', runs: [makeRun()] });
      await h.settle();
      const row = h.row(ID.queued);
      const otherRow = h.row(ID.found);

      h.send(jobsMessage([{ id: ID.queued, phase: 'reading', prefilled_tokens: 1234, prompt_tokens: 3552 }]));
      assert.equal(h.row(ID.queued), row, 'the same element, patched');
      assert.equal(row.querySelector('.badge')?.textContent, 'reading 1,234 / 3,552 tokens');
      assert.equal(row.querySelector<HTMLElement>('.progress')?.hidden, false);
      assert.equal(row.querySelector<HTMLElement>('.progress')?.getAttribute('aria-valuenow'), '1234');
      assert.match(h.document.querySelector('.run-stats')?.textContent ?? '', /5 \/ 8 jobs · 20 s · 400 tokens generated · 20\.0 tok\/s/);

      h.send(jobsMessage([{ id: ID.queued, phase: 'generating', text: 'partial <script>alert(8)</script>', generated_tokens: 5 }]));
      assert.equal(row.querySelector('.badge')?.textContent, 'generating · 5 tokens');
      assert.equal(row.querySelector('pre.stream')?.textContent, 'partial <script>alert(8)</script>');
      assert.equal(row.querySelector<HTMLElement>('.progress')?.hidden, true);

      const base = makeRun().jobs.find((j) => j.id === ID.queued)!;
      const final = result(base, {
        answer: 'It writes `users`. <img src=x onerror=alert(9)>',
        citation: { start_line: 7, end_line: 7, quote: 'INSERT INTO users' },
        verified: true,
      });
      h.send(jobsMessage([{ id: ID.queued, phase: 'found', result: final }]));
      assert.equal(h.row(ID.queued), row);
      assert.equal(h.row(ID.found), otherRow, 'other rows untouched');
      assert.equal(row.querySelector('.badge')?.textContent, 'found');
      assert.equal(row.querySelector<HTMLElement>('pre.stream')?.hidden, true);
      assert.equal(row.querySelector('.answer code')?.textContent, 'users');
      assert.equal(row.querySelector('.citation .quote')?.textContent, 'INSERT INTO users');
      assert.equal(h.document.querySelector('.run-counts .count-found .count-value')?.textContent, '3');
      assertNoDangerousElements(h.document);

      // A job the webview has not seen (e.g. added by a rerun) gets a row.
      h.send({
        type: 'jobs',
        runId: RUN_ID,
        updates: [{ id: 'q1:src/new.ts:1-9', question: 1, file: 'src/new.ts', start_line: 1, end_line: 9, phase: 'queued' }],
        elapsedSeconds: 21,
        generatedTokens: 400,
        tokensPerSecond: 19,
      });
      const fresh = h.row('q1:src/new.ts:1-9');
      assert.equal(fresh.closest<HTMLElement>('.question-panel')?.dataset.question, '1');
      assert.equal(fresh.closest<HTMLElement>('.file-group')?.dataset.file, 'src/new.ts');

      // A summary arrives.
      h.send({ type: 'summary', runId: RUN_ID, question: 1, summary: 'Writes **users** <script>alert(10)</script>' });
      const summaries = h.document.querySelectorAll<HTMLElement>('.summary');
      assert.equal(summaries[1].hidden, false);
      assert.equal(summaries[1].querySelector('strong')?.textContent, 'users');
      assertNoDangerousElements(h.document);
      assert.deepEqual(h.alerts, []);
      assert.deepEqual(h.errors, []);
    });

    test('citations, file links, copy and rerun post the right messages', async () => {
      const h = load({ components });
      h.send({ type: 'runs', runs: [makeRun()] });
      await h.settle();
      h.posted.length = 0;

      h.row(ID.found).querySelector<HTMLButtonElement>('button.citation')!.click();
      assert.deepEqual(h.posted.pop(), { type: 'openFile', file: 'src/auth.ts', startLine: 12, endLine: 13, runId: RUN_ID });
      // An unlocated quote falls back to the chunk's lines.
      h.row(ID.unverified).querySelector<HTMLButtonElement>('button.citation')!.click();
      assert.deepEqual(h.posted.pop(), { type: 'openFile', file: 'src/util.ts', startLine: 11, endLine: 20, runId: RUN_ID });
      h.row(ID.notFound).querySelector<HTMLButtonElement>('button.loc')!.click();
      assert.deepEqual(h.posted.pop(), { type: 'openFile', file: 'src/auth.ts', startLine: 41, endLine: 80, runId: RUN_ID });

      const copy = h.row(ID.found).querySelector<HTMLButtonElement>('button.copy')!;
      assert.equal(copy.hidden, false);
      copy.click();
      assert.deepEqual(h.posted.pop(), { type: 'copy', text: EVIL });
      assert.equal(h.row(ID.notFound).querySelector<HTMLButtonElement>('button.copy')!.hidden, true, 'nothing to copy');
      assert.equal(h.row(ID.queued).querySelector<HTMLButtonElement>('button.rerun')!.hidden, true, 'not finished yet');

      h.row(ID.error).querySelector<HTMLButtonElement>('button.rerun')!.click();
      assert.deepEqual(h.posted.pop(), { type: 'rerunJob', runId: RUN_ID, jobId: ID.error });

      // Header actions.
      const action = (key: string) => h.document.querySelector<HTMLElement>(`[data-focus-key="${key}"]`)!;
      assert.equal(action('action:cancel').tagName.toLowerCase(), components ? 'vscode-button' : 'button');
      action('action:cancel').click();
      assert.deepEqual(h.posted.pop(), { type: 'cancel', runId: RUN_ID });
      action('action:export:json').click();
      assert.deepEqual(h.posted.pop(), { type: 'export', runId: RUN_ID, format: 'json' });
      action('action:export:csv').click();
      assert.deepEqual(h.posted.pop(), { type: 'export', runId: RUN_ID, format: 'csv' });
      action('action:delete').click();
      assert.equal(h.posted.length, 0, 'delete is disabled while running');

      // Every action is a button (native or vscode-button) reachable by keyboard.
      for (const b of h.document.querySelectorAll<HTMLElement>('article.job button')) assert.equal(b.getAttribute('type'), 'button');
      assert.deepEqual(h.errors, []);
    });

    test('the filter hides rows that do not match and is remembered', async () => {
      const h = load({ components });
      h.send({ type: 'runs', runs: [makeRun()] });
      await h.settle();
      const visible = () =>
        [...h.document.querySelectorAll<HTMLElement>('article.job')].filter((r) => !r.hidden && !r.closest('.file-group')!.hasAttribute('hidden')).map((r) => r.dataset.jobId).sort();
      const filterButton = (f: string) => h.document.querySelector<HTMLButtonElement>(`button.filter[data-filter="${f}"]`)!;
      assert.equal(visible().length, 8);
      assert.equal(filterButton('all').getAttribute('aria-pressed'), 'true');

      filterButton('found').click();
      assert.deepEqual(visible(), [ID.found, ID.unverified].sort());
      assert.equal(filterButton('found').getAttribute('aria-pressed'), 'true');
      assert.equal(filterButton('all').getAttribute('aria-pressed'), 'false');
      assert.equal(h.document.querySelector<HTMLElement>('.file-group[data-file="src/db.ts"]')?.hidden, true, 'a file with no match is hidden');
      assert.equal(h.state().filter, 'found');
      const q1NoMatch = h.document.querySelectorAll<HTMLElement>('.no-match')[1];
      assert.equal(q1NoMatch.hidden, false, 'question 2 has nothing found');

      filterButton('unverified').click();
      assert.deepEqual(visible(), [ID.unverified]);
      filterButton('not_found').click();
      assert.deepEqual(visible(), [ID.notFound]);
      filterButton('problems').click();
      assert.deepEqual(visible(), [ID.error, ID.truncated].sort());

      // A live update moves a row into the filter.
      h.send(jobsMessage([{ id: ID.queued, phase: 'cancelled' }]));
      assert.deepEqual(visible(), [ID.error, ID.queued, ID.truncated].sort());

      filterButton('all').click();
      assert.equal(visible().length, 8);
      assert.equal(filterButton('problems').querySelector('.filter-count')?.textContent, '3');
      assert.deepEqual(h.errors, []);
    });

    test('restores from getState, then the runs message replaces it; run and tab selection are saved', async () => {
      const h = load({ components });
      h.send({ type: 'runs', runs: [makeRun(), olderRun()] });
      await h.settle();
      assert.equal(h.state().selected, RUN_ID, 'newest first, selected by default');
      h.document.querySelector<HTMLButtonElement>('button.filter[data-filter="problems"]')!.click();

      if (components) {
        // Switch to question 2 with the tab header.
        const headers = h.document.querySelectorAll<HTMLElement>('vscode-tab-header');
        assert.equal(headers.length, 2);
        headers[1].click();
        await h.settle();
        assert.equal(h.state().tabs[RUN_ID], 1);
      }

      // Pick the older run in the run list.
      const picker = h.document.querySelector<HTMLElement & { value: string }>('#run-picker')!;
      if (!components) {
        assert.equal(picker.tagName.toLowerCase(), 'select');
        assert.deepEqual([...picker.querySelectorAll('option')].map((o) => o.getAttribute('value')), [RUN_ID, 'run-0']);
        picker.value = 'run-0';
        picker.dispatchEvent(new h.window.Event('change'));
        assert.deepEqual(h.posted.at(-1), { type: 'select', runId: 'run-0' });
        assert.equal(h.document.querySelectorAll('article.job').length, 1);
        assert.equal(h.state().selected, 'run-0');
        picker.value = RUN_ID;
        picker.dispatchEvent(new h.window.Event('change'));
      } else {
        assert.equal(picker.tagName.toLowerCase(), 'vscode-single-select');
        assert.deepEqual([...picker.querySelectorAll('vscode-option')].map((o) => o.getAttribute('value')), [RUN_ID, 'run-0']);
        assert.equal(picker.value, RUN_ID);
      }
      assert.equal(h.state().selected, RUN_ID);

      // A new webview (hidden and shown again) draws from the saved state at once.
      const saved = h.state();
      assert.equal(saved.runs.find((r: RunView) => r.id === 'run-0').jobs.length, 0, 'only the selected run is saved in full');
      const h2 = load({ components, savedState: saved });
      await h2.settle();
      assert.deepEqual(h2.posted, [{ type: 'ready' }]);
      assert.equal(h2.document.querySelectorAll('article.job').length, 8);
      assert.equal(h2.document.querySelector('button.filter[data-filter="problems"]')?.getAttribute('aria-pressed'), 'true');
      if (components) assert.equal(h2.document.querySelector('vscode-tabs')?.getAttribute('selected-index'), '1');

      // Then the extension's runs replace it.
      const updated = makeRun();
      updated.status = 'done';
      updated.jobs = updated.jobs.slice(0, 2);
      h2.send({ type: 'runs', runs: [updated, olderRun()], selected: RUN_ID });
      assert.equal(h2.document.querySelectorAll('article.job').length, 2);
      assert.equal(h2.document.querySelector('.status-pill')?.textContent, 'done');
      assert.deepEqual(h.errors, []);
      assert.deepEqual(h2.errors, []);
    });

    test('runStarted selects the new run; runEnded redraws it with its final state', async () => {
      const h = load({ components });
      h.send({ type: 'runs', runs: [olderRun()] });
      await h.settle();
      const fresh = makeRun();
      fresh.started = '2026-06-01T00:00:00.000Z';
      h.send({ type: 'runStarted', run: fresh });
      assert.equal(h.document.querySelectorAll('article.job').length, 8);
      assert.equal(h.state().selected, RUN_ID);
      const cancel = h.document.querySelector<HTMLElement>('[data-focus-key="action:cancel"]')!;
      assert.equal(cancel.hidden, false);

      const ended = makeRun();
      ended.started = fresh.started;
      ended.status = 'failed';
      ended.error = 'model failed to load <script>alert(11)</script>';
      h.send({ type: 'runEnded', run: ended });
      await h.settle();
      assert.equal(h.document.querySelector('.status-pill')?.textContent, 'failed');
      assert.equal(h.document.querySelector('.run-error')?.textContent, 'model failed to load <script>alert(11)</script>');
      assert.equal(h.document.querySelector<HTMLElement>('[data-focus-key="action:cancel"]')?.hidden, true);
      h.posted.length = 0;
      h.document.querySelector<HTMLElement>('[data-focus-key="action:rerunFailed"]')!.click();
      assert.deepEqual(h.posted, [{ type: 'rerunFailed', runId: RUN_ID }]);
      h.document.querySelector<HTMLElement>('[data-focus-key="action:delete"]')!.click();
      assert.deepEqual(h.posted.at(-1), { type: 'deleteRun', runId: RUN_ID });
      assertNoDangerousElements(h.document);
      assert.deepEqual(h.errors, []);
    });
  });
}

test('a run with hundreds of jobs: updates patch the rows they name, nothing else is rebuilt', async () => {
  const h = load({ components: true });
  const run = makeRun();
  run.jobs = [];
  for (let i = 0; i < 600; i++) run.jobs.push(job(i % 2, `src/f${i % 50}.ts`, i * 10 + 1, i * 10 + 10, { prompt_tokens: 1000 }));
  h.send({ type: 'runs', runs: [run] });
  await h.settle();
  const before = [...h.document.querySelectorAll('article.job')];
  assert.equal(before.length, 600);

  // Count the elements the updates add or remove anywhere in the page.
  let replaced = 0;
  const observer = new h.window.MutationObserver((records) => {
    for (const r of records) {
      for (const node of [...r.addedNodes, ...r.removedNodes]) {
        if (node.nodeType === 1 && ((node as Element).matches('article.job, .file-group, .question-panel') || (node as Element).querySelector('article.job'))) replaced++;
      }
    }
  });
  observer.observe(h.document.body, { childList: true, subtree: true });
  const t0 = performance.now();
  for (let step = 0; step < 50; step++) {
    const updates = run.jobs.slice(step * 10, step * 10 + 20).map((j) => ({ ...j, phase: 'reading' as const, prefilled_tokens: step * 10 }));
    h.send({ type: 'jobs', runId: RUN_ID, updates, elapsedSeconds: step, generatedTokens: step, tokensPerSecond: 1 });
  }
  const ms = performance.now() - t0;
  await h.settle();
  observer.disconnect();
  assert.equal(replaced, 0, 'no row, file group or question was rebuilt');
  const after = [...h.document.querySelectorAll('article.job')];
  assert.ok(after.every((row, i) => row === before[i]), 'the same row elements');
  assert.equal(h.row(run.jobs[505].id).querySelector('.badge')?.textContent, 'reading 490 / 1,000 tokens');
  // Generous: jsdom on a busy 2-core machine; a browser does this in a few ms.
  assert.ok(ms < 20_000, `50 updates of 20 jobs took ${ms.toFixed(0)} ms`);
  assert.deepEqual(h.errors, []);
});

test('the shown run ending patches its rows in place: finished answers are not drawn again', async () => {
  const h = load({ components: false });
  h.send({ type: 'runs', runs: [makeRun()] });
  await h.settle();
  const foundRow = h.row(ID.found);
  const answer = foundRow.querySelector('.answer');
  assert.ok(answer);
  const ended = makeRun();
  ended.status = 'done';
  const queued = ended.jobs.find((j) => j.id === ID.queued)!;
  queued.phase = 'cancelled';
  queued.result = result(queued, { state: 'cancelled', error: 'the run ended before this job ran', generated_tokens: 0 });
  const generating = ended.jobs.find((j) => j.id === ID.generating)!;
  generating.phase = 'found';
  delete generating.text;
  generating.result = result(generating, { answer: 'The users table.', verified: true, citation: { start_line: 40, end_line: 40, quote: 'INSERT INTO users' } });
  h.send({ type: 'runEnded', run: ended });
  await h.settle();
  assert.equal(h.row(ID.found), foundRow, 'the same row element');
  assert.equal(foundRow.querySelector('.answer'), answer, 'its answer was not rendered again');
  assert.equal(h.row(ID.queued).querySelector('.badge')?.textContent, 'cancelled');
  const done = h.row(ID.generating);
  assert.equal(done.querySelector('.answer')?.textContent?.trim(), 'The users table.');
  assert.equal(done.querySelector<HTMLElement>('pre.stream')?.hidden, true);
  assert.equal(h.document.querySelector('.status-pill')?.textContent, 'done');
  assert.equal(h.state().runs[0].status, 'done');
  assert.deepEqual(h.errors, []);
});

test('a found answer with no quote says so, with no citation button', async () => {
  const h = load({ components: false });
  const run = makeRun();
  const bare = run.jobs.find((j) => j.id === ID.unverified)!;
  bare.result = result(bare, { answer: 'Maybe.', citation: null, verified: false });
  h.send({ type: 'runs', runs: [run] });
  await h.settle();
  const row = h.row(ID.unverified);
  assert.equal(row.querySelector('.badge')?.textContent, 'found · unverified');
  assert.equal(row.querySelector('button.citation'), null);
  assert.equal(row.querySelector('.cite-mark')?.textContent, '⚠ unverified: no quote given');
  assert.deepEqual(h.errors, []);
});

test('a run sent without its jobs is drawn in full when the run itself comes', async () => {
  const h = load({ components: false });
  h.send({ type: 'runs', runs: [makeRun(), { ...olderRun(), jobs: [], skipped: [] }], selected: 'run-0' });
  await h.settle();
  assert.equal(h.document.querySelectorAll('article.job').length, 0);
  h.send({ type: 'run', run: olderRun() });
  await h.settle();
  assert.equal(h.document.querySelectorAll('article.job').length, 1);
  assert.equal(h.row('q0:README.md:1-5').querySelector('.badge')?.textContent, 'not found');
  assert.equal(h.state().runs.find((r: RunView) => r.id === 'run-0').jobs.length, 1);
  assert.deepEqual(h.errors, []);
});

test('state is saved while updates keep coming, not only when they stop', async () => {
  const h = load({ components: false });
  h.send({ type: 'runs', runs: [makeRun()] });
  await h.settle();
  // Updates every 100 ms for 1.5 s: a save pushed back by each would never happen.
  for (let i = 1; i <= 15; i++) {
    h.send(jobsMessage([{ id: ID.generating, phase: 'generating', text: `{"answer": "${'x'.repeat(i)}`, generated_tokens: 12 + i }]));
    await new Promise((r) => setTimeout(r, 100));
  }
  const saved = h.state().runs[0].jobs.find((j: RunJob) => j.id === ID.generating);
  assert.ok(saved.generated_tokens > 12, `saved state still has ${saved.generated_tokens} tokens after 1.5 s of updates`);
  assert.deepEqual(h.errors, []);
});

test('after a reload, a restored selection the extension did not send in full is asked for', async () => {
  const h = load({ components: false });
  h.send({ type: 'runs', runs: [makeRun(), olderRun()], selected: 'run-0' });
  await h.settle();
  assert.equal(h.state().selected, 'run-0');
  // A new window: the extension has no selection yet and sends its newest run in full.
  const h2 = load({ components: false, savedState: h.state() });
  await h2.settle();
  h2.send({ type: 'runs', runs: [makeRun(), { ...olderRun(), jobs: [], skipped: [] }] });
  await h2.settle();
  assert.deepEqual(h2.posted.at(-1), { type: 'select', runId: 'run-0' });
  h2.send({ type: 'run', run: olderRun() });
  await h2.settle();
  assert.equal(h2.document.querySelectorAll('article.job').length, 1);
  // Sent in full already: nothing is asked for.
  const h3 = load({ components: false });
  h3.send({ type: 'runs', runs: [makeRun(), { ...olderRun(), jobs: [], skipped: [] }] });
  await h3.settle();
  assert.deepEqual(h3.posted, [{ type: 'ready' }]);
  assert.deepEqual([...h.errors, ...h2.errors, ...h3.errors], []);
});
