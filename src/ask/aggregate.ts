// Finished jobs -> the report: grouped by question, ordered by what a reader
// wants first (verified answers), counted so the states add up to the jobs.
import path from 'node:path';
import { JOB_STATES, type AskReport, type JobResult, type JobState, type QuestionReport, type SkippedFile } from './report.js';

export interface ReportInput {
  model: string;
  backend: string;
  questions: string[];
  results: Array<{ question: number; result: JobResult }>;
  summaries: Array<string | null>;
  skipped: SkippedFile[];
  files: number;
  chunks: number;
  /** Tokens of the --synthesize calls (the jobs' own come from their results). */
  synthesis: { prompt: number; cached: number; generated: number };
  wallSeconds: number;
  pipelineSeconds: number;
  cancelled: boolean;
}

const STATE_ORDER: Record<JobState, number> = { found: 0, not_found: 1, truncated: 2, error: 3, cancelled: 4 };

/** Verified found answers first, then unverified ones, then the other states; each by file and line. */
export function compareResults(a: JobResult, b: JobResult): number {
  const rank = (r: JobResult) => STATE_ORDER[r.state] * 2 + (r.state === 'found' && !r.verified ? 1 : 0);
  return rank(a) - rank(b) || (a.file < b.file ? -1 : a.file > b.file ? 1 : 0) || a.start_line - b.start_line;
}

export function buildReport(input: ReportInput): AskReport {
  const questions: QuestionReport[] = input.questions.map((question, q) => ({
    question,
    summary: input.summaries[q] ?? null,
    results: input.results.filter((r) => r.question === q).map((r) => r.result).sort(compareResults),
  }));
  const all = input.results.map((r) => r.result);
  const states = Object.fromEntries(JOB_STATES.map((s) => [s, 0])) as Record<JobState, number>;
  for (const r of all) states[r.state]++;
  const wall = input.wallSeconds;
  const sum = (f: (r: JobResult) => number) => all.reduce((n, r) => n + f(r), 0);
  const syn = input.synthesis;
  const prompt = sum((r) => r.prompt_tokens) + syn.prompt;
  const cached = sum((r) => r.cached_tokens) + syn.cached;
  const generated = sum((r) => r.generated_tokens) + syn.generated;
  return {
    version: 1,
    created: new Date().toISOString(),
    model: input.model,
    backend: input.backend,
    questions,
    skipped: [...input.skipped].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0)),
    totals: {
      jobs: all.length,
      states,
      found_unverified: all.filter((r) => r.state === 'found' && !r.verified).length,
      files: input.files,
      chunks: input.chunks,
      prompt_tokens: prompt,
      prefilled_tokens: prompt - cached,
      cached_tokens: cached,
      generated_tokens: generated,
      synthesis: { prompt_tokens: syn.prompt, generated_tokens: syn.generated },
      wall_seconds: round(wall, 3),
      tokens_per_second: wall > 0 ? round(generated / wall, 2) : 0,
      pipeline_seconds: round(input.pipelineSeconds, 4),
    },
    cancelled: input.cancelled,
  };
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

// ---------------------------------------------------------------------------
// Markdown: the --out report.md and what the CLI prints at the end.

const lines = (r: JobResult) => (r.start_line === r.end_line ? `L${r.start_line}` : `L${r.start_line}-L${r.end_line}`);
const citedLines = (r: JobResult) => (r.citation?.start_line != null
  ? (r.citation.start_line === r.citation.end_line ? `L${r.citation.start_line}` : `L${r.citation.start_line}-L${r.citation.end_line}`)
  : lines(r));
const oneLine = (s: string) => s.replace(/\s+/g, ' ').trim();
const isWordChar = (c: string | undefined) => c !== undefined && /[\p{L}\p{N}]/u.test(c);

/**
 * Text as itself in Markdown: `__init__.py`, `2 * 3`, `Promise<Config>` and
 * `[x]` would otherwise turn into emphasis, HTML or links. An underscore
 * inside a word (`max_retries`) is left as is: it cannot start emphasis.
 */
