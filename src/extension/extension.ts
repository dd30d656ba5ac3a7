// Activation: one Assistant context owns the log, settings, engine host, run
// store, results panel and status bar; commands (src/commands/) are small
// factories over it. Two cleanup lifetimes: the extension's (context
// subscriptions) and one sidecar process's (EngineHost).
import path from 'node:path';
import * as vscode from 'vscode';
import { registerCommands } from '../commands/index.js';
import { SidecarState } from '../engine/client.js';
import { BenchmarkController } from './benchmark-controller.js';
import { EngineHost } from './engine-host.js';
import { ResultsPanel } from './results-panel.js';
import { RunController } from './run-controller.js';
import { RunStore } from './run-store.js';
import { ENGINE_SETTING_KEYS, SECTION, resolveSettings, type AssistantSettings } from './settings.js';
import { ThroughputStatusBar } from './status-bar.js';
import type { FromWebview } from './webview-protocol.js';

export class Assistant implements vscode.Disposable {
  readonly log = vscode.window.createOutputChannel('MLX Batch Assistant', { log: true });
  readonly store: RunStore;
  readonly engine: EngineHost;
  readonly statusBar: ThroughputStatusBar;
  readonly runs: RunController;
  readonly benchmark: BenchmarkController;
  private panelInstance?: ResultsPanel;
  private current: AssistantSettings;
  private shownProblems = '';

  constructor(readonly context: vscode.ExtensionContext) {
    const storage = (context.storageUri ?? context.globalStorageUri).fsPath;
    this.store = new RunStore(path.join(storage, 'runs'));
    // With a server backend the runs' own rates drive the status bar, not an idle sidecar's.
    this.statusBar = new ThroughputStatusBar(() => (this.current.backend === 'builtin' ? this.engine.metrics() : Promise.resolve(undefined)));
    this.engine = new EngineHost(context.extensionPath, this.log, {
      onState: (state, info) => {
        if (state === SidecarState.Running) this.statusBar.setModel(info?.modelPath);
        if (state === SidecarState.Failed || state === SidecarState.Stopped) this.statusBar.setModel(undefined);
      },
      onLoading: (modelPath) => this.statusBar.setLoading(modelPath),
      // Runs go to the server now: once the last one on the built-in engine ends, its model's memory is given back.
      onIdle: () => {
        if (this.current.backend === 'openai') void this.engine.stop();
      },
      onCrashRestart: (why) => {
        void vscode.window.showWarningMessage(`MLX Batch Assistant: ${why}; restarting it. Jobs that were running end as errors (Rerun failed runs them again).`,
          'Open Engine Log').then((pick) => {
          if (pick) void vscode.commands.executeCommand('mlxBatch.openEngineLog');
        });
      },
      workspaceFolder: () => vscode.workspace.workspaceFolders?.find((f) => f.uri.scheme === 'file')?.uri.fsPath,
    });
    this.current = this.readSettings();
    this.runs = new RunController({
      engine: this.engine, store: this.store, panel: () => this.panel, statusBar: this.statusBar, settings: () => this.current, log: this.log,
      // A batch beside a benchmark would share its engine and skew every figure it measures.
      busy: () => (this.benchmark.running ? 'A benchmark is running on the engine: start the batch when it ends (or cancel it).' : undefined),
    });
    this.benchmark = new BenchmarkController({
      engine: this.engine, settings: () => this.current, log: this.log, extensionUri: context.extensionUri, storageDir: path.join(storage, 'benchmark'),
    });
    // The panel registers its serializer now, so a reload restores it.
    this.panelInstance = new ResultsPanel(context.extensionUri, this.store, (m) => this.onWebviewMessage(m));
    context.subscriptions.push(
      this.log, this.statusBar, this.panelInstance, this.benchmark,
      vscode.workspace.onDidChangeConfiguration((e) => e.affectsConfiguration(SECTION) && void this.settingsChanged(e)),
      vscode.workspace.onDidGrantWorkspaceTrust(() => void this.settingsChanged()),
    );
  }

