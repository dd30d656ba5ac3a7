// The benchmark webview: the seed benchmark's charts and table (media/benchmark.ts),
// redrawn from the whole report after every run of the sweep. One panel; it
// keeps the last message so a panel that was hidden or reopened catches up.
import * as vscode from 'vscode';
import { parseFromBenchmarkWebview, type ToBenchmarkWebview } from './benchmark-protocol.js';
import { webviewHtml } from './webview-html.js';

export const BENCHMARK_VIEW_TYPE = 'mlxBatch.benchmark';

export class BenchmarkPanel implements vscode.Disposable {
  private panel?: vscode.WebviewPanel;
  private last?: ToBenchmarkWebview;

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly onCancel: () => void,
  ) {}

  /** Opens (or reveals) the panel and draws `message`. */
  show(message: ToBenchmarkWebview): void {
    this.last = message;
    if (this.panel) {
      this.panel.reveal(undefined, true);
      this.post();
      return;
    }
    const roots = [vscode.Uri.joinPath(this.extensionUri, 'media'), vscode.Uri.joinPath(this.extensionUri, 'dist')];
    const panel = vscode.window.createWebviewPanel(BENCHMARK_VIEW_TYPE, 'Batch Benchmark', { viewColumn: vscode.ViewColumn.Active, preserveFocus: false }, {
      enableScripts: true, localResourceRoots: roots, retainContextWhenHidden: false,
    });
    panel.iconPath = vscode.Uri.joinPath(this.extensionUri, 'media', 'icon.svg');
    panel.webview.html = this.html(panel.webview);
    // Released with this panel, not with the extension: reopening adds none for good.
    const listeners: vscode.Disposable[] = [];
    panel.webview.onDidReceiveMessage((raw) => {
      const m = parseFromBenchmarkWebview(raw);
      if (m?.type === 'ready') this.post();
      else if (m?.type === 'cancel') this.onCancel();
    }, undefined, listeners);
    panel.onDidChangeViewState(() => panel.visible && this.post(), undefined, listeners);
    panel.onDidDispose(() => {
      if (this.panel === panel) this.panel = undefined;
      for (const d of listeners) d.dispose();
    }, undefined, listeners);
    this.panel = panel;
  }

  /** Opens (or reveals) the panel on what it last showed; false if it never showed anything. */
  reveal(): boolean {
    if (!this.last) return false;
    this.show(this.last);
    return true;
  }

  /** Redraws an open panel; a closed one is not reopened. */
  update(message: ToBenchmarkWebview): void {
    this.last = message;
    this.post();
  }

  get isOpen(): boolean {
    return this.panel !== undefined;
  }

  dispose(): void {
    this.panel?.dispose();
  }

  private post(): void {
    if (this.last && this.panel?.visible) void this.panel.webview.postMessage(this.last);
  }

  private html(webview: vscode.Webview): string {
    return webviewHtml(webview, this.extensionUri, { title: 'Batch Benchmark', stylesheet: 'benchmark.css', script: 'benchmark-webview.js' });
  }
}
