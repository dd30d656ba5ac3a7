// The one protocol between the extension (src/extension/results-panel.ts) and
// the results webview (media/results.ts). Messages are plain JSON; the
// webview holds no state the extension cannot replay: when it becomes visible
// again (or after a window reload) the extension sends `runs` afresh.
import type { AskReport, JobUpdate, SkippedFile } from '../ask/report.js';

/** One row of a run: a (question x chunk) job, live or finished. */
export type RunJob = JobUpdate;

export type RunStatus = 'running' | 'done' | 'cancelled' | 'failed';

/** What the webview needs to draw a run; also what is saved in workspace storage. */
export interface RunView {
  id: string;
  /** ISO time the run started. */
  started: string;
  status: RunStatus;
  /** Why a run failed as a whole (model load, bad settings), when it did. */
  error?: string;
  questions: string[];
  /** Human description of what was asked about: "3 files in src/", "open editors", ... */
  scope: string;
  model: string;
  jobs: RunJob[];
  skipped: SkippedFile[];
  summaries: Array<string | null>;
  /** Filled in when the run ends. */
  totals?: AskReport['totals'];
  /** Live while running. */
  elapsedSeconds: number;
  generatedTokens: number;
  tokensPerSecond: number;
}

export type JobFilter = 'all' | 'found' | 'not_found' | 'unverified' | 'problems';
export type ExportFormat = 'markdown' | 'json' | 'csv';

/** A run as listed beside the shown one, without its jobs: both the panel's `runs` and the webview's saved state send others so. */
export function withoutJobs(run: RunView): RunView {
  return { ...run, jobs: [], skipped: [] };
}

/** Extension -> webview. */
export type ToWebview =
  /** Every run, newest first, and which one to show; only that one with its jobs. Sent on open, on becoming visible, after a reload. */
  | { type: 'runs'; runs: RunView[]; selected?: string }
  /** One run in full: the answer to `select` (runs other than the selected one come without their jobs). */
  | { type: 'run'; run: RunView }
  /** A new run started (already planned: its jobs are queued). */
  | { type: 'runStarted'; run: RunView }
  /** Jobs moved; batched by the extension at most a few times a second. */
  | { type: 'jobs'; runId: string; updates: JobUpdate[]; elapsedSeconds: number; generatedTokens: number; tokensPerSecond: number }
  | { type: 'summary'; runId: string; question: number; summary: string }
  /** The run ended: its final state (statuses, totals, sorted results). */
  | { type: 'runEnded'; run: RunView };

/** Webview -> extension. */
export type FromWebview =
  | { type: 'ready' }
  | { type: 'select'; runId: string }
  | { type: 'openFile'; file: string; startLine: number; endLine: number; runId: string }
  | { type: 'copy'; text: string }
  | { type: 'rerunJob'; runId: string; jobId: string }
  | { type: 'rerunFailed'; runId: string }
  | { type: 'cancel'; runId: string }
  | { type: 'export'; runId: string; format: ExportFormat }
  | { type: 'deleteRun'; runId: string };

/** Checks a message from the webview (it is untrusted input: the model's text is rendered there). */
export function parseFromWebview(value: unknown): FromWebview | undefined {
  if (!value || typeof value !== 'object') return undefined;
  const m = value as Record<string, unknown>;
  const str = (k: string) => typeof m[k] === 'string';
  const int = (k: string) => Number.isInteger(m[k]) && (m[k] as number) >= 1;
  switch (m.type) {
    case 'ready':
      return { type: 'ready' };
    case 'select':
    case 'rerunFailed':
    case 'cancel':
    case 'deleteRun':
      return str('runId') ? { type: m.type, runId: m.runId as string } : undefined;
    case 'openFile':
      return str('file') && str('runId') && int('startLine') && int('endLine')
        ? { type: 'openFile', file: m.file as string, startLine: m.startLine as number, endLine: m.endLine as number, runId: m.runId as string }
        : undefined;
    case 'copy':
      return str('text') ? { type: 'copy', text: m.text as string } : undefined;
    case 'rerunJob':
      return str('runId') && str('jobId') ? { type: 'rerunJob', runId: m.runId as string, jobId: m.jobId as string } : undefined;
    case 'export':
      return str('runId') && (m.format === 'markdown' || m.format === 'json' || m.format === 'csv')
        ? { type: 'export', runId: m.runId as string, format: m.format }
        : undefined;
    default:
      return undefined;
  }
}
