#!/usr/bin/env node
// npm test: every test/**/*.test.ts under node's test runner, one file at a
// time (the machine has 2 cores and most suites run a real model).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { nodeTooOld } from './setup.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const only = process.argv.slice(2);

// Older Nodes fail later with "bad option: --test-concurrency": say what is wrong instead.
const tooOld = nodeTooOld();
if (tooOld) {
  console.error(`npm test: ${tooOld}`);
  process.exit(1);
}

function findTests(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    // e2e/ (npm run test:e2e) and vscode/ (npm run test:vscode) need tools of their own.
    if (e.isDirectory()) return ['fixtures', 'e2e', 'vscode'].includes(e.name) ? [] : findTests(p);
    return e.name.endsWith('.test.ts') ? [p] : [];
  });
}

const files = findTests(path.join(root, 'test'))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort();
if (files.length === 0) {
  console.error(`no test files match ${only.join(' ')}`);
  process.exit(1);
}
// The CLI and sidecar suites run the bundles a user runs.
const build = spawnSync(process.execPath, [path.join(root, 'esbuild.mjs')], { cwd: root, stdio: 'inherit' });
if (build.status !== 0) process.exit(build.status ?? 1);
const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=1', ...files], {
  cwd: root,
  stdio: 'inherit',
});
process.exit(r.status ?? 1);
