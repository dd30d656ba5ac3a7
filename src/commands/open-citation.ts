// Opens a result's file at its lines (a click on a file or citation in the results).
import path from 'node:path';
import * as vscode from 'vscode';
import type { Assistant } from '../extension/extension.js';

export const openCitation = (a: Assistant) => async (runId: string, file: string, startLine: number, endLine: number) => {
  const run = a.store.get(runId);
  if (!run) return;
  const full = path.resolve(run.root, file);
  // Results name files inside the run's folder; anything else is not opened.
  if (path.relative(run.root, full).startsWith('..')) return;
  const document = await vscode.workspace.openTextDocument(vscode.Uri.file(full));
  const last = Math.min(endLine, document.lineCount) - 1;
  const range = new vscode.Range(startLine - 1, 0, last, document.lineAt(Math.max(0, last)).text.length);
  await vscode.window.showTextDocument(document, { selection: range, viewColumn: vscode.ViewColumn.One, preview: true });
};
