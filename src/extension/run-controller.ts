// Starts, cancels and reruns batch runs: the ask pipeline (src/ask/) on the
// engine host's backend, with every job move going to the run store (saved
// as it finishes), the results panel, the status bar and a progress
// notification with a cancel button.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as vscode from 'vscode';
import { collectAcrossFolders } from '../ask/collect.js';
import { runAsk, type AskOptions, type AskSource } from '../ask/pipeline.js';
import type { AskReport, JobPhase, JobResult, SkippedFile } from '../ask/report.js';
import type { EngineHost, EngineLease } from './engine-host.js';
import type { ResultsPanel } from './results-panel.js';
import type { RunRecord, RunStore } from './run-store.js';
import type { AssistantSettings } from './settings.js';
import type { ThroughputStatusBar } from './status-bar.js';

/** What one run asks about. */
export interface RunRequest {
  questions: string[];
  /** Shown in the run header: "2 files and 1 folder", "open editors", ... */
  scope: string;
  /** The folder report paths are relative to. */
  root: string;
  /** Files, folders and globs relative to root (collected with the settings' filters)... */
  inputs?: string[];
  /** ...or texts already read (an editor selection, open editors). */
  sources?: AskSource[];
  skipped?: SkippedFile[];
}

export interface RunControllerDeps {
  engine: EngineHost;
  store: RunStore;
  panel: () => ResultsPanel;
  statusBar: ThroughputStatusBar;
  settings: () => AssistantSettings;
  log: vscode.LogOutputChannel;
  /** Why no batch may start now (a benchmark is measuring the engine), or undefined. */
  busy?: () => string | undefined;
}

const BUSY: ReadonlySet<JobPhase> = new Set(['reading', 'generating']);
/** Above this many jobs (files × questions) a run asks before it starts: hours of work on a small machine. */
const CONFIRM_JOBS = 300;

export class RunController {
  private readonly running = new Map<string, AbortController>();

  constructor(private readonly deps: RunControllerDeps) {}

  get activeRunIds(): string[] {
    return [...this.running.keys()];
  }

  /** Runs a request to its end; resolves with the finished run (also when it failed or was cancelled), or undefined when it may not start. */
  async start(given: RunRequest): Promise<RunRecord | undefined> {
    const { store, statusBar, log } = this.deps;
    const busy = this.deps.busy?.();
    if (busy) {
      void vscode.window.showWarningMessage(busy);
      return undefined;
    }
    const settings = this.deps.settings();
    // Files first, before a model loads: an empty scope is said at once, and a big one is confirmed.
    const request = await this.withFiles(given, settings);
    if (!request) return undefined;
    const run = store.create({
      id: `${new Date().toISOString().replace(/[:.]/g, '-')}-${randomUUID().slice(0, 8)}`,
      started: new Date().toISOString(),
      questions: request.questions,
      scope: request.scope,
      model: settings.backend === 'openai' ? `${settings.serverModel} at ${settings.serverUrl}` : this.modelLabel(settings),
      root: request.root,
    });
    const abort = new AbortController();
    this.running.set(run.id, abort);
    const panel = this.deps.panel();
    panel.show(run.id);
    panel.runStarted(run);
    statusBar.runStarted();
    const started = performance.now();
    try {
      await vscode.window.withProgress({
        location: vscode.ProgressLocation.Notification,
        title: `Batch: ${request.questions.length === 1 ? request.questions[0] : `${request.questions.length} questions`}`,
        cancellable: true,
      }, async (progress, token) => {
        token.onCancellationRequested(() => abort.abort());
        progress.report({ message: 'starting the engine…' });
        const lease = await this.deps.engine.lease(settings);
        let report: AskReport;
        try {
          const phases = new Map<string, JobPhase>();
          let ended = 0;
          let lastReport = 0;
          report = await runAsk(lease.backend, {
            ...this.askOptions(request, settings),
            signal: abort.signal,
            onPlan: (jobs, skipped) => {
              store.plan(run, jobs, skipped);
              panel.runStarted(run);
            },
            onJob: (u) => {
              phases.set(u.id, u.phase);
              if (u.result) {
                ended++;
                run.generatedTokens += u.result.generated_tokens;
              }
              run.elapsedSeconds = (performance.now() - started) / 1000;
              run.tokensPerSecond = run.generatedTokens / Math.max(1e-3, run.elapsedSeconds);
              store.update(run, u);
              panel.jobUpdate(run, u);
              const now = performance.now();
              if (now - lastReport > 500 || u.result) {
                lastReport = now;
                const live = liveTokensPerSecond(run, phases);
                progress.report({ message: `${ended} / ${run.jobs.length} jobs · ${live.toFixed(0)} tok/s` });
                statusBar.runProgress(live, [...phases.values()].filter((p) => BUSY.has(p)).length);
              }
            },
            onSummary: (q, summary) => {
              store.summary(run, q, summary);
              panel.summary(run, q, summary);
            },
          });
        } finally {
          lease.release();
        }
        store.finish(run, report.cancelled ? 'cancelled' : 'done', report);
        this.tellOutcome(run, report);
      });
    } catch (e) {
      const message = (e as Error).message;
      if (abort.signal.aborted) {
        // Cancelled while the engine started: what failed after that is no news to the user.
        log.info(`run ${run.id} cancelled while starting (${message})`);
        store.finish(run, 'cancelled', undefined, 'cancelled while the engine started');
        return run;
      }
      log.error(`run ${run.id} failed: ${message}`);
      store.finish(run, 'failed', undefined, message);
      void vscode.window.showErrorMessage(`Batch run failed: ${message}`, 'Open Engine Log').then((pick) => {
        if (pick) void vscode.commands.executeCommand('mlxBatch.openEngineLog');
      });
    } finally {
      this.running.delete(run.id);
      statusBar.runEnded(run.tokensPerSecond);
      panel.runEnded(run);
    }
    return run;
  }

