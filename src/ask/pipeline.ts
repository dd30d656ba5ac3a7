// The question x file pipeline shared by `mlx-batch ask`, the VS Code
// extension and the benchmarks:
//   collect files -> chunk them by tokens -> one job per (chunk, question) ->
//   constrained JSON answers -> citations located in the chunk -> report.
// Jobs run grouped by chunk, so a chunk's questions reach the engine together
// and share its prefix. No job disappears: each ends found, not found,
// truncated, error or cancelled.
import type { AskBackend, Completion } from './backend.js';
import { chunkLines, splitLines, type Chunk } from './chunk.js';
import { locateQuote } from './citation.js';
import { collectFiles, type CollectOptions } from './collect.js';
import { DEFAULT_PROMPT, jobMessages, parseAnswer, synthesisMessages, type PromptVariant } from './prompt.js';
import { buildReport } from './aggregate.js';
import { mapLimited } from './pool.js';
import { RepetitionGuard } from './backends/repetition-guard.js';
import type { AskReport, JobResult, JobUpdate, SkippedFile } from './report.js';

/** A file's text to ask about, already read; firstLine > 1 when it is a part of a file (an editor selection). */
export interface AskSource {
  path: string;
  text: string;
  firstLine?: number;
}

export interface AskOptions {
  questions: string[];
  /** Files, folders and globs, collected with `collect` (ignored when `sources` is given). */
  inputs?: string[];
  collect?: CollectOptions;
  /** Texts to ask about instead of collecting files. */
  sources?: AskSource[];
  /** Files refused before the pipeline saw them (the extension's own collection), reported as skipped. */
  skipped?: SkippedFile[];
  /** Most tokens of one answer (a truncated answer is retried once with twice this). */
  maxTokens?: number;
  /** Most tokens of file text per job; also bounded by the model's context. */
  chunkTokens?: number;
  temperature?: number;
  synthesize?: boolean;
  prompt?: PromptVariant;
  signal?: AbortSignal;
  /** Every job, once, before any runs. */
  onPlan?: (jobs: JobUpdate[], skipped: SkippedFile[]) => void;
  /** A job moved (phase change, new text, prefill progress, end). */
  onJob?: (update: JobUpdate) => void;
  /** A question's synthesized summary is ready. */
  onSummary?: (question: number, summary: string) => void;
}

export const DEFAULT_MAX_TOKENS = 256;
export const DEFAULT_CHUNK_TOKENS = 3072;
const LINE_OVERLAP = 3;
const SYNTHESIS_MAX_TOKENS = 256;
/** Slack for tokens that merge across a line boundary when lines are counted one by one. */
const CHUNK_MARGIN = 32;
const MIN_CHUNK_TOKENS = 64;

interface Job {
  id: string;
  question: number;
  file: string;
  chunk: Chunk;
}

/** Time spent in the pipeline's own work, apart from waiting on the model. */
class Stopwatch {
  seconds = 0;
  time<T>(fn: () => T): T {
    const t = performance.now();
    try {
      return fn();
    } finally {
      this.seconds += (performance.now() - t) / 1000;
    }
  }
  async timeAsync<T>(fn: () => Promise<T>): Promise<T> {
    const t = performance.now();
    try {
      return await fn();
    } finally {
      this.seconds += (performance.now() - t) / 1000;
    }
  }
}

