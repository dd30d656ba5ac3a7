// Runs inside VS Code's extension host (bundled by test/vscode/run.ts): the
// extension activates, registers every command it contributes, reports an
// invalid setting by name, and opens its results panel.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import * as vscode from 'vscode';

const EXTENSION_ID = 'mlx-batch.mlx-batch-assistant';
const tests: Array<[string, () => Promise<void>]> = [];
const test = (name: string, fn: () => Promise<void>) => tests.push([name, fn]);

async function waitFor<T>(what: string, check: () => T | undefined | false, ms = 15_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = check();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function findFile(dir: string, name: string): string | undefined {
  if (!fs.existsSync(dir)) return undefined;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      const found = findFile(p, name);
      if (found) return found;
    } else if (e.name === name) {
      return p;
    }
  }
  return undefined;
}

test('the extension activates', async () => {
  const ext = vscode.extensions.getExtension(EXTENSION_ID);
  assert.ok(ext, `${EXTENSION_ID} is not installed`);
  await ext.activate();
  assert.ok(ext.isActive);
});

test('every contributed command is registered', async () => {
  const ext = vscode.extensions.getExtension(EXTENSION_ID)!;
  const contributed = (ext.packageJSON.contributes.commands as Array<{ command: string }>).map((c) => c.command);
  const registered = new Set(await vscode.commands.getCommands(true));
  assert.deepEqual(contributed.filter((c) => !registered.has(c)), []);
});

test('an invalid setting is reported with its name, and the default is used', async () => {
  const config = vscode.workspace.getConfiguration('mlxBatch');
  await config.update('maxTokens', 5, vscode.ConfigurationTarget.Global);
  try {
    const logs = path.join(process.env.MLX_BATCH_TEST_USER_DATA ?? '', 'logs');
    await waitFor('the warning in the extension log', () => {
      const file = findFile(logs, 'MLX Batch Assistant.log');
      return file && /mlxBatch\.maxTokens must be a whole number from 16 to 8192 \(got 5\)/.test(fs.readFileSync(file, 'utf8'));
    });
  } finally {
    await config.update('maxTokens', undefined, vscode.ConfigurationTarget.Global);
  }
});

test('Show Results opens the results panel', async () => {
  await vscode.commands.executeCommand('mlxBatch.showResults');
  await waitFor('the results panel', () => vscode.window.tabGroups.all.flatMap((g) => g.tabs)
    .some((t) => t.input instanceof vscode.TabInputWebview && t.input.viewType.includes('mlxBatch.results')));
});

test('Cancel Batch with nothing running does not throw', async () => {
  await vscode.commands.executeCommand('mlxBatch.cancelBatch');
});

export async function run(): Promise<void> {
  const failures: string[] = [];
  for (const [name, fn] of tests) {
    try {
      await fn();
      console.log(`ok - ${name}`);
    } catch (e) {
      console.log(`not ok - ${name}: ${(e as Error).stack ?? e}`);
      failures.push(name);
    }
  }
  console.log(`${tests.length - failures.length} passed, ${failures.length} failed`);
  if (failures.length) throw new Error(`${failures.length} test(s) failed: ${failures.join('; ')}`);
}
