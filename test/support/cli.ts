// Runs the built CLI (bin/mlx-batch.js -> dist/cli.js) the way a user does.
import { execFile } from 'node:child_process';
import path from 'node:path';

import { ROOT } from './fixtures.js';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  /** Where the CLI runs (default: the repository root). */
  cwd?: string;
  /** Its environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
}

export function runCli(args: string[], timeoutMs = 600_000, options: CliOptions = {}): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(ROOT, 'bin', 'mlx-batch.js'), ...args],
      { cwd: options.cwd ?? ROOT, env: options.env ?? process.env, timeout: timeoutMs, maxBuffer: 32 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      });
  });
}
