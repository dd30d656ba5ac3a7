// The seed benchmark's data: runs, sweeps and reports. Types only, no Node,
// so the benchmark webview (media/benchmark.ts) can share them.

export type MinionMode = 'packed' | 'channels';

/** One answer as the report counts it. */
export interface MinionAnswer {
  question: string;
  expected: string | null;
  answer: string | null;
  /** The reply parsed as the JSON it was asked for. */
  valid: boolean;
  /** How the reply ended: stop (the model ended it), length (the output cap cut it), loop (the loop guard cut it), error. */
  ended: 'stop' | 'length' | 'loop' | 'error';
  correct: boolean;
  /** Why the reply is not a valid answer, when it is not. */
  error?: string;
  /** Seconds from the run's start to this answer's end (packed: every answer ends with the one reply). */
  latency_s: number;
}

export interface MinionRun {
  client: string;
  mode: MinionMode;
  /** Sentences in the document. */
  context: number;
  /** Questions asked at once. */
  size: number;
  wall_s: number;
  prompt_tokens: number;
  cached_tokens: number;
  prefilled_tokens: number;
  generated_tokens: number;
  tokens_per_s: number;
  latency_p50_s: number;
  latency_p95_s: number;
  json_valid_rate: number;
  accuracy: number;
  answers: MinionAnswer[];
  /** Each request's tokens (packed: the one reply; channels: each job, retries included); the run's totals are their sums. */
  requests: Array<{ prompt_tokens: number; cached_tokens: number; generated_tokens: number }>;
  /**
   * Set on the extra runs of the 5× target's cell, after the sweep (1, 2, ...):
   * they count in that target's median, not in the table or the charts.
   */
  repeat?: number;
}

export interface SweepOptions {
  contexts: number[];
  sizes: number[];
  /** Batch size of the context-length sweep. */
  contextSweepSize: number;
  /** Document length of the batch-size sweep. */
  sizeSweepContext: number;
  modes: MinionMode[];
  seed: number;
  /** Output cap per answer (default: the seed's 1000). */
  tokensPerAnswer?: number;
  /**
   * Runs of the 5× target's cell (channels, the batch-size sweep's largest
   * size) by sequential and by batched, the sweep's own included: the target
   * is the median of their paired ratios (default 3; 1 = the sweep's run only).
   */
  targetRepeats?: number;
  signal?: AbortSignal;
}

export interface MinionsReport {
  version: 1;
  created: string;
  command: string;
  model: string;
  machine: string;
  /** What each client is, in words (e.g. the server's URL and how many slots it decodes). */
  clients: Record<string, string>;
  sweep: Omit<SweepOptions, 'signal'>;
  runs: MinionRun[];
  targets: TargetCheck[];
}

export interface TargetCheck {
  target: string;
  met: boolean | null;
  detail: string;
}
