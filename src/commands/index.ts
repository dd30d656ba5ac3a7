// Every command the extension contributes (package.json "contributes.commands"),
// each built by a small factory over the Assistant context.
import * as vscode from 'vscode';
import type { Assistant } from '../extension/extension.js';
import { askAboutFiles } from './ask-about-files.js';
import { askAboutThisFile } from './ask-about-this-file.js';
import { batchQuery } from './batch-query.js';
import { cancelBatch } from './cancel-batch.js';
import { exportRun } from './export-run.js';
import { openCitation } from './open-citation.js';
import { openEngineLog } from './open-engine-log.js';
import { restartEngine } from './restart-engine.js';
import { runBenchmark } from './run-benchmark.js';
import { selectModel } from './select-model.js';
import { showBenchmarkReport } from './show-benchmark-report.js';
import { showResults } from './show-results.js';

const COMMANDS: Record<string, (a: Assistant) => (...args: never[]) => unknown> = {
  'mlxBatch.askAboutFiles': askAboutFiles,
  'mlxBatch.askAboutThisFile': askAboutThisFile,
  'mlxBatch.batchQuery': batchQuery,
  'mlxBatch.cancelBatch': cancelBatch,
  'mlxBatch.showResults': showResults,
  'mlxBatch.selectModel': selectModel,
  'mlxBatch.restartEngine': restartEngine,
  'mlxBatch.openEngineLog': openEngineLog,
  'mlxBatch.exportRun': exportRun,
  'mlxBatch.openCitation': openCitation,
  'mlxBatch.runBenchmark': runBenchmark,
  'mlxBatch.showBenchmarkReport': showBenchmarkReport,
};

export function registerCommands(assistant: Assistant): void {
  for (const [id, factory] of Object.entries(COMMANDS)) {
    const run = factory(assistant);
    assistant.context.subscriptions.push(vscode.commands.registerCommand(id, async (...args: never[]) => {
      try {
        return await run(...args);
      } catch (e) {
        assistant.log.error(`${id}: ${(e as Error).stack ?? e}`);
        void vscode.window.showErrorMessage(`MLX Batch Assistant: ${(e as Error).message}`);
      }
    }));
  }
}
