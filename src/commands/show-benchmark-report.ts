import * as vscode from 'vscode';
import type { Assistant } from '../extension/extension.js';

export const showBenchmarkReport = (a: Assistant) => async () => {
  // While one runs, its live view (with Cancel), not the last saved report.
  if (a.benchmark.running && a.benchmark.panel.reveal()) return;
  if (a.benchmark.showLast()) return;
  const pick = await vscode.window.showInformationMessage('No benchmark report yet.', 'Run Benchmark');
  if (pick) await vscode.commands.executeCommand('mlxBatch.runBenchmark');
};