  cancel(runId?: string): boolean {
    const ids = runId ? [runId] : this.activeRunIds;
    for (const id of ids) this.running.get(id)?.abort();
    return ids.some((id) => this.running.has(id));
  }

  /** Runs the given jobs of a finished run again; their new results replace the old rows. */
  async rerun(runId: string, jobIds: string[]): Promise<void> {
    const { store } = this.deps;
    const run = store.get(runId);
    if (!run || jobIds.length === 0) return;
    if (this.running.has(runId)) {
      void vscode.window.showInformationMessage('This run is still going (or being rerun): rerun its rows once it ends.');
      return;
    }
    const busy = this.deps.busy?.();
    if (busy) {
      void vscode.window.showWarningMessage(busy);
      return;
    }
    // Registered before the first await: a second click while the engine starts finds it running.
    const abort = new AbortController();
    this.running.set(run.id, abort);
    const jobs = run.jobs.filter((j) => jobIds.includes(j.id));
    const settings = this.deps.settings();
    const panel = this.deps.panel();
    let lease: EngineLease;
    try {
      lease = await this.deps.engine.lease(settings);
    } catch (e) {
      this.running.delete(run.id);
      throw e;
    }
    // One small ask per chunk: the chunk's own lines (with its real line numbers), its questions.
    const byChunk = new Map<string, typeof jobs>();
    for (const j of jobs) {
      const key = `${j.file}:${j.start_line}-${j.end_line}`;
      byChunk.set(key, [...(byChunk.get(key) ?? []), j]);
    }
    run.status = 'running';
    panel.runStarted(run);
    for (const j of jobs) {
      const u = { id: j.id, question: j.question, file: j.file, start_line: j.start_line, end_line: j.end_line, phase: 'queued' as const };
      Object.assign(j, u, { result: undefined });
      panel.jobUpdate(run, u);
    }
    try {
      // Every group to its end, each on its own: one that fails must not leave the others running uncancellable.
      const groups = [...byChunk.values()];
      const ended = await Promise.allSettled(groups.map(async (group) => {
        const first = group[0];
        let text: string;
        try {
          text = fs.readFileSync(path.resolve(run.root, first.file), 'utf8').split('\n').slice(first.start_line - 1, first.end_line).join('\n');
        } catch (e) {
          // Nothing to ask about: the jobs end as errors naming why, not as answers about an empty text.
          const reason = `cannot read ${first.file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
          store.replaceResults(run, group.map((j): JobResult => ({ ...emptyResult(j), error: reason })));
          for (const j of group) panel.jobUpdate(run, { ...j, phase: 'error' });
          return;
        }
        const questions = group.map((j) => run.questions[j.question]);
        const report = await runAsk(lease.backend, {
          ...this.askOptions({ questions, scope: run.scope, root: run.root, sources: [{ path: first.file, text, firstLine: first.start_line }] }, settings),
          signal: abort.signal,
          onJob: (u) => {
            const job = group[u.question];
            if (!job) return;
            const mapped = { ...u, id: job.id, question: job.question, start_line: job.start_line, end_line: job.end_line };
            if (u.result) mapped.result = { ...u.result, id: job.id, start_line: job.start_line, end_line: job.end_line };
            store.update(run, mapped);
            panel.jobUpdate(run, mapped);
          },
        });
        // A chunk that no longer fits (the file changed): its jobs end as errors with the reason.
        if (report.totals.jobs === 0) {
          const reason = report.skipped[0]?.reason ?? 'the file could not be read';
          store.replaceResults(run, group.map((j): JobResult => ({ ...(j.result ?? emptyResult(j)), state: 'error', error: reason })));
        }
      }));
      ended.forEach((outcome, i) => {
        if (outcome.status === 'fulfilled') return;
        const reason = `the rerun failed: ${(outcome.reason as Error)?.message ?? String(outcome.reason)}`;
        const unfinished = groups[i].filter((j) => !j.result);
        store.replaceResults(run, unfinished.map((j): JobResult => ({ ...emptyResult(j), error: reason })));
        for (const j of unfinished) panel.jobUpdate(run, { ...j, phase: 'error' });
      });
    } finally {
      lease.release();
      this.running.delete(run.id);
      store.finish(run, abort.signal.aborted ? 'cancelled' : 'done');
      panel.runEnded(run);
    }
  }

  /**
   * The request with its folders and globs read into sources; undefined if
   * there is nothing to ask about (said) or the user stops. A large selection
   * is confirmed once its files are found, before any is read.
   */
  private async withFiles(request: RunRequest, settings: AssistantSettings): Promise<RunRequest | undefined> {
    let confirmed = false;
    const confirm = async (files: number, upTo: string) => {
      const jobs = files * request.questions.length;
      if (jobs <= CONFIRM_JOBS) return true;
      const go = await vscode.window.showWarningMessage(
        `Ask ${request.questions.length} question${request.questions.length === 1 ? '' : 's'} about ${upTo}${files} files? ` +
        (upTo ? `That is about ${jobs} jobs (more for long files, fewer if some are not text)` : `That is at least ${jobs} jobs`) +
        ', and the model reads every file.', { modal: true }, 'Ask');
      confirmed = go === 'Ask';
      return confirmed;
    };
    const found = request.sources
      ? { files: request.sources, skipped: request.skipped ?? [] }
      : await vscode.window.withProgress({ location: vscode.ProgressLocation.Window, title: `Finding files in ${request.scope}…` },
        () => this.collectByFolder(request, settings, (files) => confirm(files, 'up to ')));
    if ('stopped' in found && found.stopped) return undefined;
    if (found.files.length === 0) {
      const reasons = [...new Set(found.skipped.map((s) => s.reason.replace(/ \(.*$/, '')))].slice(0, 3).join('; ');
      void vscode.window.showWarningMessage(`No files to ask about in ${request.scope}` +
        (found.skipped.length ? `: ${found.skipped.length} skipped (${reasons}).` : ' (mlxBatch.include / mlxBatch.exclude, .gitignore and files.exclude apply).'));
      return undefined;
    }
    if (!confirmed && !(await confirm(found.files.length, ''))) return undefined;
    if (request.sources) return request;
    return { ...request, inputs: undefined, sources: found.files, skipped: found.skipped };
  }

  /** The request's inputs, each read with the filters of the workspace folder it lies in. */
  private async collectByFolder(request: RunRequest, settings: AssistantSettings, beforeRead: (files: number) => Promise<boolean>):
    Promise<{ files: AskSource[]; skipped: SkippedFile[]; stopped?: boolean }> {
    const found = await collectAcrossFolders(request.root, request.inputs ?? [],
      (abs) => vscode.workspace.getWorkspaceFolder(vscode.Uri.file(abs))?.uri.fsPath ?? request.root,
      (folder) => this.askOptions({ ...request, root: folder }, settings).collect!, { beforeRead });
    return {
      files: found.files.map((f) => ({ path: f.path, text: f.text })),
      skipped: [...(request.skipped ?? []), ...found.skipped],
      ...(found.stopped ? { stopped: true } : {}),
    };
  }

  private askOptions(request: RunRequest, settings: AssistantSettings): AskOptions {
    return {
      questions: request.questions,
      ...(request.sources ? { sources: request.sources } : { inputs: request.inputs ?? [] }),
      skipped: request.skipped,
      collect: {
        cwd: request.root,
        include: settings.include,
        exclude: [...settings.exclude, ...filesExcludeGlobs(request.root)],
        maxFileBytes: settings.maxFileBytes,
      },
      maxTokens: settings.maxTokens,
      chunkTokens: settings.chunkTokens,
      temperature: settings.temperature,
      synthesize: settings.synthesize,
    };
  }

  private modelLabel(settings: AssistantSettings): string {
    try {
      return this.deps.engine.modelPath(settings);
    } catch {
      return 'no model';
    }
  }

  private tellOutcome(run: RunRecord, report: AskReport): void {
    const s = report.totals.states;
    if (report.cancelled) return;
    const problems = s.error + s.truncated;
    if (problems > 0) {
      void vscode.window.showWarningMessage(`Batch finished: ${s.found} found, ${s.not_found} not found, ${problems} with problems.`, 'Show Results')
        .then((pick) => pick && this.deps.panel().show(run.id));
    }
  }
}

/** Decode rate over the jobs still generating, from their own token counts. */
function liveTokensPerSecond(run: RunRecord, phases: Map<string, JobPhase>): number {
  const live = run.jobs.filter((j) => phases.get(j.id) === 'generating').reduce((n, j) => n + (j.generated_tokens ?? 0), 0);
  return (run.generatedTokens + live) / Math.max(1e-3, run.elapsedSeconds);
}

/** VS Code's files.exclude (the true entries) as globs for collection. */
function filesExcludeGlobs(root: string): string[] {
  const config = vscode.workspace.getConfiguration('files', vscode.Uri.file(root)).get<Record<string, unknown>>('exclude') ?? {};
  return Object.entries(config).filter(([, on]) => on === true).map(([glob]) => glob);
}

function emptyResult(j: { id: string; file: string; start_line: number; end_line: number }): JobResult {
  return {
    id: j.id, file: j.file, start_line: j.start_line, end_line: j.end_line, state: 'error', answer: null, explanation: null,
    citation: null, verified: false, error: null, prompt_tokens: 0, cached_tokens: 0, generated_tokens: 0, attempts: 0, seconds: 0,
  };
}
