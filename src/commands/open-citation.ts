// Opens a result's file at its lines (a click on a file or citation in the results).
import path from 'node:path';
import * as vscode from 'vscode';
import type { Assistant } from '../extension/extension.js';

export const openCitation = (a: Assistant) => async (runId: string, file: string, startLine: number, endLine: number) => {
  const run = a.store.get(runId);
  if (!run) return;
  const full = path.resolve(run.root, file);
  // Results name the run's own files (an open editor's may lie outside the
  // workspace), or files inside its folder or the workspace; nothing else is
  // opened, whatever the webview asks for.
  const inside = (dir: string) => {
    const rel = path.relative(dir, full);
    return rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
  };
  const askedAbout = run.jobs.some((j) => path.resolve(run.root, j.file) === full);
  if (!askedAbout && !inside(run.root) && !(vscode.workspace.workspaceFolders ?? []).some((f) => f.uri.scheme === 'file' && inside(f.uri.fsPath))) {
    void vscode.window.showWarningMessage(`Not opened: ${file} is outside this run's folder (${run.root}) and the workspace.`);
    return;
  }
  const document = await vscode.workspace.openTextDocument(vscode.Uri.file(full));
  const last = Math.min(endLine, document.lineCount) - 1;
  const range = new vscode.Range(startLine - 1, 0, last, document.lineAt(Math.max(0, last)).text.length);
  await vscode.window.showTextDocument(document, { selection: range, viewColumn: vscode.ViewColumn.One, preview: true });
};
