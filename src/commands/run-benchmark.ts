import * as vscode from 'vscode';
import { DEFAULT_SWEEP, parseSweepPlan, QUICK_SWEEP } from '../benchmark/sweep.js';
import type { SweepPlan } from '../benchmark/sweep.js';
import type { Assistant } from '../extension/extension.js';

/** Asks which sweep (unless one is given, e.g. by a test), runs it, and says where the targets stand. */
export const runBenchmark = (a: Assistant) => async (given?: unknown) => {
  if (a.benchmark.running) {
    a.benchmark.panel.reveal();
    void vscode.window.showInformationMessage('A benchmark is already running.');
    return undefined;
  }
  if (a.runs.activeRunIds.length > 0) {
    void vscode.window.showWarningMessage('A batch is running on the engine: run the benchmark when it ends, or its figures would measure both.');
    return undefined;
  }
  let sweep: SweepPlan | undefined;
  if (given !== undefined) {
    sweep = parseSweepPlan(given);
    if (!sweep) throw new Error('Run Benchmark: the sweep given is not valid (contexts, sizes, modes, contextSweepSize, sizeSweepContext)');
  } else {
    const pick = await vscode.window.showQuickPick([
      { label: 'Quick check', description: '5-sentence document, 1 and 5 questions', detail: 'A few minutes. Answers capped at 256 tokens.', sweep: QUICK_SWEEP },
      { label: "The seed's sweep", description: '5, 20 and 30 sentences; 1 to 20 questions; packed and channels',
        detail: 'The same defaults as `mlx-batch bench minions`: about 15 to 25 minutes on a 2-core machine.', sweep: DEFAULT_SWEEP },
    ], { title: 'Run Benchmark', placeHolder: 'Which sweep? The engine runs it one request at a time, then batched.' });
    sweep = pick?.sweep;
  }
  if (!sweep) return undefined;
  const report = await a.benchmark.run(sweep);
  const missed = report.targets.filter((t) => t.met === false).length;
  if (a.benchmark.lastCancelled) void vscode.window.showInformationMessage(`Benchmark cancelled: ${report.runs.length} runs ended${report.runs.length ? ' and are kept' : ''}.`);
  else void vscode.window.showInformationMessage(`Benchmark done: ${report.runs.length} runs, ${missed === 0 ? 'no target missed' : `${missed} target(s) missed`}.`);
  return report;
};
