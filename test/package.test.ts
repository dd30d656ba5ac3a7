// `npm run package`: the platform VSIX holds exactly what the extension needs
// at run time (an allow-list), its native libraries resolve inside the
// package and never into the build tree (.venv, native/build), and the
// engine runs from an unpacked copy: the sidecar bundle, the addon and its
// libraries, and xgrammar for constrained JSON.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { SidecarClient } from '../src/engine/client.js';
import { DEFAULT_MODEL, ROOT } from './support/fixtures.js';

interface Packaging {
  hostTarget(): string;
  stageDir(target?: string): string;
  checkLinked(dir: string): Record<string, Record<string, string>>;
  vsixEntries(file: string): string[];
  extractVsix(file: string, dir: string): void;
}

const linux = process.platform === 'linux';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-package-'));
const vsix = path.join(tmp, 'test.vsix');
let packaging: Packaging;
let entries: string[] = [];

/** What may be in the VSIX (paths inside it); anything else fails the test. */
const ALLOWED: RegExp[] = [
  /^\[Content_Types\]\.xml$/,
  /^extension\.vsixmanifest$/,
  /^extension\/package\.json$/,
  /^extension\/readme\.md$/,
  /^extension\/LICENSE\.txt$/,
  /^extension\/dist\/(extension|sidecar|webview|benchmark-webview)\.js$/,
  /^extension\/dist\/node_modules\/@mlc-ai\/web-xgrammar\/(package\.json|lib\/index\.js)$/,
  /^extension\/media\/[\w-]+\.css$/,
  /^extension\/media\/icon\.svg$/,
  /^extension\/native\/build\/Release\/mlx_batch\.node$/,
  // Linux: libmlx and the wheel's BLAS / LAPACK / Fortran runtime beside the addon.
  /^extension\/native\/build\/Release\/libmlx\.so$/,
  /^extension\/native\/build\/Release\/lib(blas|lapack|gfortran|quadmath)-[0-9a-f]{8}\.so[.\d]*$/,
  // macOS
  /^extension\/native\/build\/Release\/(libmlx\.dylib|mlx\.metallib)$/,
];

const MUST_HAVE = [
  'extension/package.json',
  'extension/dist/extension.js',
  'extension/dist/sidecar.js',
  'extension/dist/webview.js',
  'extension/dist/node_modules/@mlc-ai/web-xgrammar/lib/index.js',
  'extension/dist/benchmark-webview.js',
  'extension/media/results.css',
  'extension/media/benchmark.css',
  'extension/media/base.css',
  'extension/native/build/Release/mlx_batch.node',
  ...(linux ? ['extension/native/build/Release/libmlx.so'] : []),
  ...(process.platform === 'darwin' ? ['extension/native/build/Release/libmlx.dylib', 'extension/native/build/Release/mlx.metallib'] : []),
];

