// Export a run as Markdown (citations as path#Lstart-Lend links), JSON (the
// `ask` report shape) or CSV, through a save dialog.
import fs from 'node:fs';
import path from 'node:path';
import * as vscode from 'vscode';
import type { Assistant } from '../extension/extension.js';
import { exportRunAs } from '../extension/run-export.js';
import type { ExportFormat } from '../extension/webview-protocol.js';

const EXTENSIONS: Record<ExportFormat, string> = { markdown: 'md', json: 'json', csv: 'csv' };

export const exportRun = (a: Assistant) => async (runId: string, format: ExportFormat) => {
  const run = a.store.get(runId);
  if (!run) return;
  const target = await vscode.window.showSaveDialog({
    defaultUri: vscode.Uri.file(path.join(run.root, `batch-${run.id.slice(0, 19)}.${EXTENSIONS[format]}`)),
    filters: { [format.toUpperCase()]: [EXTENSIONS[format]] },
  });
  if (!target) return;
  fs.writeFileSync(target.fsPath, exportRunAs(run, format, target.fsPath));
  void vscode.window.showInformationMessage(`Exported to ${target.fsPath}`);
};
