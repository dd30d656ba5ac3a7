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

/**
 * The folder a selection's report paths are relative to: its workspace folder,
 * or, when the selection spans several, the folder holding them all (each
 * input is still collected with its own folder's filters).
 */
export function rootForAll(uris: vscode.Uri[]): string {
  const roots = [...new Set(uris.map(rootFor))];
  return roots.reduce(commonFolder);
}

function commonFolder(a: string, b: string): string {
  const outside = (dir: string) => {
    const rel = path.relative(dir, b);
    return rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel);
  };
  let common = a;
  while (outside(common)) {
    const up = path.dirname(common);
    if (up === common) break;
    common = up;
  }
  return common;
}

/** Inputs relative to `root`, '.' for the root itself. */
export function inputsUnder(root: string, uris: vscode.Uri[]): string[] {
  return uris.map((u) => path.relative(root, u.fsPath) || '.');
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
