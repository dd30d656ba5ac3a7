// The results webview: every run of `ask`, its jobs live, grouped by question
// then by file. Bundled by esbuild.mjs to dist/webview.js (browser, iife); its
// stylesheet is media/results.css. The extension side is
// src/extension/results-panel.ts; the only contract between the two is
// src/extension/webview-protocol.ts.
//
// Safety: everything here that came from the model or from the user's files
// (answers, explanations, quotes, raw streamed text, file names, errors) goes
// into the DOM as textContent, except answers, which go through
// renderAnswerHtml (markdown-it with HTML off, then DOMPurify with an
// allow-list). No other innerHTML.
//
// Speed: a run can have hundreds of jobs and updates arrive several times a
// second, so a `jobs` message patches the rows it names (a Map from job id to
// row) and recounts; only `runs`, `runStarted`, `runEnded` and switching runs
// build the run view afresh.
import '@vscode-elements/elements/dist/vscode-button/index.js';
import '@vscode-elements/elements/dist/vscode-single-select/index.js';
import '@vscode-elements/elements/dist/vscode-option/index.js';
import '@vscode-elements/elements/dist/vscode-tabs/index.js';
import '@vscode-elements/elements/dist/vscode-tab-header/index.js';
import '@vscode-elements/elements/dist/vscode-tab-panel/index.js';
import DOMPurify from 'dompurify';
import type { JobState, JobUpdate } from '../src/ask/report.js';
import { withoutJobs, type ExportFormat, type FromWebview, type JobFilter, type RunJob, type RunView, type ToWebview } from '../src/extension/webview-protocol.js';
import { renderAnswerHtml } from './markdown.js';

interface VsCodeApi {
  postMessage(message: unknown): void;
  getState(): unknown;
  setState(state: unknown): void;
}
declare function acquireVsCodeApi(): VsCodeApi;

const vscode = acquireVsCodeApi();
const purify = DOMPurify(window);

function post(message: FromWebview): void {
  vscode.postMessage(message);
}

// ---------------------------------------------------------------------------
// Components: vscode-elements where the browser supports what they need, plain
// elements otherwise (the rows never depend on a component's shadow DOM).

const hasFormInternals =
  typeof ElementInternals !== 'undefined' && typeof ElementInternals.prototype.setFormValue === 'function';
const defined = (tag: string) => typeof customElements !== 'undefined' && customElements.get(tag) !== undefined;
const USE_BUTTON = hasFormInternals && defined('vscode-button');
const USE_SELECT =
  hasFormInternals &&
  typeof ResizeObserver !== 'undefined' &&
  'innerText' in HTMLElement.prototype &&
  defined('vscode-single-select') &&
  defined('vscode-option');
const USE_TABS = defined('vscode-tabs') && defined('vscode-tab-header') && defined('vscode-tab-panel');

// ---------------------------------------------------------------------------
// Small DOM helpers.

type Attrs = Record<string, string | undefined>;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, text?: string, attrs?: Attrs): HTMLElementTagNameMap[K];
function el(tag: string, cls?: string, text?: string, attrs?: Attrs): HTMLElement;
function el(tag: string, cls?: string, text?: string, attrs?: Attrs): HTMLElement {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (attrs) for (const [k, v] of Object.entries(attrs)) if (v !== undefined) e.setAttribute(k, v);
  return e;
}

/** A header action: a vscode-button when available, else a native button. Both fire `click` on Enter/Space. */
function actionButton(label: string, focusKey: string, onClick: () => void, opts: { secondary?: boolean; ariaLabel?: string } = {}): HTMLElement {
  const b = USE_BUTTON ? el('vscode-button', 'action') : el('button', 'action native-button', undefined, { type: 'button' });
  b.textContent = label;
  if (USE_BUTTON && opts.secondary) b.setAttribute('secondary', '');
  if (!USE_BUTTON && opts.secondary) b.classList.add('secondary');
  if (opts.ariaLabel) b.setAttribute('aria-label', opts.ariaLabel);
  b.dataset.focusKey = focusKey;
  b.addEventListener('click', () => {
    if (b.hasAttribute('disabled')) return;
    onClick();
  });
  return b;
}

function setDisabled(b: HTMLElement, disabled: boolean): void {
  b.toggleAttribute('disabled', disabled);
  if (b instanceof HTMLButtonElement) b.disabled = disabled;
}

/** A small native button for rows (hundreds of them: no shadow DOM each). */
function rowButton(label: string, cls: string, ariaLabel: string, focusKey: string): HTMLButtonElement {
  const b = el('button', cls, label, { type: 'button', 'aria-label': ariaLabel, title: ariaLabel });
  b.dataset.focusKey = focusKey;
  return b;
}

// ---------------------------------------------------------------------------
// Formatting.

const numberFormat = new Intl.NumberFormat(navigator.language || undefined);
const rateFormat = new Intl.NumberFormat(navigator.language || undefined, { maximumFractionDigits: 1, minimumFractionDigits: 1 });
const n = (x: number) => numberFormat.format(x);

