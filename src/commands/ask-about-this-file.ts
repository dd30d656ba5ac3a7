// Editor > Ask About This File: the whole document (unsaved edits included),
// or only the selected lines, whose citations keep the file's line numbers.
import path from 'node:path';
import * as vscode from 'vscode';
import type { Assistant } from '../extension/extension.js';
import { askForQuestions } from '../extension/question-input.js';
import { rootFor } from './scope.js';

export const askAboutThisFile = (a: Assistant) => async (uri?: vscode.Uri) => {
  const editor = vscode.window.activeTextEditor;
  const document = uri && editor?.document.uri.toString() !== uri.toString() ? await vscode.workspace.openTextDocument(uri) : editor?.document;
  if (!document) {
    void vscode.window.showInformationMessage('Open a file to ask about it.');
    return;
  }
  // Citations, reruns and exports read the file on disk: an unsaved buffer, a
  // notebook cell or a diff's old side has none (or another text).
  if (document.uri.scheme !== 'file') {
    void vscode.window.showInformationMessage(document.isUntitled
      ? 'Save the file first: answers cite lines of the file on disk.'
      : `Ask About This File works on files on disk, not ${document.uri.scheme}: documents.`);
    return;
  }
  const selection = editor?.document === document && !editor.selection.isEmpty ? editor.selection : undefined;
  const root = rootFor(document.uri);
  const file = path.relative(root, document.uri.fsPath).split(path.sep).join('/');
  let firstLine = 1;
  let text = document.getText();
  if (selection) {
    // Whole lines; a selection ending at column 0 does not take that line.
    const last = selection.end.character === 0 && selection.end.line > selection.start.line ? selection.end.line - 1 : selection.end.line;
    firstLine = selection.start.line + 1;
    text = document.getText(new vscode.Range(selection.start.line, 0, last, document.lineAt(last).text.length));
  }
  const scope = selection ? `${file} lines ${firstLine}-${firstLine + text.split('\n').length - 1}` : file;
  const questions = await askForQuestions(a.context.globalState, `Ask about ${scope}`);
  if (!questions) return;
  await a.runs.start({ questions, scope, root, sources: [{ path: file, text, firstLine }] });
};