  get settings(): AssistantSettings {
    return this.current;
  }

  get panel(): ResultsPanel {
    return this.panelInstance!;
  }

  dispose(): Promise<void> {
    this.runs.cancel();
    this.benchmark.cancel();
    return this.engine.stop();
  }

  private readSettings(): AssistantSettings {
    const config = vscode.workspace.getConfiguration(SECTION);
    const { settings, problems } = resolveSettings((key) => config.inspect(key), vscode.workspace.isTrusted);
    const text = problems.join('\n');
    if (problems.length && text !== this.shownProblems) {
      for (const p of problems) this.log.warn(p);
      void vscode.window.showWarningMessage(`MLX Batch Assistant settings: ${problems.join(' · ')}`, 'Open Settings').then((pick) => {
        if (pick) void vscode.commands.executeCommand('workbench.action.openSettings', SECTION);
      });
    }
    this.shownProblems = text;
    return settings;
  }

  private async settingsChanged(e?: vscode.ConfigurationChangeEvent): Promise<void> {
    this.current = this.readSettings();
    const engineTouched = !e || ENGINE_SETTING_KEYS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`));
    const idle = this.runs.activeRunIds.length === 0 && !this.benchmark.running;
    if (this.current.backend === 'openai' && e?.affectsConfiguration(`${SECTION}.backend`) && this.engine.running && idle) {
      // Jobs go to the server now: the idle engine gives its model's memory back (it starts again when needed).
      await this.engine.stop();
      return;
    }
    if (!engineTouched || !this.engine.running) return;
    if (!idle) {
      // Restarting now would end the running jobs as errors; the next batch starts the engine with these settings.
      void vscode.window.showInformationMessage('MLX Batch Assistant: the new engine settings apply from the next batch; the running one keeps the current engine.');
      return;
    }
    try {
      if (await this.engine.applySettings(this.current)) void vscode.window.showInformationMessage('MLX Batch Assistant: the engine restarted with the new settings.');
    } catch (err) {
      void vscode.window.showErrorMessage(`MLX Batch Assistant: the engine could not restart: ${(err as Error).message}`);
    }
  }

  private onWebviewMessage(m: FromWebview): void {
    switch (m.type) {
      case 'openFile':
        void vscode.commands.executeCommand('mlxBatch.openCitation', m.runId, m.file, m.startLine, m.endLine);
        break;
      case 'copy':
        void vscode.env.clipboard.writeText(m.text);
        break;
      case 'rerunJob':
        void this.runs.rerun(m.runId, [m.jobId]).catch((e) => vscode.window.showErrorMessage(`Rerun failed: ${(e as Error).message}`));
        break;
      case 'rerunFailed': {
        const run = this.store.get(m.runId);
        const failed = run?.jobs.filter((j) => ['error', 'truncated', 'cancelled'].includes(j.result?.state ?? '')).map((j) => j.id) ?? [];
        void this.runs.rerun(m.runId, failed).catch((e) => vscode.window.showErrorMessage(`Rerun failed: ${(e as Error).message}`));
        break;
      }
      case 'cancel':
        this.runs.cancel(m.runId);
        break;
      case 'export':
        void vscode.commands.executeCommand('mlxBatch.exportRun', m.runId, m.format);
        break;
      case 'deleteRun':
        if (this.runs.activeRunIds.includes(m.runId)) {
          void vscode.window.showInformationMessage('This run is still going: cancel it before deleting it.');
          break;
        }
        this.store.delete(m.runId);
        this.panel.show();
        break;
    }
  }
}

let assistant: Assistant | undefined;

export function activate(context: vscode.ExtensionContext): void {
  try {
    assistant = new Assistant(context);
    registerCommands(assistant);
  } catch (e) {
    void vscode.window.showErrorMessage(`MLX Batch Assistant could not start: ${(e as Error).message}`);
    throw e;
  }
}

export async function deactivate(): Promise<void> {
  await assistant?.dispose();
  assistant = undefined;
}
