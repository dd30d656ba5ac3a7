// A stored run as the `ask` report (JSON), its Markdown, or CSV. Pure, so
// tests need no VS Code.
import path from 'node:path';
import { buildReport, renderMarkdown } from '../ask/aggregate.js';
import type { AskReport } from '../ask/report.js';
import type { RunRecord } from './run-store.js';
import type { ExportFormat } from './webview-protocol.js';

export function reportOfRun(run: RunRecord): AskReport {
  const finished = run.jobs.filter((j) => j.result);
  const synthesis = run.totals?.synthesis;
  const report = buildReport({
    model: run.model,
    backend: run.model.includes(' at ') ? 'OpenAI-compatible server' : 'built-in engine',
    questions: run.questions,
    results: finished.map((j) => ({ question: j.question, result: j.result! })),
    summaries: run.summaries,
    skipped: run.skipped,
    files: new Set(run.jobs.map((j) => j.file)).size,
    chunks: new Set(run.jobs.map((j) => `${j.file}:${j.start_line}`)).size,
    synthesis: { prompt: synthesis?.prompt_tokens ?? 0, cached: 0, generated: synthesis?.generated_tokens ?? 0 },
    wallSeconds: run.totals?.wall_seconds ?? run.elapsedSeconds,
    pipelineSeconds: run.totals?.pipeline_seconds ?? 0,
    cancelled: run.status === 'cancelled',
  });
  return { ...report, created: run.started };
}

const CSV_COLUMNS = ['question', 'file', 'start_line', 'end_line', 'state', 'verified', 'answer', 'explanation',
  'citation_start_line', 'citation_end_line', 'quote', 'error'] as const;

function csvCell(v: unknown): string {
  const s = v === null || v === undefined ? '' : String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function runToCsv(report: AskReport): string {
  const rows = report.questions.flatMap((q) => q.results.map((r) => [
    q.question, r.file, r.start_line, r.end_line, r.state, r.verified, r.answer, r.explanation,
    r.citation?.start_line, r.citation?.end_line, r.citation?.quote, r.error,
  ]));
  return [CSV_COLUMNS.join(','), ...rows.map((row) => row.map(csvCell).join(','))].join('\r\n') + '\r\n';
}

/** The run in `format`; a Markdown file's links are made to open the files from `target`'s folder. */
export function exportRunAs(run: RunRecord, format: ExportFormat, target?: string): string {
  const report = reportOfRun(run);
  if (format === 'json') return `${JSON.stringify(report, null, 2)}\n`;
  if (format === 'csv') return runToCsv(report);
  const linkBase = target ? path.relative(path.dirname(target), run.root).split(path.sep).join('/') : '';
  return renderMarkdown(report, { linkBase });
}
