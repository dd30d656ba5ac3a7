// Select Model…: the default model, GGUF files and MLX folders found in the
// Hugging Face cache and the mlxBatch.modelFolders setting, or Browse….
// The new model is loaded first; if it cannot be, the engine's error is shown
// and the previous model stays in use.
import fs from 'node:fs';
import * as vscode from 'vscode';
import { formatBytes } from '../byte-size.js';
import { defaultModelCandidates } from '../extension/engine-host.js';
import type { Assistant } from '../extension/extension.js';
import { huggingFaceHubCache, scanModels } from '../extension/model-scan.js';
import { SECTION } from '../extension/settings.js';

interface ModelItem extends vscode.QuickPickItem {
  modelPath?: string;
  browse?: boolean;
}

export const selectModel = (a: Assistant) => async () => {
  const items = await vscode.window.withProgress({ location: vscode.ProgressLocation.Window, title: 'Looking for models…' }, async () => {
    const found = await scanModels([huggingFaceHubCache(), ...a.settings.modelFolders]);
    const defaults = defaultModelCandidates(a.context.extensionPath).filter((p) => fs.existsSync(p));
    const list: ModelItem[] = [
      ...defaults.slice(0, 1).map((p) => ({ label: '$(star) Default model (SmolLM2-135M-Instruct Q4_1)', description: p, modelPath: '' })),
      ...found.map((m) => ({
        label: m.name,
        description: `${m.format === 'gguf' ? 'GGUF' : 'MLX folder'} · ${m.architecture} · ${formatBytes(m.bytes)}`,
        detail: m.path,
        modelPath: m.path,
      })),
      { label: '$(folder-opened) Browse…', description: 'a .gguf file or a model folder', browse: true },
    ];
    return list;
  });
  const current = a.settings.modelPath;
  const pick = await vscode.window.showQuickPick(items, { title: 'Select Model', placeHolder: current ? `Now: ${current}` : 'Now: the default model', matchOnDetail: true });
  if (!pick) return;
  let modelPath = pick.modelPath;
  if (pick.browse) {
    const chosen = await vscode.window.showOpenDialog({ canSelectFiles: true, canSelectFolders: true, canSelectMany: false, title: 'A .gguf file or a model folder' });
    if (!chosen?.[0]) return;
    modelPath = chosen[0].fsPath;
  }
  if (modelPath === undefined) return;
  const settingsForLoad = { ...a.settings, modelPath };
  if (a.runs.activeRunIds.length > 0 || a.benchmark.running) {
    // The old engine stops once the new model loads: a batch on it would end in errors.
    const go = await vscode.window.showWarningMessage('A batch is running on the current model. Switching models cancels it.', { modal: true }, 'Cancel Batch and Switch');
    if (!go) return;
    a.runs.cancel();
    a.benchmark.cancel();
  }
  try {
    const info = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: `Loading ${modelPath || 'the default model'}…` },
      () => a.engine.trySwitchModel(a.engine.modelPath(settingsForLoad), settingsForLoad),
    );
    // Written where it wins: a workspace's own modelPath would override a user setting and reload the old model.
    const config = vscode.workspace.getConfiguration(SECTION);
    const inWorkspace = vscode.workspace.isTrusted && config.inspect<string>('modelPath')?.workspaceValue !== undefined;
    const target = inWorkspace ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
    await config.update('modelPath', modelPath, target);
    void vscode.window.showInformationMessage(`Model loaded: ${info.architecture}, ${info.weights} on ${info.device}, context ${info.contextLength}.`);
  } catch (e) {
    void vscode.window.showErrorMessage(`The engine cannot load ${modelPath}: ${(e as Error).message}. The previous model stays in use.`);
  }
};
