// npm run test:vscode: the extension inside a downloaded VS Code (Electron),
// through @vscode/test-electron. It needs VS Code's download server (not
// reachable from this project's machines) and a display (xvfb-run on a
// headless Linux), so it runs only when MLX_BATCH_VSCODE_TESTS is set, and a
// failed download skips it with the reason instead of failing. The editor test
// that runs everywhere here is test/e2e/ (code-server, npm run test:e2e).
//   MLX_BATCH_VSCODE_TESTS=1 [MLX_BATCH_VSCODE_VERSION=1.90.0] xvfb-run -a npm run test:vscode
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { downloadAndUnzipVSCode, runTests } from '@vscode/test-electron';

const ROOT = path.resolve(__dirname, '..', '..');
const OUT = path.join(ROOT, '.tmp', 'vscode-tests');

function skip(why: string): never {
  console.log(`test:vscode skipped: ${why}`);
  process.exit(0);
}

async function main(): Promise<void> {
  if (!process.env.MLX_BATCH_VSCODE_TESTS) {
    skip('set MLX_BATCH_VSCODE_TESTS=1 to run it (it downloads VS Code, which these machines cannot; test/e2e runs the extension in code-server instead)');
  }
  // The extension as VS Code loads it (dist/), and the suites bundled for its extension host.
  const { build } = (await import(path.join(ROOT, 'esbuild.mjs'))) as { build(o: { only: string[] }): Promise<void> };
  await build({ only: ['extension', 'sidecar', 'webview'] });
  const esbuild = await import('esbuild');
  await esbuild.build({
    entryPoints: [path.join(__dirname, 'suite', 'index.ts')],
    outfile: path.join(OUT, 'suite.js'),
    bundle: true, platform: 'node', format: 'cjs', target: 'node20', external: ['vscode'], logLevel: 'warning',
  });

  let vscodeExecutablePath: string;
  try {
    vscodeExecutablePath = await downloadAndUnzipVSCode({
      version: process.env.MLX_BATCH_VSCODE_VERSION ?? 'stable',
      cachePath: path.join(ROOT, '.tmp', 'vscode-test'),
      timeout: 30_000,
    });
  } catch (e) {
    skip(`VS Code could not be downloaded (${(e as Error).message})`);
  }

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-vscode-'));
  const workspace = path.join(tmp, 'workspace');
  fs.cpSync(path.join(ROOT, 'test', 'fixtures', 'ask', 'docs'), workspace, { recursive: true });
  try {
    const code = await runTests({
      vscodeExecutablePath,
      extensionDevelopmentPath: ROOT,
      extensionTestsPath: path.join(OUT, 'suite.js'),
      launchArgs: [workspace, '--disable-extensions', '--disable-workspace-trust', '--skip-welcome', '--skip-release-notes',
        '--user-data-dir', path.join(tmp, 'user-data'), '--extensions-dir', path.join(tmp, 'extensions')],
      extensionTestsEnv: { MLX_BATCH_TEST_USER_DATA: path.join(tmp, 'user-data'), MLX_BATCH_TEST_WORKSPACE: workspace },
    });
    process.exitCode = code;
  } catch (e) {
    console.error(`test:vscode failed: ${(e as Error).message}`);
    process.exitCode = 1;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

void main();
