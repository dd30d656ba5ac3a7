// Explorer > Ask About Files…: the clicked item, or the whole multi-selection
// (files and folders), asked one or more questions.
import * as vscode from 'vscode';
import type { Assistant } from '../extension/extension.js';
import { askForQuestions } from '../extension/question-input.js';
import { describeScope, inputsUnder, rootForAll } from './scope.js';

export const askAboutFiles = (a: Assistant) => async (clicked?: vscode.Uri, selected?: vscode.Uri[]) => {
  const uris = selected?.length ? selected : clicked ? [clicked] : [];
  if (uris.length === 0) {
    void vscode.window.showInformationMessage('Select files or folders in the Explorer, then choose Ask About Files…');
    return;
  }
  const questions = await askForQuestions(a.context.globalState, `Ask about ${describeScope(uris)}`);
  if (!questions) return;
  const root = rootForAll(uris);
  await a.runs.start({ questions, scope: describeScope(uris), root, inputs: inputsUnder(root, uris) });
};
