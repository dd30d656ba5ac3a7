// Which files `ask` reads: folder and glob expansion, .gitignore, exclusions
// and the skip reasons (a temp folder tree, no model).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { collectFiles, CollectError, DEFAULT_MAX_FILE_BYTES, type Collection, type CollectOptions } from '../src/ask/collect.js';

let root: string;

/** The tree every test reads; `root` is a git repository (a .git folder) so ancestor .gitignore files apply. */
const TREE: Record<string, string | Buffer> = {
  '.git/HEAD': 'ref: refs/heads/main\n',
  '.gitignore': '*.log\nbuild/\n',
  'README.md': '# Project\n',
  'debug.log': 'a log line\n',
  'build/out.js': 'console.log(1);\n',
  'package-lock.json': '{}\n',
  'empty.txt': '',
  'blank.txt': '\uFEFF \n\t\r\n',
  'node_modules/dep/index.js': 'module.exports = 1;\n',
  'src/main.ts': 'export const main = 1;\n',
  'src/util/helpers.ts': 'export const helper = 2;\n',
  'src/util/trace.log': 'ignored by the root .gitignore\n',
  'src/app.min.js': 'var a=1;\n',
  'src/app.js.map': '{}\n',
  'src/notes.md': 'notes\n',
  'config/.gitignore': 'secret.txt\n',
  'config/secret.txt': 'hunter2\n',
  'config/settings.json': '{"a": 1}\n',
  'docs/secret.txt': 'not secret here\n',
  'docs/guide.md': 'A guide.\n',
  'generated/schema.ts': 'export type X = 1;\n',
  'assets/logo.png': Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x00, 0x00, 0x00, 0x0d]),
  'assets/latin1.txt': Buffer.from('caf\xe9 cr\xe8me\n', 'latin1'),
  'assets/big.txt': 'x'.repeat(3000) + '\n',
  // a multi-byte char cut by the 1024-byte sniff must not look binary
  'assets/cut-utf8.txt': 'a'.repeat(1023) + 'é and more text\n',
};

function write(tree: Record<string, string | Buffer>): void {
  for (const [rel, content] of Object.entries(tree)) {
    const abs = path.join(root, rel);
    fs.mkdirSync(path.dirname(abs), { recursive: true });
    fs.writeFileSync(abs, content);
  }
}

function collect(inputs: string[], options: Partial<CollectOptions> = {}): Promise<Collection> {
  return collectFiles(inputs, { cwd: root, maxFileBytes: 2048, ...options });
}

function paths(c: Collection): string[] {
  return c.files.map((f) => f.path);
}

function reasonFor(c: Collection, file: string): string | undefined {
  return c.skipped.find((s) => s.file === file)?.reason;
}

before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'ask-collect-'));
  write(TREE);
});

after(() => fs.rmSync(root, { recursive: true, force: true }));

