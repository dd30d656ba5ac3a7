// mlx_lm.server from the project venv, serving the same weights as our engine
// (a GGUF is first written out as a float32 MLX folder by scripts/gguf_to_mlx.py),
// on 127.0.0.1, for the benchmarks' "server" client.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export interface PeerServer {
  /** http://127.0.0.1:PORT/v1 */
  url: string;
  /** The model name requests must carry. */
  model: string;
  describe: string;
  /** Resolves once the server has stopped working: a stream the client gave up on can keep it busy a while. */
  untilIdle(): Promise<void>;
  stop(): Promise<void>;
}

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Kills `child` if this process exits first (a second Ctrl-C exits at once, without the cleanup that stops servers). */
export function tiedToThisProcess(child: ChildProcess): ChildProcess {
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  child.once('exit', () => process.off('exit', kill));
  return child;
}

export function stopChild(child: ChildProcess, timeoutMs = 20_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** CPU time of process `pid` so far, in clock ticks (Linux); undefined where it cannot be read. */
function cpuTicks(pid: number): number | undefined {
  try {
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return undefined;
  }
}

/**
 * Resolves once `child` uses no CPU for `quietMs` (at most one clock tick),
 * or after `timeoutMs`. Without /proc, waits `quietMs` once.
 */
export async function untilChildIdle(child: ChildProcess, quietMs = 200, timeoutMs = 30_000): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null) return;
  let last = cpuTicks(child.pid);
  if (last === undefined) return sleep(quietMs);
  for (const end = Date.now() + timeoutMs; Date.now() < end;) {
    await sleep(quietMs);
    const now = cpuTicks(child.pid);
    if (now === undefined || now - last <= 1) return;
    last = now;
  }
}

/** The MLX folder mlx-lm loads for `modelPath`: the folder itself, or the GGUF converted next to it. */
export function mlxFolderFor(root: string, python: string, modelPath: string): string {
  if (fs.statSync(modelPath).isDirectory()) return modelPath;
  if (!modelPath.endsWith('.gguf')) throw new Error(`${modelPath}: mlx_lm.server needs a GGUF file or an MLX model folder`);
  const folder = modelPath.replace(/\.gguf$/, '').replace(/\.Q\d\w*$/i, '') + '-f32-mlx';
  execFileSync(python, [path.join(root, 'scripts', 'gguf_to_mlx.py'), modelPath, folder], { stdio: ['ignore', 'ignore', 'inherit'] });
  return folder;
}

/**
 * Resolves once the server `child` answers GET url/v1/models; throws with the
 * tail of its stderr when it exits first or is not ready within `ms` (then it is stopped).
 */
export async function untilServing(child: ChildProcess, url: string, name: string, ms: number, log: (line: string) => void): Promise<void> {
  let err = '';
  child.stderr!.on('data', (c) => {
    err = (err + c).slice(-4000);
    log(String(c).trimEnd());
  });
  // A python that cannot be started emits 'error', which unheard would end the whole process.
  let spawnError: Error | undefined;
  child.on('error', (e) => {
    spawnError = e;
  });
  const t0 = Date.now();
  for (;;) {
    if (spawnError) throw new Error(`${name} could not be started: ${spawnError.message}`);
    if (child.exitCode !== null) throw new Error(`${name} exited (${child.exitCode}) before it was ready\n${err}`);
    if (Date.now() - t0 > ms) {
      await stopChild(child);
      throw new Error(`${name} was not ready in ${Math.round(ms / 1000)} s\n${err}`);
    }
    try {
      if ((await fetch(`${url}/v1/models`)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** Starts mlx_lm.server with `slots` requests decoded at once; resolves when it answers /v1/models. */
export async function startMlxLmServer(root: string, modelPath: string, slots: number, log: (line: string) => void = () => undefined): Promise<PeerServer> {
  const python = path.join(root, '.venv', 'bin', 'python');
  if (!fs.existsSync(python)) throw new Error(`mlx_lm.server: no project venv at ${path.dirname(path.dirname(python))}; run the setup (npm install) or give --server-url`);
  const folder = mlxFolderFor(root, python, modelPath);
  const port = await freePort();
  const child = tiedToThisProcess(spawn(python, ['-m', 'mlx_lm.server', '--model', folder, '--host', '127.0.0.1', '--port', String(port),
    '--log-level', 'WARNING', '--decode-concurrency', String(slots), '--prompt-concurrency', String(slots)],
  { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] }));
  const url = `http://127.0.0.1:${port}`;
  await untilServing(child, url, 'mlx_lm.server', 180_000, log);
  return {
    url: `${url}/v1`, model: 'default_model',
    describe: `mlx_lm.server (project venv) on ${url}, ${path.relative(root, folder)}, up to ${slots} requests decoded at once`,
    untilIdle: () => untilChildIdle(child),
    stop: () => stopChild(child),
  };
}