export async function runAsk(modelBackend: AskBackend, options: AskOptions): Promise<AskReport> {
  const started = performance.now();
  // A reply stuck in a loop frees its channel as soon as the loop shows, rather
  // than at the token cap; the job ends truncated, with the reason.
  const backend = new RepetitionGuard(modelBackend);
  const own = new Stopwatch();
  const questions = options.questions.map((q) => q.trim()).filter((q) => q !== '');
  if (questions.length === 0) throw new Error('no questions: give at least one question');
  const prompt = options.prompt ?? DEFAULT_PROMPT;
  const maxTokens = options.maxTokens ?? DEFAULT_MAX_TOKENS;
  const temperature = options.temperature ?? 0;

  const { sources, skipped } = await own.timeAsync(() => gatherSources(options));
  const budget = await own.timeAsync(() => chunkBudget(backend, prompt, questions, sources, options));
  const jobs: Job[] = [];
  let chunkCount = 0;
  for (const source of sources) {
    // Counting tokens of a big folder takes a while: a cancel stops it here, not after every file.
    if (options.signal?.aborted) {
      skipped.push({ file: source.path, reason: 'the run was cancelled before this file was read' });
      continue;
    }
    const chunks = await own.timeAsync(() => chunkSource(backend, source, budget));
    if ('reason' in chunks) {
      skipped.push({ file: source.path, reason: chunks.reason });
      continue;
    }
    chunkCount += chunks.length;
    // Chunk-major order: a chunk's questions are submitted together and share its prefix.
    for (const chunk of chunks) {
      questions.forEach((_, q) => jobs.push({ id: `q${q}:${source.path}:${chunk.startLine}-${chunk.endLine}`, question: q, file: source.path, chunk }));
    }
  }
  const fileCount = new Set(jobs.map((j) => j.file)).size;

  options.onPlan?.(jobs.map((j) => ({ ...jobPosition(j), phase: 'queued' })), skipped);
  const results = await mapLimited(jobs, backend.concurrency, (job) =>
    runJob(backend, job, questions[job.question], { prompt, maxTokens, temperature, signal: options.signal, onJob: options.onJob, own }));

  const synthesisUsage = { prompt: 0, cached: 0, generated: 0 };
  const count = (c: Completion) => {
    synthesisUsage.prompt += c.promptTokens;
    synthesisUsage.cached += c.cachedTokens;
    synthesisUsage.generated += c.generatedTokens;
  };

  const summaries: Array<string | null> = questions.map(() => null);
  if (options.synthesize && !options.signal?.aborted) {
    for (let q = 0; q < questions.length; q++) {
      summaries[q] = await synthesize(backend, questions[q], results.filter((r) => r.id.startsWith(`q${q}:`)), temperature, options.signal, count);
      if (summaries[q] !== null) options.onSummary?.(q, summaries[q]!);
    }
  }

  return own.time(() => buildReport({
    model: backend.model,
    backend: backend.label,
    questions,
    results: results.map((r, i) => ({ question: jobs[i].question, result: r })),
    summaries,
    skipped,
    files: fileCount,
    chunks: chunkCount,
    synthesis: synthesisUsage,
    wallSeconds: (performance.now() - started) / 1000,
    pipelineSeconds: own.seconds,
    cancelled: options.signal?.aborted ?? false,
  }));
}

async function gatherSources(options: AskOptions): Promise<{ sources: AskSource[]; skipped: SkippedFile[] }> {
  const skipped = [...(options.skipped ?? [])];
  if (options.sources) return { sources: options.sources, skipped };
  // Cancelled while reading (Ctrl-C on a large folder): nothing is asked, and the report says cancelled.
  const collected = await collectFiles(options.inputs ?? [], options.collect ?? { cwd: process.cwd() }, { signal: options.signal });
  return { sources: collected.files.map((f) => ({ path: f.path, text: f.text })), skipped: [...skipped, ...collected.skipped] };
}

