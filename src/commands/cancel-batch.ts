import * as vscode from 'vscode';
import type { Assistant } from '../extension/extension.js';

export const cancelBatch = (a: Assistant) => () => {
  if (!a.runs.cancel()) void vscode.window.showInformationMessage('No batch is running.');
};
