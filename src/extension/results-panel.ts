// The results webview: one panel with a run list. It holds no state of its
// own: whenever it becomes visible (or is restored after a reload by the
// serializer) it is sent every run from the store. Job updates are batched to
// a few messages a second; a hidden panel gets none and catches up on show.
import * as vscode from 'vscode';
import type { JobUpdate } from '../ask/report.js';
import type { RunRecord, RunStore } from './run-store.js';
import { webviewHtml } from './webview-html.js';
import { parseFromWebview, withoutJobs, type FromWebview, type RunView, type ToWebview } from './webview-protocol.js';

export const RESULTS_VIEW_TYPE = 'mlxBatch.results';
const FLUSH_MS = 250;

export class ResultsPanel implements vscode.Disposable {
  private panel?: vscode.WebviewPanel;
  private selected?: string;
  private pending = new Map<string, JobUpdate[]>();
  private flushTimer?: NodeJS.Timeout;
  private readonly disposables: vscode.Disposable[] = [];

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly store: RunStore,
    private readonly onMessage: (message: FromWebview) => void,
  ) {
    this.disposables.push(vscode.window.registerWebviewPanelSerializer(RESULTS_VIEW_TYPE, {
      deserializeWebviewPanel: async (panel) => this.adopt(panel),
    }));
  }

  /** Opens (or reveals) the panel on `runId`, or on the newest run. */
  show(runId?: string): void {
    if (runId) this.selected = runId;
    if (this.panel) {
      this.panel.reveal(undefined, true);
      this.sendRuns();
      return;
    }
    const panel = vscode.window.createWebviewPanel(RESULTS_VIEW_TYPE, 'Batch Results', { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true }, {
      enableScripts: true,
      localResourceRoots: [vscode.Uri.joinPath(this.extensionUri, 'media'), vscode.Uri.joinPath(this.extensionUri, 'dist')],
    });
    this.adopt(panel);
  }

  runStarted(run: RunRecord): void {
    this.selected = run.id;
    this.post({ type: 'runStarted', run: viewOf(run) });
  }

  jobUpdate(run: RunRecord, update: JobUpdate): void {
    const list = this.pending.get(run.id) ?? [];
    // Only the latest update of a job matters within one flush.
    const i = list.findIndex((u) => u.id === update.id && !u.result);
    if (i >= 0) list[i] = update;
    else list.push(update);
    this.pending.set(run.id, list);
    this.flushTimer ??= setTimeout(() => this.flush(), FLUSH_MS);
  }

  summary(run: RunRecord, question: number, summary: string): void {
    this.post({ type: 'summary', runId: run.id, question, summary });
  }

  runEnded(run: RunRecord): void {
    this.flush();
    this.post({ type: 'runEnded', run: viewOf(run) });
  }

  dispose(): void {
    clearTimeout(this.flushTimer);
    this.panel?.dispose();
    for (const d of this.disposables) d.dispose();
  }

  // -------------------------------------------------------------------------

  private adopt(panel: vscode.WebviewPanel): void {
    this.panel = panel;
    panel.webview.options = {
      enableScripts: true,
      localResourceRoots: [vscode.Uri.joinPath(this.extensionUri, 'media'), vscode.Uri.joinPath(this.extensionUri, 'dist')],
    };
    panel.iconPath = vscode.Uri.joinPath(this.extensionUri, 'media', 'icon.svg');
    panel.webview.html = this.html(panel.webview);
    // This panel's own listeners, released with it: a panel opened and closed many times leaves none behind.
    const listeners: vscode.Disposable[] = [];
    panel.webview.onDidReceiveMessage((raw) => {
      const message = parseFromWebview(raw);
      if (!message) return;
      if (message.type === 'ready') this.sendRuns();
      else if (message.type === 'select') {
        this.selected = message.runId;
        const run = this.store.get(message.runId);
        if (run) this.post({ type: 'run', run: viewOf(run) });
      } else this.onMessage(message);
    }, undefined, listeners);
    // The event also fires on focus changes (opening a cited file and coming
    // back): only a panel that was hidden has missed messages.
    let wasVisible = panel.visible;
    panel.onDidChangeViewState(() => {
      if (panel.visible && !wasVisible) this.sendRuns();
      wasVisible = panel.visible;
    }, undefined, listeners);
    panel.onDidDispose(() => {
      if (this.panel === panel) this.panel = undefined;
      for (const d of listeners) d.dispose();
    }, undefined, listeners);
  }

  private flush(): void {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const pending = this.pending;
    this.pending = new Map();
    for (const [runId, updates] of pending) {
      const run = this.store.get(runId);
      if (!run) continue;
      this.post({
        type: 'jobs', runId, updates, elapsedSeconds: run.elapsedSeconds, generatedTokens: run.generatedTokens, tokensPerSecond: run.tokensPerSecond,
      });
    }
  }

  private sendRuns(): void {
    this.pending.clear();
    // Only the shown run with its jobs: a full history is tens of MB; another run comes in full when selected.
    const list = this.store.list();
    const shown = list.some((r) => r.id === this.selected) ? this.selected : list[0]?.id;
    this.post({
      type: 'runs',
      runs: list.map((r) => (r.id === shown ? viewOf(r) : withoutJobs(viewOf(r)))),
      ...(this.selected ? { selected: this.selected } : {}),
    });
  }

  private post(message: ToWebview): void {
    // A hidden webview drops messages; it is sent every run when it shows again.
    if (this.panel?.visible) void this.panel.webview.postMessage(message);
  }

  private html(webview: vscode.Webview): string {
    return webviewHtml(webview, this.extensionUri, { title: 'Batch Results', stylesheet: 'results.css', script: 'webview.js' });
  }
}

/** What the webview is sent: the stored run without the extension-only root. */
function viewOf(run: RunRecord): RunView {
  const { root: _root, ...view } = run;
  return view;
}
