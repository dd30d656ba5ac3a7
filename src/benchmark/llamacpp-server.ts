// The llama.cpp peer (the seed's "Ollama" row: Ollama runs llama.cpp):
// llama-cpp-python built from its source package into a venv of its own
// (.venv-llamacpp), so the C++ build (minutes on 2 cores) stays out of setup
// and `npm test`, serving the same GGUF file our engine loads.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, stopChild, tiedToThisProcess, untilChildIdle, untilServing, type PeerServer } from './mlx-lm-server.js';

export const LLAMA_CPP_PYTHON_VERSION = '0.3.36';

/** The peer venv's python, building it first when it is missing or holds another version. */
export function llamaCppPython(root: string, log: (line: string) => void): string {
  const venv = path.join(root, '.venv-llamacpp');
  const python = path.join(venv, 'bin', 'python');
  const stamp = path.join(venv, '.llama-cpp-python');
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === LLAMA_CPP_PYTHON_VERSION) return python;
  const base = process.env.PYTHON ?? 'python3';
  if (!fs.existsSync(python)) execFileSync(base, ['-m', 'venv', venv], { stdio: ['ignore', 'ignore', 'inherit'] });
  log(`building llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} from source into ${path.relative(root, venv)} (several minutes)`);
  const r = spawnSync(python, ['-m', 'pip', 'install', '--disable-pip-version-check', '--no-cache-dir',
    `llama-cpp-python[server]==${LLAMA_CPP_PYTHON_VERSION}`], {
    // pip's output goes to stderr, so a caller's stdout (a report, JSON) stays clean.
    stdio: ['ignore', 2, 2],
    // Native build for this CPU (AVX2 etc.), as a user building it here would get.
    env: { ...process.env, CMAKE_ARGS: '-DGGML_NATIVE=ON', CMAKE_BUILD_PARALLEL_LEVEL: String(os.cpus().length) },
  });
  if (r.status !== 0) throw new Error(`building llama-cpp-python into ${venv} failed (exit ${r.status})`);
  fs.writeFileSync(stamp, LLAMA_CPP_PYTHON_VERSION);
  return python;
}

/**
 * llama-cpp-python's OpenAI server on `ggufPath`, 127.0.0.1, `threads` CPU threads.
 * It has one llama.cpp context and no parallel slots: requests queue behind
 * one lock and run one at a time (a single stream), each reusing the KV of the
 * longest prefix it shares with the request before it.
 */
export async function startLlamaCppServer(root: string, ggufPath: string, opts: { threads: number; contextLength: number },
  log: (line: string) => void = () => undefined): Promise<PeerServer> {
  if (!ggufPath.endsWith('.gguf') || !fs.statSync(ggufPath).isFile()) throw new Error(`${ggufPath}: the llama.cpp peer serves GGUF files only`);
  const python = llamaCppPython(root, log);
  const port = await freePort();
  const child = tiedToThisProcess(spawn(python, ['-m', 'llama_cpp.server', '--model', ggufPath, '--model_alias', 'default', '--host', '127.0.0.1', '--port', String(port),
    '--n_ctx', String(opts.contextLength), '--n_threads', String(opts.threads), '--n_threads_batch', String(opts.threads),
    // By default a new request cuts off the one streaming: N concurrent clients would get one whole answer.
    '--interrupt_requests', 'false', '--verbose', 'false'],
  { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] }));
  const url = `http://127.0.0.1:${port}`;
  // Its stderr (a traceback per refused response_format) is kept for a failed start only.
  await untilServing(child, url, 'llama_cpp.server', 180_000, () => undefined);
  return {
    url: `${url}/v1`, model: 'default',
    describe: `llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} server (llama.cpp built here with GGML_NATIVE) on ${url}, ${path.basename(ggufPath)}, ` +
      `${opts.threads} threads, a single stream (no parallel slots in this server: requests queue and reuse the previous request's prefix KV); ` +
      'it reports no token usage when streaming, so its generated tokens are counted as streamed pieces and its prompt tokens are not known',
    untilIdle: () => untilChildIdle(child),
    stop: () => stopChild(child),
  };
}
