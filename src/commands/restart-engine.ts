import * as vscode from 'vscode';
import type { Assistant } from '../extension/extension.js';

export const restartEngine = (a: Assistant) => async () => {
  a.runs.cancel();
  a.benchmark.cancel();
  const info = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: 'Restarting the MLX engine…' },
    () => a.engine.restart(a.settings),
  );
  void vscode.window.showInformationMessage(`MLX engine running ${info.modelPath} (${info.device}, ${info.weights}).`);
};
