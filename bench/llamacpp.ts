// The llama.cpp peer of bench:engine: the same prompts (token ids) through
// llama-cpp-python's Python API, one at a time (bench/python/llamacpp_peer.py).
// The venv it runs in is built by src/benchmark/llamacpp-server.ts.
import { execFileSync } from 'node:child_process';
import path from 'node:path';

export { LLAMA_CPP_PYTHON_VERSION, llamaCppPython } from '../src/benchmark/llamacpp-server.js';

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