/** File tokens a job may carry: the context less the prompt around the chunk and the (retried) answer. */
async function chunkBudget(backend: AskBackend, prompt: PromptVariant, questions: string[], sources: AskSource[], options: AskOptions): Promise<number> {
  const longestQuestion = questions.reduce((a, b) => (b.length > a.length ? b : a));
  const longestPath = sources.reduce((a, s) => (s.path.length > a.length ? s.path : a), '');
  const [overhead] = await backend.countTokens([{ messages: jobMessages(prompt, longestPath, 999999, 999999, '', longestQuestion) }]);
  const answerTokens = 2 * (options.maxTokens ?? DEFAULT_MAX_TOKENS);
  const room = backend.contextLength - overhead - answerTokens - CHUNK_MARGIN;
  if (room < MIN_CHUNK_TOKENS) {
    // Name what takes the room: a long question, or the answers' allowance.
    const [questionTokens] = await backend.countTokens([{ text: longestQuestion }]);
    const remedy = questionTokens > answerTokens
      ? `the longest question alone is ${questionTokens} tokens: shorten it`
      : "lower the answer's max tokens";
    throw new Error(`the model's context of ${backend.contextLength} tokens leaves no room for file text: ` +
      `the prompt takes ${overhead} tokens and answers up to ${answerTokens}; ${remedy}`);
  }
  return Math.min(room, options.chunkTokens ?? DEFAULT_CHUNK_TOKENS);
}

async function chunkSource(backend: AskBackend, source: AskSource, budget: number): Promise<Chunk[] | { reason: string }> {
  const lines = splitLines(source.text);
  const lineTokens = await backend.countTokens(lines.map((l) => ({ text: `${l}\n` })));
  const result = chunkLines(lines, lineTokens, { budget, overlapLines: LINE_OVERLAP });
  const offset = (source.firstLine ?? 1) - 1;
  if ('tooLong' in result) {
    return { reason: `line ${result.tooLong.line + offset} alone is ${result.tooLong.tokens} tokens, over the ${budget}-token chunk budget ` +
      `(--chunk-tokens / mlxBatch.chunkTokens, bounded by the model's context)` };
  }
  return offset === 0 ? result.chunks : result.chunks.map((c) => ({ ...c, startLine: c.startLine + offset, endLine: c.endLine + offset }));
}

function jobPosition(job: Job): Omit<JobUpdate, 'phase'> {
  return { id: job.id, question: job.question, file: job.file, start_line: job.chunk.startLine, end_line: job.chunk.endLine };
}


interface JobContext {
  prompt: PromptVariant;
  maxTokens: number;
  temperature: number;
  signal?: AbortSignal;
  onJob?: (update: JobUpdate) => void;
  own: Stopwatch;
}

async function runJob(backend: AskBackend, job: Job, question: string, ctx: JobContext): Promise<JobResult> {
  const t = performance.now();
  const position = jobPosition(job);
  const base: JobResult = {
    ...position, state: 'cancelled', answer: null, explanation: null, citation: null, verified: false, error: null,
    prompt_tokens: 0, cached_tokens: 0, generated_tokens: 0, attempts: 0, seconds: 0,
  };
  const end = (result: JobResult): JobResult => {
    result.seconds = (performance.now() - t) / 1000;
    ctx.onJob?.({ ...position, phase: result.state, result });
    return result;
  };
  if (ctx.signal?.aborted) return end({ ...base, error: 'cancelled before it started' });

  const messages = ctx.own.time(() => jobMessages(ctx.prompt, job.file, job.chunk.startLine, job.chunk.endLine, job.chunk.text, question));
  let completion: Completion | undefined;
  for (const maxTokens of [ctx.maxTokens, 2 * ctx.maxTokens]) {
    base.attempts++;
    let text = '';
    let generated = 0;
    completion = await backend.complete({
      id: `${job.id}#${base.attempts}`,
      messages,
      maxTokens,
      temperature: ctx.temperature,
      jsonSchema: ctx.prompt.schema,
      signal: ctx.signal,
      onPrefill: (done, total) => ctx.onJob?.({ ...position, phase: 'reading', prefilled_tokens: done, prompt_tokens: total }),
      onDelta: (piece, tokens) => {
        text += piece;
        generated += tokens;
        ctx.onJob?.({ ...position, phase: 'generating', text, generated_tokens: generated });
      },
    });
    base.prompt_tokens += completion.promptTokens;
    base.cached_tokens += completion.cachedTokens;
    base.generated_tokens += completion.generatedTokens;
    if (completion.finishReason !== 'length') break;
  }
  const c = completion!;
  if (c.finishReason === 'cancelled') return end({ ...base, state: 'cancelled', error: c.error ?? 'cancelled' });
  if (c.finishReason === 'error') return end({ ...base, state: 'error', error: c.error ?? 'the backend failed without a reason' });
  // An answer that never ends, like one over the token cap; retrying would loop again.
  if (c.finishReason === 'loop') return end({ ...base, state: 'truncated', truncated_by: 'loop', error: c.error ?? 'the reply repeats itself' });
  if (c.finishReason === 'length') {
    return end({ ...base, state: 'truncated', truncated_by: 'length', error: `the answer did not end within ${2 * ctx.maxTokens} tokens (tried ${ctx.maxTokens}, then ${2 * ctx.maxTokens})` });
  }
  return end(ctx.own.time(() => judgeAnswer(base, job.chunk, c.text)));
}