before(async () => {
  packaging = (await import(path.join(ROOT, 'scripts', 'package-vsix.mjs'))) as Packaging;
  // The npm script a user runs, into a temp file.
  const r = spawnSync('npm', ['run', 'package', '--', '--out', vsix], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(r.status, 0, `npm run package failed:\n${r.stdout}\n${r.stderr}`);
  entries = packaging.vsixEntries(vsix);
});

after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('npm run package', () => {
  test('the VSIX holds only allowed files, and every must-have', () => {
    const stray = entries.filter((e) => !ALLOWED.some((re) => re.test(e)));
    assert.deepEqual(stray, [], `files outside the allow-list: ${stray.join(', ')}`);
    for (const f of MUST_HAVE) assert.ok(entries.includes(f), `${f} is not in the VSIX (it has: ${entries.join(', ')})`);
    assert.ok(!entries.some((e) => /\.(ts|map)$|\.venv|\/models\/|\/test\/|\.gguf$/.test(e)), 'sources, maps, venv, models or tests were packaged');
  });

  test('its manifest runs no npm: no scripts, no dependencies; same name and entry point', () => {
    const dir = path.join(tmp, 'manifest');
    packaging.extractVsix(vsix, dir);
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'extension', 'package.json'), 'utf8'));
    const ours = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    assert.equal(pkg.name, 'mlx-batch-assistant'); // src/engine/native.ts projectRoot() looks for it
    assert.equal(pkg.main, './dist/extension.js');
    assert.deepEqual(pkg.contributes, ours.contributes);
    for (const key of ['scripts', 'dependencies', 'devDependencies']) assert.equal(pkg[key], undefined, `package.json keeps "${key}"`);
    const manifest = fs.readFileSync(path.join(dir, 'extension.vsixmanifest'), 'utf8');
    assert.match(manifest, new RegExp(`TargetPlatform="${packaging.hostTarget()}"`));
    // No source map is shipped, so no bundle points at one.
    for (const b of ['extension', 'sidecar', 'webview']) {
      assert.doesNotMatch(fs.readFileSync(path.join(dir, 'extension', 'dist', `${b}.js`), 'utf8').slice(-300), /sourceMappingURL/);
    }
  });

  test('the staged addon and its libraries resolve inside the package, never into .venv (ldd)', { skip: !linux && 'ldd: Linux only' }, () => {
    const dir = path.join(packaging.stageDir(), 'native', 'build', 'Release');
    const env = { ...process.env };
    delete env.LD_LIBRARY_PATH;
    const out = spawnSync('ldd', [path.join(dir, 'mlx_batch.node')], { encoding: 'utf8', env }).stdout;
    assert.match(out, /libmlx\.so => \S*vsix-stage\S*libmlx\.so/);
    assert.doesNotMatch(out, /not found/);
    assert.doesNotMatch(out, /\.venv/);
    // Every library in the folder, the same way (throws naming what is wrong).
    const resolved = packaging.checkLinked(dir);
    assert.ok(Object.keys(resolved).length >= 2);
  });

  test('an unpacked copy runs the engine: addon and libraries from the package, constrained JSON through xgrammar',
    { skip: !linux && 'Linux only (the macOS package is built by .github/workflows/package-macos.yml)', timeout: 180_000 }, async () => {
      const dir = path.join(tmp, 'unpacked');
      packaging.extractVsix(vsix, dir);
      const ext = path.join(dir, 'extension');
      const env = { ...process.env };
      delete env.MLX_BATCH_ADDON;
      delete env.LD_LIBRARY_PATH;
      const saved = process.env;
      process.env = env; // the sidecar inherits it
      const client = new SidecarClient({ modelPath: DEFAULT_MODEL, maxBatch: 2 }, { sidecarPath: path.join(ext, 'dist', 'sidecar.js') });
      try {
        await client.start();
        // The sidecar's own map of loaded files: MLX and BLAS come from the unpacked package.
        const maps = fs.readFileSync(`/proc/${client.pid}/maps`, 'utf8');
        const loaded = [...new Set(maps.split('\n').map((l) => l.split(/\s+/)[5]).filter((p) => p && /\.(so|node)/.test(p)))];
        const ours = loaded.filter((p) => /mlx|blas|lapack|gfortran|quadmath/.test(path.basename(p)));
        assert.ok(ours.length >= 3, `expected MLX libraries mapped, got ${loaded.join(', ')}`);
        for (const p of ours) assert.ok(p.startsWith(ext + path.sep), `${p} was loaded from outside the unpacked package`);
        const r = await client.generate({
          messages: [{ role: 'user', content: 'What is the capital of France? Answer in JSON.' }],
          maxTokens: 48,
          jsonSchema: { type: 'object', properties: { answer: { type: 'string' } }, required: ['answer'] },
        });
        assert.equal(r.finishReason, 'stop', r.error);
        assert.equal(typeof JSON.parse(r.text).answer, 'string');
      } finally {
        await client.stop();
        process.env = saved;
      }
    });
});