function formatSeconds(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '0 s';
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${String(Math.round(s % 60)).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} m`;
}

function lineRange(start: number, end: number): string {
  return start === end ? `line ${start}` : `lines ${start}–${end}`;
}

function formatStarted(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(navigator.language || undefined, { dateStyle: 'short', timeStyle: 'short' });
}

function shorten(s: string, max: number): string {
  const one = s.replace(/\s+/g, ' ').trim();
  return one.length <= max ? one : `${one.slice(0, max - 1)}…`;
}

// ---------------------------------------------------------------------------
// Job classification.

const FINAL: ReadonlySet<string> = new Set<JobState>(['found', 'not_found', 'truncated', 'error', 'cancelled']);
const PROBLEMS: ReadonlySet<string> = new Set<JobState>(['truncated', 'error', 'cancelled']);

function endState(job: RunJob): JobState | undefined {
  if (job.result) return job.result.state;
  return FINAL.has(job.phase) ? (job.phase as JobState) : undefined;
}

function isUnverified(job: RunJob): boolean {
  return endState(job) === 'found' && job.result?.verified !== true;
}

function matches(job: RunJob, filter: JobFilter): boolean {
  const state = endState(job);
  switch (filter) {
    case 'all':
      return true;
    case 'found':
      return state === 'found';
    case 'not_found':
      return state === 'not_found';
    case 'unverified':
      return isUnverified(job);
    case 'problems':
      return state !== undefined && PROBLEMS.has(state);
  }
}

type CountKey = 'found' | 'not_found' | 'unverified' | 'truncated' | 'error' | 'cancelled' | 'queued' | 'running';
const COUNT_LABELS: Array<[CountKey, string]> = [
  ['found', 'found'],
  ['not_found', 'not found'],
  ['unverified', 'unverified'],
  ['truncated', 'truncated'],
  ['error', 'error'],
  ['cancelled', 'cancelled'],
  ['queued', 'queued'],
  ['running', 'running'],
];

function countJobs(jobs: RunJob[]): Record<CountKey, number> & { done: number; total: number; byQuestion: Map<number, number> } {
  const c = { found: 0, not_found: 0, unverified: 0, truncated: 0, error: 0, cancelled: 0, queued: 0, running: 0, done: 0, total: jobs.length, byQuestion: new Map<number, number>() };
  for (const job of jobs) {
    const state = endState(job);
    if (state) {
      c[state]++;
      c.done++;
      if (state === 'found') {
        c.byQuestion.set(job.question, (c.byQuestion.get(job.question) ?? 0) + 1);
        if (isUnverified(job)) c.unverified++;
      }
    } else if (job.phase === 'queued') c.queued++;
    else c.running++;
  }
  return c;
}

// ---------------------------------------------------------------------------
// State: what the webview remembers across hide/show (vscode.setState).

interface SavedState {
  v: 1;
  selected?: string;
  filter: JobFilter;
  /** Selected question tab per run. */
  tabs: Record<string, number>;
  /** The selected run in full, the others without jobs: drawn at once on restore, replaced by the extension's `runs`. */
  runs: RunView[];
}

const FILTERS: Array<[JobFilter, string]> = [
  ['all', 'All'],
  ['found', 'Found'],
  ['not_found', 'Not found'],
  ['unverified', 'Unverified'],
  ['problems', 'Problems'],
];
const isFilter = (x: unknown): x is JobFilter => FILTERS.some(([f]) => f === x);

let runs: RunView[] = [];
let selectedId: string | undefined;
let filter: JobFilter = 'all';
let tabs: Record<string, number> = {};

function readSavedState(): void {
  const s = vscode.getState() as Partial<SavedState> | undefined;
  if (!s || typeof s !== 'object' || s.v !== 1) return;
  if (isFilter(s.filter)) filter = s.filter;
  if (s.tabs && typeof s.tabs === 'object') tabs = { ...s.tabs };
  if (Array.isArray(s.runs)) runs = s.runs.filter((r) => r && typeof r.id === 'string' && Array.isArray(r.jobs));
  if (typeof s.selected === 'string') selectedId = s.selected;
}

let saveTimer: ReturnType<typeof setTimeout> | undefined;

function saveState(now = false): void {
  // At most one save pending, not pushed back by each call: updates every 250 ms would otherwise never let it fire.
  if (!now && saveTimer !== undefined) return;
  if (saveTimer !== undefined) clearTimeout(saveTimer);
  saveTimer = undefined;
  const write = () => {
    saveTimer = undefined;
    const ids = new Set(runs.map((r) => r.id));
    const keptTabs: Record<string, number> = {};
    for (const [id, t] of Object.entries(tabs)) if (ids.has(id)) keptTabs[id] = t;
    const state: SavedState = {
      v: 1,
      selected: selectedId,
      filter,
      tabs: keptTabs,
      runs: runs.map((r) => (r.id === selectedId ? r : withoutJobs(r))),
    };
    vscode.setState(state);
  };
  if (now) write();
  else saveTimer = setTimeout(write, 500);
}

// ---------------------------------------------------------------------------
// The page skeleton: built once.

const app = el('main', 'app');
const topbar = el('div', 'topbar');
const runPickerLabel = el('label', 'run-picker-label', 'Run', { id: 'run-picker-label', for: 'run-picker' });
let runPicker: HTMLElement & { value: string };
const emptyView = el('div', 'empty', 'No runs yet. Ask a question about your files and its results appear here, live.');
const runView = el('section', 'run', undefined, { 'aria-labelledby': 'run-title' });

// Header parts.
const header = el('header', 'run-header');
const titleLine = el('div', 'run-title-line');
const statusPill = el('span', 'status-pill');
const runTitle = el('h1', 'run-title', undefined, { id: 'run-title' });
const runMeta = el('div', 'run-meta');
const runError = el('p', 'run-error', undefined, { role: 'alert' });
const countsEl = el('div', 'run-counts', undefined, { 'aria-live': 'polite', 'aria-atomic': 'true', role: 'status' });
const countEls = new Map<CountKey, { root: HTMLElement; value: HTMLElement }>();
const statsEl = el('div', 'run-stats');
const runProgress = el('div', 'run-progress', undefined, { role: 'progressbar', 'aria-label': 'Jobs done', 'aria-valuemin': '0' });
const runProgressFill = el('div', 'run-progress-fill');
const actions = el('div', 'run-actions', undefined, { role: 'toolbar', 'aria-label': 'Run actions' });
const filtersEl = el('div', 'filters', undefined, { role: 'group', 'aria-label': 'Show jobs' });
const filterButtons = new Map<JobFilter, { button: HTMLButtonElement; count: HTMLElement }>();
const questionsEl = el('div', 'questions');
const skippedEl = el('details', 'skipped');

let cancelBtn: HTMLElement;
let rerunFailedBtn: HTMLElement;
let deleteBtn: HTMLElement;
const exportBtns: HTMLElement[] = [];

function buildSkeleton(): void {
  document.body.classList.add('mlx-results');
  topbar.append(runPickerLabel);
  runPicker = makeRunPicker();
  topbar.append(runPicker);

  titleLine.append(statusPill, runTitle);
  for (const [key, label] of COUNT_LABELS) {
    const root = el('span', `count count-${key}`);
    const value = el('span', 'count-value', '0');
    root.append(value, document.createTextNode(` ${label}`));
    countEls.set(key, { root, value });
    countsEl.append(root);
  }
  runProgress.append(runProgressFill);

  cancelBtn = actionButton('Cancel', 'action:cancel', () => selectedId && post({ type: 'cancel', runId: selectedId }));
  rerunFailedBtn = actionButton('Rerun failed', 'action:rerunFailed', () => selectedId && post({ type: 'rerunFailed', runId: selectedId }), {
    secondary: true,
    ariaLabel: 'Rerun the truncated, failed and cancelled jobs',
  });
  const exportGroup = el('span', 'export-group', undefined, { role: 'group', 'aria-label': 'Export' });
  exportGroup.append(el('span', 'export-label', 'Export', { 'aria-hidden': 'true' }));
  for (const [format, label] of [['markdown', 'Markdown'], ['json', 'JSON'], ['csv', 'CSV']] as Array<[ExportFormat, string]>) {
    const b = actionButton(label, `action:export:${format}`, () => selectedId && post({ type: 'export', runId: selectedId, format }), {
      secondary: true,
      ariaLabel: `Export as ${label}`,
    });
    exportBtns.push(b);
    exportGroup.append(b);
  }
  deleteBtn = actionButton('Delete run', 'action:delete', () => selectedId && post({ type: 'deleteRun', runId: selectedId }), { secondary: true });
  actions.append(cancelBtn, rerunFailedBtn, exportGroup, deleteBtn);

  for (const [f, label] of FILTERS) {
    const button = el('button', 'filter', undefined, { type: 'button', 'aria-pressed': 'false' });
    button.dataset.filter = f;
    button.dataset.focusKey = `filter:${f}`;
    const count = el('span', 'filter-count');
    button.append(el('span', 'filter-label', label), count);
    button.addEventListener('click', () => setFilter(f));
    filterButtons.set(f, { button, count });
    filtersEl.append(button);
  }

  header.append(titleLine, runMeta, runError, countsEl, statsEl, runProgress, actions);
  runView.append(header, filtersEl, questionsEl, skippedEl);
  app.append(topbar, emptyView, runView);
  // The extension's page has <div id="app">; mount there when it is present.
  (document.getElementById('app') ?? document.body).append(app);
}

function makeRunPicker(): HTMLElement & { value: string } {
  const picker = (USE_SELECT ? el('vscode-single-select', 'run-picker') : el('select', 'run-picker native-select')) as unknown as HTMLElement & {
    value: string;
  };
  picker.setAttribute('aria-labelledby', 'run-picker-label');
  picker.id = 'run-picker';
  picker.dataset.focusKey = 'run-picker';
  picker.addEventListener('change', () => {
    const id = picker.value;
    if (id && id !== selectedId && runs.some((r) => r.id === id)) {
      selectedId = id;
      renderSelectedRun();
      post({ type: 'select', runId: id });
      saveState(true);
    }
  });
  return picker;
}

function runLabel(run: RunView): string {
  const status = run.status === 'done' ? '' : ` (${run.status})`;
  const more = run.questions.length > 1 ? ` +${run.questions.length - 1}` : '';
  return `${formatStarted(run.started)} · ${shorten(run.questions[0] ?? '(no question)', 60)}${more}${status}`;
}

function renderRunList(): void {
  runPicker.replaceChildren();
  for (const run of runs) {
    const option = USE_SELECT ? el('vscode-option') : el('option');
    option.textContent = runLabel(run);
    option.setAttribute('value', run.id);
    (option as unknown as { value: string }).value = run.id;
    if (run.id === selectedId) {
      option.setAttribute('selected', '');
      (option as unknown as { selected: boolean }).selected = true;
    }
    if (USE_SELECT) option.setAttribute('description', `${run.scope} · ${run.model}`);
    runPicker.append(option);
  }
  if (!USE_SELECT && selectedId) runPicker.value = selectedId;
  runPicker.toggleAttribute('disabled', runs.length === 0);
}

// ---------------------------------------------------------------------------
// The selected run.

interface FileGroup {
  el: HTMLElement;
  rowsEl: HTMLElement;
  countEl: HTMLElement;
  rows: Row[];
}

interface QuestionView {
  index: number;
  panel: HTMLElement;
  tabCount?: HTMLElement;
  summary: HTMLElement;
  summaryBody: HTMLElement;
  filesEl: HTMLElement;
  noMatch: HTMLElement;
  groups: Map<string, FileGroup>;
}

interface Row {
  job: RunJob;
  el: HTMLElement;
  group: FileGroup;
  question: QuestionView;
  loc: HTMLButtonElement;
  badge: HTMLElement;
  meta: HTMLElement;
  progress: HTMLElement;
  progressFill: HTMLElement;
  stream: HTMLPreElement;
  body: HTMLElement;
  copy: HTMLButtonElement;
  rerun: HTMLButtonElement;
  /** What the body was last drawn from, so a repeated final update does not re-render the Markdown. */
  bodyKey: string;
}

let current: RunView | undefined;
const rows = new Map<string, Row>();
const jobIndex = new Map<string, RunJob>();
let questionViews: QuestionView[] = [];

function selectedRun(): RunView | undefined {
  return runs.find((r) => r.id === selectedId);
}

function renderSelectedRun(): void {
  const focusKey = (document.activeElement as HTMLElement | null)?.dataset?.focusKey;
  const scrollY = window.scrollY;
  rows.clear();
  jobIndex.clear();
  questionViews = [];
  questionsEl.replaceChildren();
  current = selectedRun();
  renderRunList();
  emptyView.hidden = current !== undefined;
  runView.hidden = current === undefined;
  if (!current) return;
  const run = current;
  for (const job of run.jobs) jobIndex.set(job.id, job);

  // Questions: tabs when the component is there, else stacked sections.
  const tab = Math.min(Math.max(0, tabs[run.id] ?? 0), Math.max(0, run.questions.length - 1));
  const tabsEl = USE_TABS ? el('vscode-tabs', 'question-tabs', undefined, { 'selected-index': String(tab) }) : undefined;
  run.questions.forEach((question, index) => {
    const panel = el(USE_TABS ? 'vscode-tab-panel' : 'section', 'question-panel');
    panel.dataset.question = String(index);
    const view: QuestionView = {
      index,
      panel,
      summary: el('section', 'summary', undefined, { 'aria-label': `Summary for question ${index + 1}` }),
      summaryBody: el('div', 'summary-body markdown'),
      filesEl: el('div', 'files'),
      noMatch: el('p', 'no-match', 'No jobs match this filter.'),
      groups: new Map(),
    };
    if (tabsEl) {
      const h = el('vscode-tab-header', 'question-tab', undefined, { title: question });
      h.dataset.focusKey = `tab:${index}`;
      h.append(el('span', 'tab-label', `Q${index + 1} · ${shorten(question, 32)}`));
      view.tabCount = el('span', 'tab-count', '0');
      h.append(view.tabCount, el('span', 'sr-only', ' found'));
      tabsEl.append(h);
    }
    panel.append(el(USE_TABS ? 'p' : 'h2', 'question-text', `Q${index + 1}. ${question}`));
    view.summary.append(el('h3', 'summary-title', 'Summary'), view.summaryBody);
    panel.append(view.summary, view.noMatch, view.filesEl);
    renderSummary(view, run.summaries[index] ?? null);
    questionViews.push(view);
    (tabsEl ?? questionsEl).append(panel);
  });
  if (tabsEl) {
    tabsEl.addEventListener('vsc-tabs-select', (ev) => {
      const index = (ev as CustomEvent<{ selectedIndex: number }>).detail?.selectedIndex;
      if (Number.isInteger(index) && current) {
        tabs[current.id] = index;
        saveState(true);
      }
    });
    questionsEl.append(tabsEl);
  }

  for (const job of run.jobs) addRow(job);

  renderSkipped(run);
  renderHeader();
  applyFilterAll();
  if (focusKey) restoreFocus(focusKey);
  if (window.scrollY !== scrollY) window.scrollTo(0, scrollY);
}

function restoreFocus(key: string): void {
  if (document.activeElement && document.activeElement !== document.body) return;
  for (const e of document.querySelectorAll<HTMLElement>('[data-focus-key]')) {
    if (e.dataset.focusKey === key) {
      e.focus();
      return;
    }
  }
}

function renderSummary(view: QuestionView, summary: string | null): void {
  view.summary.hidden = !summary;
  if (summary) view.summaryBody.innerHTML = renderAnswerHtml(summary, purify);
  else view.summaryBody.replaceChildren();
}

function renderSkipped(run: RunView): void {
  skippedEl.replaceChildren();
  skippedEl.hidden = run.skipped.length === 0;
  if (run.skipped.length === 0) return;
  skippedEl.append(el('summary', undefined, `${n(run.skipped.length)} file${run.skipped.length === 1 ? '' : 's'} skipped`));
  const list = el('ul', 'skipped-list');
  for (const s of run.skipped) {
    const li = el('li');
    li.append(el('span', 'skipped-file', s.file), document.createTextNode(' — '), el('span', 'skipped-reason', s.reason));
    list.append(li);
  }
  skippedEl.append(list);
}

function groupFor(view: QuestionView, file: string): FileGroup {
  let group = view.groups.get(file);
  if (group) return group;
  const section = el('section', 'file-group');
  section.dataset.file = file;
  const head = el('h3', 'file-head');
  const name = el('span', 'file-name', file, { title: file });
  const countEl = el('span', 'file-count');
  head.append(name, countEl);
  const rowsEl = el('div', 'file-rows');
  section.append(head, rowsEl);
  view.filesEl.append(section);
  group = { el: section, rowsEl, countEl, rows: [] };
  view.groups.set(file, group);
  return group;
}

function addRow(job: RunJob): Row | undefined {
  const view = questionViews[job.question];
  if (!view) return undefined;
  const group = groupFor(view, job.file);
  const id = job.id;
  const article = el('article', 'job', undefined, { 'aria-label': `${job.file}, ${lineRange(job.start_line, job.end_line)}` });
  article.dataset.jobId = id;
  article.dataset.question = String(job.question);

  const head = el('div', 'job-head');
  const loc = rowButton(lineRange(job.start_line, job.end_line), 'loc link', `Open ${job.file}, ${lineRange(job.start_line, job.end_line)}`, `job:${id}:loc`);
  loc.addEventListener('click', () => openFile(job.file, job.start_line, job.end_line));
  const badge = el('span', 'badge');
  const meta = el('span', 'job-meta');
  const tools = el('span', 'job-tools');
  const copy = rowButton('Copy', 'row-action copy', `Copy the answer for ${job.file}, ${lineRange(job.start_line, job.end_line)}`, `job:${id}:copy`);
  copy.addEventListener('click', () => {
    const answer = rows.get(id)?.job.result?.answer;
    if (answer) post({ type: 'copy', text: answer });
  });
  const rerun = rowButton('Rerun', 'row-action rerun', `Rerun ${job.file}, ${lineRange(job.start_line, job.end_line)}`, `job:${id}:rerun`);
  rerun.addEventListener('click', () => current && post({ type: 'rerunJob', runId: current.id, jobId: id }));
  tools.append(copy, rerun);
  head.append(loc, badge, meta, tools);

  const progress = el('div', 'progress', undefined, { role: 'progressbar', 'aria-label': 'Prompt read', 'aria-valuemin': '0' });
  const progressFill = el('div', 'progress-fill');
  progress.append(progressFill);
  const stream = el('pre', 'stream', undefined, { 'aria-label': 'Model output so far' });
  const body = el('div', 'job-body');
  article.append(head, progress, stream, body);
  group.rowsEl.append(article);

  const row: Row = { job, el: article, group, question: view, loc, badge, meta, progress, progressFill, stream, body, copy, rerun, bodyKey: '' };
  group.rows.push(row);
  rows.set(id, row);
  patchRow(row);
  return row;
}

function openFile(file: string, startLine: number, endLine: number): void {
  if (!current) return;
  const ok = (x: unknown): x is number => Number.isInteger(x) && (x as number) >= 1;
  if (!ok(startLine) || !ok(endLine)) return;
  post({ type: 'openFile', file, startLine, endLine: Math.max(startLine, endLine), runId: current.id });
}

function phaseText(job: RunJob): string {
  switch (job.phase) {
    case 'queued':
      return 'queued';
    case 'reading':
      return job.prompt_tokens
        ? `reading ${n(Math.min(job.prefilled_tokens ?? 0, job.prompt_tokens))} / ${n(job.prompt_tokens)} tokens`
        : 'reading';
    case 'generating':
      return job.generated_tokens ? `generating · ${n(job.generated_tokens)} tokens` : 'generating';
    case 'found':
      return isUnverified(job) ? 'found · unverified' : 'found';
    case 'not_found':
      return 'not found';
    default:
      return job.phase;
  }
}

/** Brings one row in line with its job. Cheap unless the final content changed. */
function patchRow(row: Row): void {
  const job = row.job;
  const state = endState(job);
  row.el.dataset.phase = job.phase;
  if (state) row.el.dataset.state = state;
  else delete row.el.dataset.state;
  row.el.classList.toggle('unverified', isUnverified(job));

  const text = phaseText(job);
  if (row.badge.textContent !== text) row.badge.textContent = text;
  row.badge.className = `badge badge-${state ? (isUnverified(job) ? 'unverified' : state) : job.phase}`;

  const r = job.result;
  const meta = r ? `${n(r.generated_tokens)} tok · ${formatSeconds(r.seconds)}${r.attempts > 1 ? ` · ${r.attempts} tries` : ''}` : '';
  if (row.meta.textContent !== meta) row.meta.textContent = meta;

  // Reading: a bar so a long prefill is visibly moving, not hung.
  const reading = job.phase === 'reading' && !!job.prompt_tokens;
  row.progress.hidden = !reading;
  if (reading) {
    const total = job.prompt_tokens ?? 0;
    const done = Math.min(job.prefilled_tokens ?? 0, total);
    row.progressFill.style.width = `${total ? Math.round((done / total) * 100) : 0}%`;
    row.progress.setAttribute('aria-valuemax', String(total));
    row.progress.setAttribute('aria-valuenow', String(done));
  }

  // Generating: the raw text, as text.
  const generating = job.phase === 'generating';
  row.stream.hidden = !generating || !job.text;
  if (generating && (job.text ?? '') !== row.stream.textContent) {
    row.stream.textContent = job.text ?? '';
    row.stream.scrollTop = row.stream.scrollHeight;
  }
  if (!generating && row.stream.textContent) row.stream.textContent = '';

  // Final: the answer and what backs it.
  const key = state ? JSON.stringify([state, r ?? null]) : '';
  if (key !== row.bodyKey) {
    row.bodyKey = key;
    renderBody(row, state);
  }
  row.body.hidden = row.body.childElementCount === 0;
  row.copy.hidden = !r?.answer;
  row.rerun.hidden = !state;
}

function renderBody(row: Row, state: JobState | undefined): void {
  const job = row.job;
  const r = job.result;
  const parts: HTMLElement[] = [];
  if (state && r) {
    if (r.answer) {
      const answer = el('div', 'answer markdown');
      answer.innerHTML = renderAnswerHtml(r.answer, purify);
      parts.push(answer);
    }
    if (r.explanation) parts.push(el('p', 'explanation', r.explanation));
    if (r.citation && r.citation.quote) {
      const c = r.citation;
      const located = Number.isInteger(c.start_line) && Number.isInteger(c.end_line) && (c.start_line as number) >= 1;
      const start = located ? (c.start_line as number) : job.start_line;
      const end = located ? (c.end_line as number) : job.end_line;
      const verified = state === 'found' ? r.verified : located;
      const label = `Open the quoted ${lineRange(start, end)} of ${job.file}${verified ? '' : ' (quote not verified)'}`;
      const cite = rowButton('', `citation ${verified ? 'verified' : 'unverified'}`, label, `job:${job.id}:cite`);
      cite.removeAttribute('title');
      cite.append(el('span', 'quote', c.quote));
      const mark = el('span', `cite-mark ${verified ? 'cite-verified' : 'cite-unverified'}`);
      mark.textContent = verified ? `✓ verified · ${lineRange(start, end)}` : '⚠ unverified: quote not found in the chunk';
      cite.append(mark);
      cite.addEventListener('click', () => openFile(job.file, start, end));
      parts.push(cite);
    } else if (state === 'found' && !r.verified) {
      parts.push(el('p', 'cite-mark cite-unverified', '⚠ unverified: no quote given'));
    }
    if (r.error) parts.push(el('p', 'job-error', r.error, { role: 'note' }));
  }
  if (state && PROBLEMS.has(state) && !r?.error) {
    parts.push(el('p', 'job-error', state === 'cancelled' ? 'Cancelled before it finished.' : state === 'truncated' ? 'The answer ran out of tokens.' : 'Failed.'));
  }
  row.body.replaceChildren(...parts);
}

// ---------------------------------------------------------------------------
// Header and counts.

let lastCountsText = '';

function renderHeader(): void {
  const run = current;
  if (!run) return;
  const counts = countJobs(run.jobs);
  statusPill.textContent = run.status;
  statusPill.className = `status-pill status-${run.status}`;
  runTitle.textContent = run.questions.length === 1 ? shorten(run.questions[0], 120) : `${n(run.questions.length)} questions`;
  runTitle.title = run.questions.join('\n');
  runMeta.textContent = `${run.scope} · ${run.model} · started ${formatStarted(run.started)}`;
  runError.hidden = !run.error;
  runError.textContent = run.error ?? '';

  // Counts: the aria-live region, touched only when a count changes.
  const countsText = COUNT_LABELS.map(([k]) => counts[k]).join(',');
  if (countsText !== lastCountsText) {
    lastCountsText = countsText;
    for (const [key] of COUNT_LABELS) {
      const c = countEls.get(key)!;
      c.value.textContent = n(counts[key]);
      c.root.classList.toggle('zero', counts[key] === 0);
      c.root.hidden = counts[key] === 0 && (key === 'queued' || key === 'running') && run.status !== 'running';
    }
  }

  const t = run.totals;
  const seconds = t?.wall_seconds ?? run.elapsedSeconds;
  const tokens = t?.generated_tokens ?? run.generatedTokens;
  const rate = t?.tokens_per_second ?? run.tokensPerSecond;
  statsEl.textContent = `${n(counts.done)} / ${n(counts.total)} jobs · ${formatSeconds(seconds)} · ${n(tokens)} tokens generated · ${rateFormat.format(rate || 0)} tok/s`;
  runProgress.setAttribute('aria-valuemax', String(counts.total));
  runProgress.setAttribute('aria-valuenow', String(counts.done));
  runProgressFill.style.width = `${counts.total ? Math.round((counts.done / counts.total) * 100) : 0}%`;
  runProgress.hidden = run.status !== 'running';

  const running = run.status === 'running';
  cancelBtn.hidden = !running;
  const problems = counts.truncated + counts.error + counts.cancelled;
  rerunFailedBtn.hidden = running;
  setDisabled(rerunFailedBtn, problems === 0);
  setDisabled(deleteBtn, running);
  for (const b of exportBtns) setDisabled(b, counts.done === 0);

  const filterCounts: Record<JobFilter, number> = {
    all: counts.total,
    found: counts.found,
    not_found: counts.not_found,
    unverified: counts.unverified,
    problems,
  };
  for (const [f, { button, count }] of filterButtons) {
    count.textContent = n(filterCounts[f]);
    button.setAttribute('aria-pressed', String(f === filter));
    button.classList.toggle('active', f === filter);
  }
  for (const view of questionViews) {
    if (view.tabCount) view.tabCount.textContent = n(counts.byQuestion.get(view.index) ?? 0);
  }
}

// ---------------------------------------------------------------------------
// Filtering.

function setFilter(f: JobFilter): void {
  if (f === filter) return;
  filter = f;
  applyFilterAll();
  renderHeader();
  saveState(true);
}

function applyRowFilter(row: Row): void {
  row.el.hidden = !matches(row.job, filter);
}

function applyGroup(group: FileGroup): void {
  let visible = 0;
  let found = 0;
  for (const row of group.rows) {
    if (!row.el.hidden) visible++;
    if (endState(row.job) === 'found') found++;
  }
  group.el.hidden = visible === 0;
  const text = `${n(group.rows.length)} chunk${group.rows.length === 1 ? '' : 's'}${found ? ` · ${n(found)} found` : ''}`;
  if (group.countEl.textContent !== text) group.countEl.textContent = text;
}

function applyQuestion(view: QuestionView): void {
  let any = false;
  for (const g of view.groups.values()) if (!g.el.hidden) any = true;
  view.noMatch.hidden = any || view.groups.size === 0;
}

function applyFilterAll(): void {
  for (const row of rows.values()) applyRowFilter(row);
  for (const view of questionViews) {
    for (const g of view.groups.values()) applyGroup(g);
    applyQuestion(view);
  }
}

// ---------------------------------------------------------------------------
// Messages.

function sortRuns(list: RunView[]): RunView[] {
  return [...list].sort((a, b) => (Date.parse(b.started) || 0) - (Date.parse(a.started) || 0));
}

function applyUpdate(run: RunView, index: Map<string, RunJob> | undefined, u: JobUpdate): RunJob {
  const job = index?.get(u.id) ?? run.jobs.find((j) => j.id === u.id);
  if (job) {
    job.phase = u.phase;
    if (u.text !== undefined) job.text = u.text;
    else if (u.phase !== 'generating') delete job.text;
    if (u.prefilled_tokens !== undefined) job.prefilled_tokens = u.prefilled_tokens;
    if (u.prompt_tokens !== undefined) job.prompt_tokens = u.prompt_tokens;
    if (u.generated_tokens !== undefined) job.generated_tokens = u.generated_tokens;
    if (u.result !== undefined) job.result = u.result;
    else if (!FINAL.has(u.phase)) delete job.result;
    return job;
  }
  const fresh: RunJob = { ...u };
  run.jobs.push(fresh);
  return fresh;
}

function onJobs(msg: Extract<ToWebview, { type: 'jobs' }>): void {
  const run = runs.find((r) => r.id === msg.runId);
  if (!run) return;
  run.elapsedSeconds = msg.elapsedSeconds;
  run.generatedTokens = msg.generatedTokens;
  run.tokensPerSecond = msg.tokensPerSecond;
  const visible = current !== undefined && current.id === run.id;
  const touchedGroups = new Set<FileGroup>();
  const touchedQuestions = new Set<QuestionView>();
  for (const u of msg.updates) {
    if (!u || typeof u.id !== 'string') continue;
    const job = applyUpdate(run, visible ? jobIndex : undefined, u);
    if (!visible) continue;
    let row = rows.get(job.id);
    if (!row) {
      jobIndex.set(job.id, job);
      row = addRow(job);
      if (!row) continue;
    } else {
      patchRow(row);
    }
    applyRowFilter(row);
    touchedGroups.add(row.group);
    touchedQuestions.add(row.question);
  }
  if (visible) {
    for (const g of touchedGroups) applyGroup(g);
    for (const q of touchedQuestions) applyQuestion(q);
    renderHeader();
  }
  saveState();
}

/**
 * The shown run again, now ended: its rows are patched in place. A rebuild
 * would render every answer's Markdown again (seconds for a big run).
 */
function patchShownRun(next: RunView): boolean {
  if (!current || current.id !== next.id || next.questions.length !== questionViews.length) return false;
  const run = current;
  for (const job of next.jobs) {
    const known = jobIndex.get(job.id);
    if (!known) {
      run.jobs.push(job);
      jobIndex.set(job.id, job);
      const row = addRow(job);
      if (row) applyRowFilter(row);
      continue;
    }
    for (const key of Object.keys(known)) if (!(key in job)) delete (known as unknown as Record<string, unknown>)[key];
    Object.assign(known, job);
    const row = rows.get(job.id);
    if (row) patchRow(row);
  }
  Object.assign(run, { ...next, jobs: run.jobs });
  questionViews.forEach((view, i) => renderSummary(view, run.summaries[i] ?? null));
  renderSkipped(run);
  renderHeader();
  applyFilterAll();
  renderRunList();
  return true;
}

function onMessage(msg: ToWebview): void {
  switch (msg.type) {
    case 'run': {
      // A run in full (it came without its jobs in 'runs'): drawn when it is the selected one.
      if (!msg.run || typeof msg.run.id !== 'string' || !Array.isArray(msg.run.jobs)) break;
      runs = sortRuns([msg.run, ...runs.filter((r) => r.id !== msg.run.id)]);
      if (selectedId === msg.run.id) renderSelectedRun();
      else renderRunList();
      saveState(true);
      break;
    }
    case 'runs': {
      const sent = Array.isArray(msg.runs) ? msg.runs : [];
      // The extension sends one run with its jobs: the one it has selected, else its newest (first).
      const sentInFull = msg.selected !== undefined && sent.some((r) => r.id === msg.selected) ? msg.selected : sent[0]?.id;
      runs = sortRuns(sent);
      const wanted = [msg.selected, selectedId].find((id) => id !== undefined && runs.some((r) => r.id === id));
      selectedId = wanted ?? runs[0]?.id;
      renderSelectedRun();
      // Another run restored as selected here (after a reload): ask for it in full.
      if (selectedId !== undefined && selectedId !== sentInFull) post({ type: 'select', runId: selectedId });
      saveState(true);
      break;
    }
    case 'runStarted': {
      runs = sortRuns([msg.run, ...runs.filter((r) => r.id !== msg.run.id)]);
      selectedId = msg.run.id;
      renderSelectedRun();
      saveState(true);
      break;
    }
    case 'runEnded': {
      if (patchShownRun(msg.run)) {
        saveState(true);
        break;
      }
      const had = runs.some((r) => r.id === msg.run.id);
      runs = sortRuns(had ? runs.map((r) => (r.id === msg.run.id ? msg.run : r)) : [msg.run, ...runs]);
      if (selectedId === undefined) selectedId = msg.run.id;
      if (selectedId === msg.run.id) renderSelectedRun();
      else renderRunList();
      saveState(true);
      break;
    }
    case 'jobs':
      onJobs(msg);
      break;
    case 'summary': {
      const run = runs.find((r) => r.id === msg.runId);
      if (!run) break;
      while (run.summaries.length <= msg.question) run.summaries.push(null);
      run.summaries[msg.question] = msg.summary;
      if (current?.id === run.id && questionViews[msg.question]) renderSummary(questionViews[msg.question], msg.summary);
      saveState();
      break;
    }
  }
}

// ---------------------------------------------------------------------------
// Start.

buildSkeleton();
readSavedState();
if (selectedId === undefined || !runs.some((r) => r.id === selectedId)) selectedId = runs[0]?.id;
renderSelectedRun();
window.addEventListener('message', (event: MessageEvent) => {
  const msg = event.data as ToWebview | undefined;
  if (!msg || typeof msg !== 'object' || typeof (msg as { type?: unknown }).type !== 'string') return;
  onMessage(msg);
});
post({ type: 'ready' });
