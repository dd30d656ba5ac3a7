// The llama.cpp peer: llama-cpp-python built from its source package into a
// venv of its own (.venv-llamacpp), so the C++ build (minutes on 2 cores)
// stays out of setup and `npm test`. It runs the same GGUF our engine loads.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const LLAMA_CPP_PYTHON_VERSION = '0.3.36';

/** The peer venv's python, building it first when it is missing or holds another version. */
export function llamaCppPython(root: string, log: (line: string) => void): string {
  const venv = path.join(root, '.venv-llamacpp');
  const python = path.join(venv, 'bin', 'python');
  const stamp = path.join(venv, '.llama-cpp-python');
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === LLAMA_CPP_PYTHON_VERSION) return python;
  const base = process.env.PYTHON ?? 'python3';
  if (!fs.existsSync(python)) execFileSync(base, ['-m', 'venv', venv], { stdio: 'inherit' });
  log(`[bench] building llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} from source into ${path.relative(root, venv)} (several minutes)`);
  const r = spawnSync(python, ['-m', 'pip', 'install', '--disable-pip-version-check', '--no-cache-dir',
    `llama-cpp-python[server]==${LLAMA_CPP_PYTHON_VERSION}`], {
    stdio: 'inherit',
    // Native build for this CPU (AVX2 etc.), as a user building it here would get.
    env: { ...process.env, CMAKE_ARGS: '-DGGML_NATIVE=ON', CMAKE_BUILD_PARALLEL_LEVEL: String(os.cpus().length) },
  });
  if (r.status !== 0) throw new Error(`building llama-cpp-python into ${venv} failed (exit ${r.status})`);
  fs.writeFileSync(stamp, LLAMA_CPP_PYTHON_VERSION);
  return python;
}

export interface LlamaCppRun {
  wall_s: number;
  decode_tps: number;
  prefill_s: number;
  prefilled_tokens: number;
  prompt_tokens: number;
  generated_tokens: number;
}

/** One single-stream pass of llama.cpp over the prompts (token ids), in order, maxTokens each. */
export function llamaCppOnce(python: string, root: string, model: string, promptFile: string, maxTokens: number,
  threads: number): { run: LlamaCppRun; version: string } {
  const out = execFileSync(python, [path.join(root, 'bench', 'python', 'llamacpp_peer.py'), '--model', model,
    '--prompt-file', promptFile, '--max-tokens', String(maxTokens), '--repeats', '1', '--threads', String(threads)],
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 << 20 });
  const parsed = JSON.parse(out);
  return { run: parsed.repeats[0], version: parsed.llama_cpp_python };
}
