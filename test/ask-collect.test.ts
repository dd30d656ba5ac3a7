// Which files `ask` reads: folder and glob expansion, .gitignore, exclusions
// and the skip reasons (a temp folder tree, no model).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { checkInputsExist, collectAcrossFolders, collectFiles, CollectError, DEFAULT_MAX_FILE_BYTES, type Collection, type CollectOptions } from '../src/ask/collect.js';

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

  test('symlinked folders are not followed; symlinked files inside the repository are, each real file once', { skip: process.platform === 'win32' }, async () => {
    const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'ask-collect-outside-'));
    fs.writeFileSync(path.join(outside, 'credentials'), 'aws_secret_access_key = SECRET\n');
    const links: Record<string, string> = {
      'src/loop': root,
      'src/link.ts': path.join(root, 'src/main.ts'), // the same file as src/main.ts
      'src/guide-link.md': path.join(root, 'docs/guide.md'), // another folder of the repository
      'src/setup.md': path.join(outside, 'credentials'),
    };
    for (const [rel, target] of Object.entries(links)) fs.symlinkSync(target, path.join(root, rel));
    try {
      const c = await collect(['src']);
      assert.deepEqual(paths(c), ['src/guide-link.md', 'src/main.ts', 'src/notes.md', 'src/util/helpers.ts']);
      assert.equal(reasonFor(c, 'src/link.ts'), 'the same file as src/main.ts (a symbolic link)');
      assert.match(reasonFor(c, 'src/setup.md')!, /^a symbolic link to a file outside /);
      assert.ok(!c.files.some((f) => f.text.includes('SECRET')));
      // Named, a link is the user's choice; one that includes or globs would not take is not listed at all.
      assert.deepEqual(paths(await collect(['src/setup.md'])), ['src/setup.md']);
      assert.equal(reasonFor(await collect(['src'], { include: ['*.ts'] }), 'src/setup.md'), undefined);
      assert.equal(reasonFor(await collect(['src/*.ts']), 'src/setup.md'), undefined);
    } finally {
      for (const rel of Object.keys(links)) fs.rmSync(path.join(root, rel));
      fs.rmSync(outside, { recursive: true });
    }
  });

  test("this run's --out reports are never inputs; an earlier report is skipped unless named", async () => {
    const markdown = '# Ask report\n\n## Who?\n\n- [a.md#L1](a.md#L1): Dana\n\n## Totals\n\n- jobs: 1\n';
    const json = `${JSON.stringify({ version: 1, created: '2026-12-04T00:00:00.000Z', model: 'm', questions: [] }, null, 2)}\n`;
    write({ 'reports/now.md': markdown, 'reports/old.md': markdown, 'reports/old.json': json, 'reports/notes.md': '# Ask report ideas\n' });
    try {
      const c = await collect(['reports'], { skipFiles: ['reports/now.md'] });
      assert.deepEqual(paths(c), ['reports/notes.md']);
      assert.equal(reasonFor(c, 'reports/now.md'), "this run's own report (--out)");
      assert.match(reasonFor(c, 'reports/old.md')!, /^an ask report/);
      assert.match(reasonFor(c, 'reports/old.json')!, /^an ask report/);
      assert.deepEqual(paths(await collect(['reports/old.md'])), ['reports/old.md']);
    } finally {
      fs.rmSync(path.join(root, 'reports'), { recursive: true });
    }
  });

  test('UTF-16 with a byte order mark is text; bytes that are not UTF-8 past the sniffed head are refused, naming the line', async () => {
    const utf16 = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('$Author = "Dana Okafor"\r\n', 'utf16le')]);
    const latin1 = Buffer.concat([Buffer.from('# licence\n'.repeat(150)), Buffer.from('AUTHOR = "Jos\xe9"\n', 'latin1')]);
    const utf32 = Buffer.from([0xff, 0xfe, 0, 0, 0x74, 0, 0, 0, 0x0a, 0, 0, 0]);
    write({ 'enc/author.ps1': utf16, 'enc/legacy.py': latin1, 'enc/bom.txt': '\uFEFFtext\n', 'enc/wide.txt': utf32 });
    try {
      const c = await collectFiles(['enc'], { cwd: root });
      assert.deepEqual(paths(c), ['enc/author.ps1', 'enc/bom.txt']);
      assert.equal(c.files[0].text, '$Author = "Dana Okafor"\r\n');
      assert.equal(c.files[1].text, 'text\n');
      assert.equal(reasonFor(c, 'enc/legacy.py'), 'not UTF-8 (line 151): save it as UTF-8 to ask about it');
      assert.match(reasonFor(c, 'enc/wide.txt')!, /^binary/, 'UTF-32 is not read as UTF-16');
    } finally {
      fs.rmSync(path.join(root, 'enc'), { recursive: true });
    }
  });

  test('a named path that exists but cannot be reached is left to collection; a file used as a folder does not exist', () => {
    assert.throws(() => checkInputsExist(['README.md/x'], root), /no such file or folder: README\.md\/x/);
    assert.doesNotThrow(() => checkInputsExist(['README.md', 'src', 'no/**/*.ts'], root));
  });
});