export function markdownText(s: string): string {
  return oneLine(s)
    .replace(/[\\`*<>[\]]/g, '\\$&')
    .replace(/&(?=#?[a-zA-Z0-9]+;)/g, '\\&') // &amp; as written, not as &
    .replace(/_/g, (u, i: number, all: string) => (isWordChar(all[i - 1]) && isWordChar(all[i + 1]) ? u : '\\_'));
}

export interface MarkdownOptions {
  /** The folder of the report file, relative to the folder the report's paths are relative to: links resolve from there. */
  linkBase?: string;
}

/** A link to the cited lines; a path's brackets, parentheses, `#` and `?` must not end the link or start its anchor. */
function lineLink(r: JobResult, linkBase: string): string {
  const target = encodeURI(path.posix.join(linkBase, r.file)).replace(/[()#?]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return `[${markdownText(`${r.file}#${citedLines(r)}`)}](${target}#${citedLines(r)})`;
}

function foundItem(r: JobResult, linkBase: string): string[] {
  const out = [`- ${lineLink(r, linkBase)}: ${markdownText(r.answer ?? '')}`];
  if (r.explanation) out.push(`  - ${markdownText(r.explanation)}`);
  if (r.citation) out.push(`  - > ${markdownText(r.citation.quote)}`);
  else if (!r.verified) out.push('  - (no quote given)');
  return out;
}

export function renderMarkdown(report: AskReport, options: MarkdownOptions = {}): string {
  const linkBase = options.linkBase ?? '';
  const where = (r: JobResult) => markdownText(`${r.file}#${lines(r)}`);
  const out: string[] = ['# Ask report', ''];
  for (const q of report.questions) {
    out.push(`## ${markdownText(q.question)}`, '');
    if (q.summary) out.push(q.summary.trim(), '');
    const by = (f: (r: JobResult) => boolean) => q.results.filter(f);
    const verified = by((r) => r.state === 'found' && r.verified);
    const unverified = by((r) => r.state === 'found' && !r.verified);
    const notFound = by((r) => r.state === 'not_found');
    const problems = by((r) => r.state === 'truncated' || r.state === 'error' || r.state === 'cancelled');
    if (verified.length) out.push('**Found in**', '', ...verified.flatMap((r) => foundItem(r, linkBase)), '');
    if (unverified.length) {
      out.push('**Unverified** (no quote, or the quote is not in the file: the answer may be invented)', '',
        ...unverified.flatMap((r) => foundItem(r, linkBase)), '');
    }
    if (!verified.length && !unverified.length) out.push('Not found in any file.', '');
    if (notFound.length) out.push(`**Not found in:** ${notFound.map(where).join(', ')}`, '');
    if (problems.length) {
      out.push('**Not answered**', '', ...problems.map((r) => `- ${where(r)}: ${r.state}${r.error ? `: ${markdownText(r.error)}` : ''}`), '');
    }
  }
  if (report.skipped.length) out.push('## Skipped files', '', ...report.skipped.map((s) => `- ${markdownText(s.file)}: ${markdownText(s.reason)}`), '');
  const t = report.totals;
  out.push(
    '## Totals',
    '',
    `- jobs: ${t.jobs} (${Object.entries(t.states).map(([s, n]) => `${s.replace('_', ' ')} ${n}`).join(', ')}; ${t.found_unverified} found unverified)` +
      `${report.cancelled ? ', run cancelled' : ''}`,
    `- files: ${t.files} in ${t.chunks} chunk${t.chunks === 1 ? '' : 's'}, ${report.skipped.length} skipped`,
    `- prompt tokens: ${t.prompt_tokens} (${t.prefilled_tokens} prefilled, ${t.cached_tokens} reused)`,
    `- generated tokens: ${t.generated_tokens}, ${t.tokens_per_second} tok/s` +
      `${t.synthesis.generated_tokens ? ` (summaries: ${t.synthesis.prompt_tokens} prompt, ${t.synthesis.generated_tokens} generated)` : ''}`,
    `- wall time: ${t.wall_seconds.toFixed(1)} s (pipeline's own work ${t.pipeline_seconds.toFixed(2)} s)`,
    `- model: ${markdownText(report.model)} (${markdownText(report.backend)})`,
    '',
  );
  return out.join('\n');
}
