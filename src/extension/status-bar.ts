// Throughput in the status bar: live tok/s and channels decoding while a run
// goes, the model and the last run's throughput when idle. The tooltip reads
// the sidecar's metrics, polled at most twice a second and only while a run
// is going.
import path from 'node:path';
import * as vscode from 'vscode';
import { formatBytes } from '../byte-size.js';
import type { MetricsSnapshot } from '../engine/protocol.js';

const POLL_MS = 500;

export class ThroughputStatusBar implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem('mlxBatch.throughput', vscode.StatusBarAlignment.Right, 100);
  private timer?: NodeJS.Timeout;
  private model = 'no model loaded';
  /** A model being loaded (Restart Engine, Select Model, a changed setting): said until it runs or fails. */
  private loading?: string;
  private lastRun?: string;
  private activeRuns = 0;
  /** When the sidecar's metrics last came in: while they do, they drive the text (one source, no flicker). */
  private lastMetricsAt = 0;

  constructor(private readonly readMetrics: () => Promise<MetricsSnapshot | undefined>) {
    this.item.name = 'MLX Batch Assistant';
    this.item.command = 'mlxBatch.showResults';
    this.showIdle();
    this.item.show();
  }

  setModel(modelPath: string | undefined): void {
    this.model = modelPath ? shortName(modelPath) : 'no model loaded';
    this.loading = undefined;
    if (this.activeRuns === 0) this.showIdle();
  }

  /** A model starts loading; undefined: that load ended without changing the model (a failed switch). */
  setLoading(modelPath: string | undefined): void {
    this.loading = modelPath;
    if (this.activeRuns === 0) this.showIdle();
  }

  runStarted(): void {
    this.activeRuns++;
    this.item.text = '$(pulse) starting…';
    this.timer ??= setInterval(() => void this.poll(), POLL_MS);
  }

  /** A run's own view of its progress: shown only while the sidecar's metrics do not come in (a server backend). */
  runProgress(tokensPerSecond: number, channels: number): void {
    if (performance.now() - this.lastMetricsAt < 3 * POLL_MS) return;
    this.item.text = `$(pulse) ${tokensPerSecond.toFixed(0)} tok/s · ${channels} ch`;
  }

  runEnded(tokensPerSecond: number): void {
    this.activeRuns = Math.max(0, this.activeRuns - 1);
    // A run that generated nothing (failed to start, cancelled at once) leaves the last real figure.
    if (tokensPerSecond > 0) this.lastRun = `${tokensPerSecond.toFixed(0)} tok/s`;
    if (this.activeRuns > 0) return;
    clearInterval(this.timer);
    this.timer = undefined;
    this.showIdle();
  }

  dispose(): void {
    clearInterval(this.timer);
    this.item.dispose();
  }

  private showIdle(): void {
    if (this.loading) {
      this.item.text = `$(sync~spin) loading ${shortName(this.loading)}…`;
      this.item.tooltip = `MLX Batch Assistant: loading ${this.loading}`;
      return;
    }
    this.item.text = `$(hubot) ${this.model}${this.lastRun ? ` · last ${this.lastRun}` : ''}`;
    this.item.tooltip = 'MLX Batch Assistant: click to show results';
  }

  private async poll(): Promise<void> {
    const m = await this.readMetrics();
    if (!m || this.activeRuns === 0) return;
    this.lastMetricsAt = performance.now();
    const tip = new vscode.MarkdownString([
      `**MLX Batch Assistant** (${this.model})`,
      '',
      `- decode: ${m.decodeTokensPerSecond.toFixed(1)} tok/s, ${m.running} channel${m.running === 1 ? '' : 's'} decoding`,
      `- prefill: ${m.prefillTokensPerSecond.toFixed(1)} tok/s, ${m.prefilling} reading`,
      `- queued: ${m.queued}`,
      `- KV memory: ${formatBytes(m.kvBytes)} of ${formatBytes(m.kvBudgetBytes)}`,
      '',
      'Click to show results.',
    ].join('\n'));
    this.item.tooltip = tip;
    this.item.text = `$(pulse) ${m.decodeTokensPerSecond.toFixed(0)} tok/s · ${m.running} ch`;
  }
}

function shortName(modelPath: string): string {
  return path.basename(modelPath).replace(/\.gguf$/i, '');
}
