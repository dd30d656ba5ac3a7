// The `ask` report: what `mlx-batch ask --out report.json` writes, what the
// extension's webview shows and what the benchmarks read. One typed file for
// that shape (snake_case, as written to disk), plus the live job updates the
// pipeline emits while it runs.

/** How a (question x chunk) job ended. Every job ends in exactly one. */
export type JobState = 'found' | 'not_found' | 'truncated' | 'error' | 'cancelled';
export const JOB_STATES: readonly JobState[] = ['found', 'not_found', 'truncated', 'error', 'cancelled'];

/** Where a job is while it runs: queued, reading its prompt (prefill), generating, then its end state. */
export type JobPhase = 'queued' | 'reading' | 'generating' | JobState;

export interface Citation {
  /** 1-based file lines the quote was found at; null when it was not found in the chunk. */
  start_line: number | null;
  end_line: number | null;
  /** The quote as the model wrote it. */
  quote: string;
}

export interface JobResult {
  /** Stable within a run: `q<question index>:<file>:<start>-<end>`. */
  id: string;
  /** Relative to the folder `ask` ran from, POSIX separators. */
  file: string;
  /** The chunk's 1-based line range. */
  start_line: number;
  end_line: number;
  state: JobState;
  /** On truncated jobs: cut at the token cap (after the retry) or as a loop (not retried). */
  truncated_by?: 'length' | 'loop';
  answer: string | null;
  explanation: string | null;
  citation: Citation | null;
  /** The quote was located in the chunk (found answers only: an unverified answer may be invented). */
  verified: boolean;
  error: string | null;
  prompt_tokens: number;
  /** Prompt tokens reused from a shared prefix rather than prefilled. */
  cached_tokens: number;
  generated_tokens: number;
  /** Tries it took (a truncated answer is retried once with a larger budget). */
  attempts: number;
  seconds: number;
}

export interface QuestionReport {
  question: string;
  /** The synthesized answer over the found results (--synthesize), else null. */
  summary: string | null;
  /** Found (verified first), then not found, truncated, error, cancelled; each by file and line. */
  results: JobResult[];
}

export interface SkippedFile {
  file: string;
  reason: string;
}

export interface AskTotals {
  jobs: number;
  /** Jobs per end state; they add up to `jobs`. */
  states: Record<JobState, number>;
  found_unverified: number;
  files: number;
  chunks: number;
  prompt_tokens: number;
  /** Prompt tokens actually run through the model; the rest were reused from shared prefixes. */
  prefilled_tokens: number;
  cached_tokens: number;
  generated_tokens: number;
  /** Of the tokens above, those of the --synthesize calls (the rest are the jobs' own). */
  synthesis: { prompt_tokens: number; generated_tokens: number };
  wall_seconds: number;
  /** Generated tokens over wall time. */
  tokens_per_second: number;
  /** Time in the pipeline's own work (collecting, chunking, parsing, aggregating), not waiting on the model. */
  pipeline_seconds: number;
}

export interface AskReport {
  version: 1;
  created: string;
  /** The built-in engine's model path, or the server backend's model name. */
  model: string;
  backend: string;
  questions: QuestionReport[];
  skipped: SkippedFile[];
  totals: AskTotals;
  /** True when the run was cancelled before every job ended. */
  cancelled: boolean;
}

/** A job as it moves through its phases; `result` is set once it ended. */
export interface JobUpdate {
  id: string;
  question: number;
  file: string;
  start_line: number;
  end_line: number;
  phase: JobPhase;
  /** The answer text so far (raw model output while generating). */
  text?: string;
  /** While reading: prompt tokens done (reused included) out of prompt_tokens. */
  prefilled_tokens?: number;
  prompt_tokens?: number;
  generated_tokens?: number;
  result?: JobResult;
}
