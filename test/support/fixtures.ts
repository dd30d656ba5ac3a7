// Test fixtures made by mlx-lm in the project venv: tiny random models of
// every architecture with reference logits (test/python/make_reference.py).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const ROOT = path.resolve(__dirname, '..', '..');
export const VENV_PYTHON = path.join(ROOT, '.venv', 'bin', 'python');
export const DEFAULT_MODEL = path.join(ROOT, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
export const REFERENCE_DIR = path.join(ROOT, 'test', 'fixtures', 'generated', 'reference');

/** Writes (or reuses) the reference models; returns their folders by name. */
export function referenceModels(): Map<string, string> {
  execFileSync(VENV_PYTHON, [path.join(ROOT, 'test', 'python', 'make_reference.py'), REFERENCE_DIR], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  // Every architecture the script knows, not whatever folders exist: one whose
  // fixture failed to build fails the suite instead of dropping out of it.
  const names = execFileSync(VENV_PYTHON, [path.join(ROOT, 'test', 'python', 'make_reference.py'), REFERENCE_DIR, '--list'], {
    encoding: 'utf8',
  }).split('\n').filter(Boolean);
  const models = new Map<string, string>();
  for (const name of names.sort()) {
    const dir = path.join(REFERENCE_DIR, name);
    if (!fs.existsSync(path.join(dir, 'reference.safetensors'))) throw new Error(`reference fixture for ${name} was not built (${dir})`);
    models.set(name, dir);
  }
  return models;
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}