describe('collectFiles', () => {
  test('a folder: .gitignore at every level, node_modules and .git never, sorted', async () => {
    const c = await collect(['.']);
    assert.deepEqual(paths(c), [
      '.gitignore',
      'README.md',
      'assets/cut-utf8.txt',
      'config/.gitignore',
      'config/settings.json',
      'docs/guide.md',
      'docs/secret.txt', // config/.gitignore's rule does not reach docs/
      'generated/schema.ts',
      'src/main.ts',
      'src/notes.md',
      'src/util/helpers.ts',
    ]);
    const main = c.files.find((f) => f.path === 'src/main.ts')!;
    assert.equal(main.text, 'export const main = 1;\n');
    assert.equal(main.bytes, Buffer.byteLength(main.text));
    assert.equal(main.absPath, path.join(root, 'src/main.ts'));
  });

  test('found files that are refused are listed with the reason; ignored ones are not', async () => {
    const c = await collect([]);
    assert.match(reasonFor(c, 'assets/logo.png')!, /binary/);
    assert.match(reasonFor(c, 'assets/latin1.txt')!, /binary.*UTF-8/);
    assert.match(reasonFor(c, 'assets/big.txt')!, /too large: 2\.9 KiB \(limit 2\.0 KiB\)/);
    assert.match(reasonFor(c, 'package-lock.json')!, /lock file/);
    assert.match(reasonFor(c, 'src/app.min.js')!, /minified/);
    assert.match(reasonFor(c, 'src/app.js.map')!, /source map/);
    assert.equal(reasonFor(c, 'empty.txt'), 'empty');
    assert.equal(reasonFor(c, 'blank.txt'), 'empty (whitespace only)');
    const listed = c.skipped.map((s) => s.file);
    assert.deepEqual(listed, [...listed].sort());
    for (const quiet of ['debug.log', 'build/out.js', 'config/secret.txt', 'src/util/trace.log', 'node_modules/dep/index.js'])
      assert.ok(!listed.includes(quiet), `${quiet} should be left out silently`);
  });

  test('a subfolder input still honours the .gitignore files above it', async () => {
    assert.deepEqual(paths(await collect(['src'])), ['src/main.ts', 'src/notes.md', 'src/util/helpers.ts']);
    assert.deepEqual(paths(await collect(['config'])), ['config/.gitignore', 'config/settings.json']);
  });

  test('paths are relative to cwd, which need not be the input folder', async () => {
    const c = await collectFiles(['util', '../README.md'], { cwd: path.join(root, 'src') });
    assert.deepEqual(paths(c), ['../README.md', 'util/helpers.ts']);
  });

  test('a named file is taken even if .gitignore would drop it', async () => {
    const c = await collect(['debug.log', 'config/secret.txt']);
    assert.deepEqual(paths(c), ['config/secret.txt', 'debug.log']);
  });

  test('a named ignored folder is expanded', async () => {
    assert.deepEqual(paths(await collect(['build'])), ['build/out.js']);
  });

  test('a named folder inside an excluded one is expanded; excludes apply below it', async () => {
    assert.deepEqual(paths(await collect(['node_modules/dep'])), ['node_modules/dep/index.js']);
    assert.deepEqual(paths(await collect(['node_modules'])), ['node_modules/dep/index.js']);
    // Named from the root, node_modules stays out as always.
    assert.ok(!paths(await collect(['.'])).some((p) => p.startsWith('node_modules/')));
  });

  test('a named file still goes through the checks', async () => {
    const c = await collect(['assets/logo.png', 'package-lock.json', 'empty.txt']);
    assert.deepEqual(c.files, []);
    assert.deepEqual(c.skipped.map((s) => s.file), ['assets/logo.png', 'empty.txt', 'package-lock.json']);
  });

  test('a file named twice, or by two inputs, appears once', async () => {
    const c = await collect(['src/main.ts', './src/main.ts', 'src', 'src/**/*.ts']);
    assert.deepEqual(paths(c), ['src/main.ts', 'src/notes.md', 'src/util/helpers.ts']);
  });

  test('glob inputs match relative to cwd and honour .gitignore and exclude', async () => {
    assert.deepEqual(paths(await collect(['src/**/*.ts'])), ['src/main.ts', 'src/util/helpers.ts']);
    assert.deepEqual(paths(await collect(['./src/**/*.ts'])), ['src/main.ts', 'src/util/helpers.ts']);
    assert.deepEqual(paths(await collect(['**/*.ts'])), ['generated/schema.ts', 'src/main.ts', 'src/util/helpers.ts']);
    assert.deepEqual(paths(await collect(['**/*.log'])), []);
    assert.deepEqual(paths(await collect(['*.md'])), ['README.md']);
    assert.deepEqual(paths(await collect(['**/*.ts'], { exclude: ['generated/**'] })), ['src/main.ts', 'src/util/helpers.ts']);
    assert.deepEqual(paths(await collect(['**/index.js'])), [], 'node_modules is never searched');
  });

  test('exclude globs drop files and whole folders while expanding', async () => {
    const c = await collect(['.'], { exclude: ['generated/**', '*.md', 'config'] });
    assert.deepEqual(paths(c), ['.gitignore', 'assets/cut-utf8.txt', 'docs/secret.txt', 'src/main.ts', 'src/util/helpers.ts']);
  });

  test('include globs limit what folder expansion takes', async () => {
    assert.deepEqual(paths(await collect(['.'], { include: ['src/**'] })), ['src/main.ts', 'src/notes.md', 'src/util/helpers.ts']);
    assert.deepEqual(paths(await collect(['.'], { include: ['*.md'] })), ['README.md', 'docs/guide.md', 'src/notes.md']);
    // a glob without '/' names a file or folder at any depth
    assert.deepEqual(paths(await collect(['.'], { include: ['util'] })), ['src/util/helpers.ts']);
    // include does not filter files named explicitly
    assert.deepEqual(paths(await collect(['src', 'config/settings.json'], { include: ['**/*.ts'] })), [
      'config/settings.json',
      'src/main.ts',
      'src/util/helpers.ts',
    ]);
  });

  test('gitignore: false takes ignored files, but never node_modules or .git', async () => {
    const all = paths(await collect(['.'], { gitignore: false }));
    for (const file of ['debug.log', 'build/out.js', 'config/secret.txt', 'src/util/trace.log']) assert.ok(all.includes(file), file);
    assert.ok(!all.some((f) => f.startsWith('node_modules/') || f.startsWith('.git/')));
  });

  test('maxFileBytes defaults to 1 MiB', async () => {
    assert.equal(DEFAULT_MAX_FILE_BYTES, 1024 * 1024);
    const c = await collectFiles(['assets/big.txt'], { cwd: root });
    assert.deepEqual(paths(c), ['assets/big.txt']);
    const tiny = await collect(['README.md'], { maxFileBytes: 5 });
    assert.match(reasonFor(tiny, 'README.md')!, /10 B \(limit 5 B\)/);
  });

  test('a path that does not exist throws CollectError naming it', async () => {
    await assert.rejects(collect(['src', 'no/such/file.ts']), (err: unknown) => {
      assert.ok(err instanceof CollectError);
      assert.match(err.message, /no such file or folder: no\/such\/file\.ts/);
      return true;
    });
    // a glob that matches nothing is not an error
    assert.deepEqual(await collect(['nothing/**/*.xyz']), { files: [], skipped: [] });
  });

  test('a negation in a nested .gitignore takes back a parent rule', async () => {
    write({ 'logs/.gitignore': '!keep.log\n', 'logs/keep.log': 'kept\n', 'logs/drop.log': 'dropped\n' });
    try {
      assert.deepEqual(paths(await collect(['logs'])), ['logs/.gitignore', 'logs/keep.log']);
    } finally {
      fs.rmSync(path.join(root, 'logs'), { recursive: true });
    }
  });

  test('symlinked folders are not followed; symlinked files are', { skip: process.platform === 'win32' }, async () => {
    const loop = path.join(root, 'src/loop');
    const link = path.join(root, 'src/link.ts');
    fs.symlinkSync(root, loop);
    fs.symlinkSync(path.join(root, 'src/main.ts'), link);
    try {
      assert.deepEqual(paths(await collect(['src'])), ['src/link.ts', 'src/main.ts', 'src/notes.md', 'src/util/helpers.ts']);
    } finally {
      fs.rmSync(loop);
      fs.rmSync(link);
    }
  });
});
