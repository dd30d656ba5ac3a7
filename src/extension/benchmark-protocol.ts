// The messages between the benchmark panel (benchmark-panel.ts) and its
// webview (media/benchmark.ts). The webview holds no state: every `report`
// message carries the whole report so far.
import type { MinionsReport } from '../benchmark/types.js';

export type BenchmarkStatus = 'running' | 'done' | 'cancelled' | 'failed';

export type ToBenchmarkWebview = {
  type: 'report';
  /** Undefined before the first run of the sweep ends. */
  report?: MinionsReport;
  status: BenchmarkStatus;
  /** Runs done and planned, and what runs now. */
  progress?: { done: number; total: number; current?: string };
  /** Why a failed sweep stopped. */
  error?: string;
  /** Where the report is saved. */
  savedTo?: string;
};

export type FromBenchmarkWebview = { type: 'ready' } | { type: 'cancel' };

/** A webview message, or undefined when it is not one of ours (a webview's messages are untrusted input). */
export function parseFromBenchmarkWebview(value: unknown): FromBenchmarkWebview | undefined {
  if (!value || typeof value !== 'object') return undefined;
  const type = (value as { type?: unknown }).type;
  return type === 'ready' || type === 'cancel' ? { type } : undefined;
}
