// Command palette > Batch Query…: a scope (a glob over the workspace, the open
// editors, or the Explorer's selection), then questions typed or read from a file.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as vscode from 'vscode';
import { collectFiles } from '../ask/collect.js';
import { parseQuestionsFile } from '../ask/questions.js';
import type { Assistant } from '../extension/extension.js';
import { askForQuestions } from '../extension/question-input.js';
import type { RunRequest } from '../extension/run-controller.js';
import { describeScope, inputsUnder, rootForAll } from './scope.js';

const LAST_GLOB_KEY = 'mlxBatch.lastGlob';

type Scope = Omit<RunRequest, 'questions'>;

export const batchQuery = (a: Assistant) => async () => {
  const folder = vscode.workspace.workspaceFolders?.[0];
  if (!folder) {
    void vscode.window.showInformationMessage('Open a folder to run a batch query over its files.');
    return;
  }
  const scope = await pickScope(a, folder);
  if (!scope) return;
  const questions = await pickQuestions(a, scope.scope);
  if (!questions) return;
  await a.runs.start({ ...scope, questions });
};

async function pickScope(a: Assistant, folder: vscode.WorkspaceFolder): Promise<Scope | undefined> {
  const choice = await vscode.window.showQuickPick([
    { label: '$(search) Files matching a glob…', id: 'glob' },
    { label: '$(files) Open editors', id: 'editors' },
    { label: '$(list-tree) Explorer selection', id: 'explorer' },
  ], { title: 'Batch Query: what to ask about' });
  if (!choice) return undefined;
  if (choice.id === 'glob') {
    const glob = await vscode.window.showInputBox({
      title: 'Batch Query: files matching',
      value: a.context.workspaceState.get<string>(LAST_GLOB_KEY, '**/*'),
      prompt: `A glob relative to ${folder.name} (.gitignore and mlxBatch.exclude apply)`,
      validateInput: (v) => (v.trim() ? undefined : 'Give a glob such as src/**/*.ts'),
    });
    if (!glob) return undefined;
    await a.context.workspaceState.update(LAST_GLOB_KEY, glob);
    return { scope: glob, root: folder.uri.fsPath, inputs: [glob.trim()] };
  }
  if (choice.id === 'editors') {
    const documents = vscode.window.tabGroups.all.flatMap((g) => g.tabs)
      .map((t) => (t.input instanceof vscode.TabInputText ? t.input.uri : undefined))
      .filter((u): u is vscode.Uri => u?.scheme === 'file');
    if (documents.length === 0) {
      void vscode.window.showInformationMessage('No files are open in editors.');
      return undefined;
    }
    const root = folder.uri.fsPath;
    const unique = [...new Map(documents.map((u) => [u.toString(), u])).values()];
    const rel = (u: vscode.Uri) => path.relative(root, u.fsPath).split(path.sep).join('/');
    // The same checks as a folder's files (size, lock and minified files, binary), on the files as saved...
    const onDisk = unique.filter((u) => fs.existsSync(u.fsPath));
    const checked = await collectFiles(onDisk.map((u) => u.fsPath), { cwd: root, maxFileBytes: a.settings.maxFileBytes });
    const kept = new Set(checked.files.map((f) => f.absPath));
    const skipped = [
      ...checked.skipped,
      ...unique.filter((u) => !onDisk.includes(u)).map((u) => ({ file: rel(u), reason: 'no longer on disk (deleted or moved)' })),
    ];
    // ...then asked about as shown, unsaved edits included; a tab that cannot be read is skipped, not the whole run.
    const sources = [];
    for (const u of onDisk.filter((x) => kept.has(path.resolve(x.fsPath)))) {
      try {
        sources.push({ path: rel(u), text: (await vscode.workspace.openTextDocument(u)).getText() });
      } catch (e) {
        skipped.push({ file: rel(u), reason: `cannot be opened: ${(e as Error).message}` });
      }
    }
    return { scope: `${unique.length} open editor${unique.length === 1 ? '' : 's'}`, root, sources, skipped };
  }
  const uris = await explorerSelection();
  if (uris.length === 0) {
    void vscode.window.showInformationMessage('Nothing is selected in the Explorer.');
    return undefined;
  }
  const root = rootForAll(uris);
  return { scope: describeScope(uris), root, inputs: inputsUnder(root, uris) };
}

/**
 * VS Code has no API for the Explorer's selection; its "Copy Path" command
 * copies it, so read that and restore the clipboard's text. A marker put there
 * first tells "nothing selected" from a selection the clipboard already held.
 */
async function explorerSelection(): Promise<vscode.Uri[]> {
  const saved = await vscode.env.clipboard.readText();
  const marker = `mlx-batch-no-selection-${randomUUID()}`;
  try {
    await vscode.env.clipboard.writeText(marker);
    await vscode.commands.executeCommand('workbench.files.action.focusFilesExplorer');
    await vscode.commands.executeCommand('copyFilePath');
    const text = await vscode.env.clipboard.readText();
    return text === marker ? [] : text.split(/\r?\n/).filter((p) => p && fs.existsSync(p)).map((p) => vscode.Uri.file(p));
  } finally {
    await vscode.env.clipboard.writeText(saved);
  }
}

async function pickQuestions(a: Assistant, scope: string): Promise<string[] | undefined> {
  const how = await vscode.window.showQuickPick([
    { label: '$(edit) Type questions', id: 'type' },
    { label: '$(file) Read questions from a file…', id: 'file', description: '.txt one per line, .md list items, .jsonl' },
  ], { title: `Batch Query over ${scope}: questions` });
  if (!how) return undefined;
  if (how.id === 'type') return askForQuestions(a.context.globalState, `Batch Query over ${scope}`);
  const picked = await vscode.window.showOpenDialog({ canSelectMany: false, filters: { Questions: ['txt', 'md', 'jsonl'] }, title: 'Questions file' });
  if (!picked?.[0]) return undefined;
  const questions = parseQuestionsFile(fs.readFileSync(picked[0].fsPath, 'utf8'), path.basename(picked[0].fsPath));
  if (questions.length === 0) throw new Error(`${picked[0].fsPath} holds no questions`);
  return questions;
}