describe('collectAcrossFolders (a multi-root workspace)', () => {
  let ws: string;
  before(() => {
    ws = fs.mkdtempSync(path.join(os.tmpdir(), 'mlxb-multiroot-'));
    for (const f of ['A/src/a.ts', 'A/dist/a.js', 'A/secret/keys.ts', 'A/notes.md', 'B/src/b.ts', 'B/dist/b.js', 'B/secret/keys.ts', 'B/notes.md']) {
      fs.mkdirSync(path.join(ws, path.dirname(f)), { recursive: true });
      fs.writeFileSync(path.join(ws, f), `// ${f}\n`);
    }
  });
  after(() => fs.rmSync(ws, { recursive: true, force: true }));

  const folderOf = (abs: string) => [path.join(ws, 'A'), path.join(ws, 'B')].find((f) => abs === f || abs.startsWith(f + path.sep)) ?? ws;
  const options = (include: string[]) => (folder: string): CollectOptions => ({ cwd: folder, include, exclude: ['dist/**', '**/secret'] });

  test("each folder's inputs are filtered by globs relative to that folder; paths are relative to the common root", async () => {
    const found = await collectAcrossFolders(ws, ['A', 'B'], folderOf, options(['*.ts', '*.js']));
    assert.deepEqual(found.files.map((f) => f.path), ['A/src/a.ts', 'B/src/b.ts']);
    const all = await collectAcrossFolders(ws, ['A', 'B/src', 'B/notes.md'], folderOf, options([]));
    assert.deepEqual(all.files.map((f) => f.path), ['A/notes.md', 'A/src/a.ts', 'B/notes.md', 'B/src/b.ts']);
    // Collected from the first folder alone, as before, the second folder's files escaped its filters or vanished.
    const fromA = await collectFiles(['.', '../B'], options(['*.ts', '*.js'])(path.join(ws, 'A')));
    assert.deepEqual(fromA.files.map((f) => f.path), ['src/a.ts']);
  });

  test('nested workspace folders: a file both walks find is counted, read and listed once', async () => {
    const outerOf = (abs: string) => (abs.startsWith(path.join(ws, 'B')) ? path.join(ws, 'B') : ws);
    const counts: number[] = [];
    const found = await collectAcrossFolders(ws, ['.', 'B/notes.md', 'B/dist/b.js'], outerOf, (folder) => ({ cwd: folder, exclude: ['**/secret'] }),
      { beforeRead: (n) => (counts.push(n), true) });
    const paths = found.files.map((f) => f.path);
    assert.deepEqual(counts, [paths.length]);
    assert.equal(new Set(paths).size, paths.length);
    assert.ok(paths.includes('B/notes.md') && paths.includes('B/dist/b.js'));
    assert.equal(new Set(found.skipped.map((s) => s.file)).size, found.skipped.length);
  });

  test('a file named twice through two folders is asked about once', async () => {
    const found = await collectAcrossFolders(ws, ['A/src/a.ts', 'A/src', 'B/src/b.ts'], folderOf, options([]));
    assert.deepEqual(found.files.map((f) => f.path), ['A/src/a.ts', 'B/src/b.ts']);
  });
});

describe('read limits', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlxb-limits-'));
    for (let i = 0; i < 10; i++) fs.writeFileSync(path.join(dir, `f${i}.txt`), `${'x'.repeat(99)}\n`);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('beforeRead hears how many files were found, and no stops the collection before any is read', async () => {
    const heard: number[] = [];
    let opened = 0;
    const declined = await collectFiles(['.'], { cwd: dir }, { beforeRead: (n) => (heard.push(n), false) });
    assert.deepEqual(heard, [10]);
    assert.deepEqual(declined, { files: [], skipped: [], stopped: true });
    const accepted = await collectFiles(['.'], { cwd: dir }, { beforeRead: () => (opened++, true) });
    assert.equal(opened, 1);
    assert.equal(accepted.files.length, 10);
    assert.equal(accepted.stopped, undefined);
  });

  test('files past the total byte budget are skipped, naming the budget; a fired signal stops the collection', async () => {
    const found = await collectFiles(['.'], { cwd: dir }, { maxTotalBytes: 450 });
    assert.equal(found.files.length, 4);
    assert.equal(found.skipped.length, 6);
    for (const s of found.skipped) assert.match(s.reason, /past the 450 B one run reads in all: ask about fewer files/);
    const abort = new AbortController();
    abort.abort();
    assert.equal((await collectFiles(['.'], { cwd: dir }, { signal: abort.signal })).stopped, true);
  });

  test('files that are not kept (binary) take nothing from the budget', async () => {
    const mixed = fs.mkdtempSync(path.join(os.tmpdir(), 'mlxb-budget-'));
    try {
      for (let i = 0; i < 5; i++) fs.writeFileSync(path.join(mixed, `a${i}.bin`), Buffer.alloc(1000, 0));
      fs.writeFileSync(path.join(mixed, 'z.txt'), 'text\n');
      const found = await collectFiles(['.'], { cwd: mixed }, { maxTotalBytes: 1000 });
      assert.deepEqual(found.files.map((f) => f.path), ['z.txt']);
      assert.equal(found.skipped.filter((s) => /binary/.test(s.reason)).length, 5);
    } finally {
      fs.rmSync(mixed, { recursive: true, force: true });
    }
  });

  test('across folders, one budget and one beforeRead cover every folder', async () => {
    const heard: number[] = [];
    const found = await collectAcrossFolders(path.dirname(dir), [path.basename(dir)], () => dir, (folder) => ({ cwd: folder }),
      { beforeRead: (n) => (heard.push(n), true), maxTotalBytes: 250 });
    assert.deepEqual(heard, [10]);
    assert.equal(found.files.length, 2);
  });
});
