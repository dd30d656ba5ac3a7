// Run Benchmark and Show Benchmark Report: the seed benchmark (src/benchmark/)
// through the engine host's sidecar, as the CLI's `mlx-batch bench minions`
// runs it, drawn in the benchmark panel after every run and saved (JSON and
// Markdown) in the extension's storage, where Show Benchmark Report finds it.
import fs from 'node:fs';
import path from 'node:path';
import * as vscode from 'vscode';
import type { AskBackend } from '../ask/backend.js';
import { buildReport, machineLabel, reportMarkdown, type MinionsReport } from '../benchmark/report.js';
import { runSweep, sweepCells, sweepRunCount, type SweepClient, type SweepPlan } from '../benchmark/sweep.js';
import { BenchmarkPanel } from './benchmark-panel.js';
import type { BenchmarkStatus } from './benchmark-protocol.js';
import type { EngineHost, EngineLease } from './engine-host.js';
import type { AssistantSettings } from './settings.js';

/** The same engine, one request at a time: the seed's single-stream client. */
function oneAtATime(backend: AskBackend): AskBackend {
  return {
    label: backend.label, model: backend.model, contextLength: backend.contextLength, concurrency: 1,
    countTokens: (items) => backend.countTokens(items),
    complete: (request) => backend.complete(request),
  };
}

export interface BenchmarkDeps {
  engine: EngineHost;
  settings: () => AssistantSettings;
  log: vscode.LogOutputChannel;
  extensionUri: vscode.Uri;
  /** Where the last report is kept. */
  storageDir: string;
}

export class BenchmarkController implements vscode.Disposable {
  readonly panel: BenchmarkPanel;
  private abort?: AbortController;
  /** Whether the last run() was cancelled (its report keeps the runs that ended). */
  lastCancelled = false;

  constructor(private readonly deps: BenchmarkDeps) {
    this.panel = new BenchmarkPanel(deps.extensionUri, () => this.cancel());
  }

  get running(): boolean {
    return this.abort !== undefined;
  }

  get reportPath(): string {
    return path.join(this.deps.storageDir, 'minions.json');
  }

  cancel(): void {
    this.abort?.abort();
  }

  dispose(): void {
    this.cancel();
    this.panel.dispose();
  }

  /** The last saved report, or undefined (none yet, or unreadable: then the reason is logged). */
  lastReport(): MinionsReport | undefined {
    try {
      const report = JSON.parse(fs.readFileSync(this.reportPath, 'utf8')) as MinionsReport;
      if (report.version !== 1 || !Array.isArray(report.runs)) throw new Error('not a benchmark report of this version');
      return report;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.deps.log.warn(`benchmark report ${this.reportPath}: ${(e as Error).message}`);
      return undefined;
    }
  }

  showLast(): boolean {
    const report = this.lastReport();
    if (!report) return false;
    this.panel.show({ type: 'report', report, status: 'done', savedTo: this.reportPath });
    return true;
  }

  /** Runs `sweep` on the built-in engine (one at a time, then batched) and the configured server, if any; resolves with the report. */
  async run(sweep: SweepPlan): Promise<MinionsReport> {
    if (this.abort) throw new Error('a benchmark is already running');
    const abort = new AbortController();
    this.abort = abort;
    const settings = this.deps.settings();
    const clients: SweepClient[] = [];
    const leases: EngineLease[] = [];
    const described: Record<string, string> = {};
    let report = buildReport({ command: 'MLX Batch: Run Benchmark', model: '', machine: machineLabel(), clients: described, sweep, runs: [] });
    const show = (status: BenchmarkStatus, done: number, extra: { error?: string; current?: string } = {}) => this.panel.show({
      type: 'report', report, status,
      progress: { done, total: clients.length === 0 ? sweepCells(sweep).length : sweepRunCount(sweep, clients.map((c) => c.name)), current: extra.current },
      ...(extra.error ? { error: extra.error } : {}), ...(status === 'running' ? {} : { savedTo: this.reportPath }),
    });
    show('running', 0, { current: 'starting the engine' });
    try {
      return await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: 'Batch benchmark', cancellable: true }, async (progress, token) => {
        token.onCancellationRequested(() => abort.abort());
        progress.report({ message: 'starting the engine…' });
        const engineLease = await this.deps.engine.lease({ ...settings, backend: 'builtin' });
        leases.push(engineLease);
        const engine = engineLease.backend;
        clients.push({ name: 'sequential', backend: oneAtATime(engine) }, { name: 'batched', backend: engine });
        described.sequential = `our engine (${path.basename(engine.model)}), one request at a time`;
        described.batched = `our engine, up to ${engine.concurrency} requests in flight, batched with shared prefixes`;
        if (settings.backend === 'openai') {
          const server = await this.deps.engine.lease(settings);
          leases.push(server);
          clients.push({ name: 'server', backend: server.backend });
          described.server = `${settings.serverModel} at ${settings.serverUrl}, up to ${settings.serverConcurrency} requests at once`;
        }
        report = { ...report, model: path.basename(engine.model) };
        show('running', 0);
        const runs = await runSweep(clients, { ...sweep, signal: abort.signal }, (run, done, all) => {
          report = buildReport({ ...report, runs: [...report.runs, run] });
          const line = `${run.client} ${run.mode}, ${run.context} sentences × ${run.size}: ${run.tokens_per_s.toFixed(1)} tok/s`;
          progress.report({ message: `${done} / ${all} runs · ${line}`, increment: 100 / all });
          show('running', done, { current: `last: ${line}` });
        });
        report = buildReport({ ...report, runs });
        // Cancelled before a run ended: the last saved report stays for Show Benchmark Report.
        if (runs.length > 0) this.save(report);
        this.lastCancelled = abort.signal.aborted;
        show(abort.signal.aborted ? 'cancelled' : 'done', runs.length);
        return report;
      });
    } catch (e) {
      const message = (e as Error).message;
      this.deps.log.error(`benchmark failed: ${message}`);
      // Runs that ended are kept: a failure late in a long sweep loses nothing measured.
      let saveError = '';
      try {
        if (report.runs.length > 0) this.save(report);
      } catch (err) {
        saveError = `; the runs that ended could not be saved either: ${(err as Error).message}`;
      }
      show('failed', report.runs.length, { error: message + saveError });
      throw e;
    } finally {
      for (const lease of leases) lease.release();
      this.abort = undefined;
    }
  }

  private save(report: MinionsReport): void {
    fs.mkdirSync(this.deps.storageDir, { recursive: true });
    fs.writeFileSync(this.reportPath, JSON.stringify(report, null, 2) + '\n');
    fs.writeFileSync(path.join(this.deps.storageDir, 'minions.md'), reportMarkdown(report, []));
  }
}
