// What a run is relative to and how its scope reads in the results header.
import fs from 'node:fs';
import path from 'node:path';
import * as vscode from 'vscode';

/** The workspace folder holding `uri`, else its own folder (a file outside the workspace). */
export function rootFor(uri: vscode.Uri): string {
  const folder = vscode.workspace.getWorkspaceFolder(uri);
  if (folder) return folder.uri.fsPath;
  return isFolder(uri.fsPath) ? uri.fsPath : path.dirname(uri.fsPath);
}

export function describeScope(uris: vscode.Uri[]): string {
  if (uris.length === 1) return vscode.workspace.asRelativePath(uris[0], false) || path.basename(uris[0].fsPath);
  const folders = uris.filter((u) => isFolder(u.fsPath)).length;
  const files = uris.length - folders;
  const part = (n: number, what: string) => (n ? `${n} ${what}${n === 1 ? '' : 's'}` : '');
  return [part(files, 'file'), part(folders, 'folder')].filter(Boolean).join(' and ');
}

function isFolder(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}