/** A finished reply becomes found (verified or not) or not found; unparseable is an error, with the reason. */
export function judgeAnswer(base: JobResult, chunk: { text: string; startLine: number }, text: string): JobResult {
  let parsed;
  try {
    parsed = parseAnswer(text);
  } catch (e) {
    return { ...base, state: 'error', error: (e as Error).message };
  }
  // Located only where it decides something: most replies are plain "not here", and fuzzy matching costs.
  const wanted = parsed.citation !== '' && (parsed.answer !== null || parsed.abstention !== undefined);
  const located = wanted ? locateQuote(chunk.text, chunk.startLine, parsed.citation) : undefined;
  let answer = parsed.answer;
  // "None" is also a value (`timeout = None`): it stands as the answer when the located quote holds those words.
  if (answer === null && parsed.abstention && located && quoteHolds(linesOf(chunk, located), parsed.abstention)) answer = parsed.abstention;
  if (answer === null) return { ...base, state: 'not_found', explanation: parsed.explanation || null };
  return {
    ...base,
    state: 'found',
    answer,
    explanation: parsed.explanation || null,
    citation: parsed.citation ? { start_line: located?.startLine ?? null, end_line: located?.endLine ?? null, quote: parsed.citation } : null,
    verified: located !== undefined,
  };
}

/** The chunk's lines a located quote spans: what the file says there, not what the model wrote. */
function linesOf(chunk: { text: string; startLine: number }, at: { startLine: number; endLine: number }): string {
  return chunk.text.split('\n').slice(at.startLine - chunk.startLine, at.endLine - chunk.startLine + 1).join('\n');
}

/** Whether `words` stand as whole words in `quote`, ignoring case and a trailing full stop. */
function quoteHolds(quote: string, words: string): boolean {
  const wanted = words.replace(/\.$/, '').replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`(^|[^\\p{L}\\p{N}_])${wanted}($|[^\\p{L}\\p{N}_])`, 'iu').test(quote);
}

async function synthesize(backend: AskBackend, question: string, results: JobResult[], temperature: number,
  signal: AbortSignal | undefined, count: (c: Completion) => void): Promise<string | null> {
  const found = results.filter((r) => r.state === 'found');
  if (found.length === 0) return null;
  const findings = found.map((r) => ({
    file: r.file,
    lines: r.citation?.start_line != null ? `${r.citation.start_line}-${r.citation.end_line}` : `${r.start_line}-${r.end_line}`,
    answer: r.answer!,
    verified: r.verified,
  }));
  const c = await backend.complete({ id: `synthesis:${question}`, messages: synthesisMessages(question, findings), maxTokens: SYNTHESIS_MAX_TOKENS, temperature, signal });
  count(c);
  if (c.finishReason === 'error') return `(synthesis failed: ${c.error})`;
  if (c.finishReason === 'cancelled') return null;
  return c.text.trim() + (c.finishReason === 'length' || c.finishReason === 'loop' ? ' …' : '');
}
