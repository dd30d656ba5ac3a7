// Which files a question is asked about: files, folders and globs expanded
// the way a developer expects (honouring .gitignore, never node_modules or
// .git), then filtered to readable, reasonably sized UTF-8 text that is
// worth a model's time.
import fs from 'node:fs';
import path from 'node:path';
import ignore, { type Ignore } from 'ignore';
import picomatch from 'picomatch';
import { formatBytes } from '../byte-size.js';
import { mapLimited } from './pool.js';
import type { SkippedFile } from './report.js';

export interface CollectOptions {
  /** Report paths are relative to this folder (POSIX separators). */
  cwd: string;
  /**
   * Globs (relative to cwd, picomatch syntax) a file found by expanding a
   * folder must match; default: every file. A glob without '/' matches the
   * file name at any depth (`*.ts`), as in .gitignore.
   */
  include?: string[];
  /** Globs excluded everywhere (folder expansion and glob inputs), matched like `include`. Always added: any .git folder and node_modules folder. */
  exclude?: string[];
  /** Larger files are skipped; default 1 MiB. */
  maxFileBytes?: number;
  /** Honour .gitignore files while expanding folders (default true). */
  gitignore?: boolean;
  /** Files never asked about, even when named (this run's own reports). */
  skipFiles?: string[];
}

/** How much one collection may read, and who may stop it. */
export interface ReadLimits {
  /** Files past this many bytes in all are skipped: a run holds its texts in memory. Default 256 MiB. */
  maxTotalBytes?: number;
  /** Told how many files were found, before any is read: false stops there (the collection is `stopped`). */
  beforeRead?: (found: number) => boolean | Promise<boolean>;
  /** Stops the reading; the collection is then `stopped`. */
  signal?: AbortSignal;
}

export interface CollectedFile {
  path: string;
  absPath: string;
  text: string;
  bytes: number;
}

export type { SkippedFile };

export interface Collection {
  files: CollectedFile[];
  skipped: SkippedFile[];
  /** beforeRead said no, or the signal fired: nothing is to be asked. */
  stopped?: boolean;
}

/** A bad input (a path that does not exist): the caller reports it as a usage error. */
export class CollectError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CollectError';
  }
}

export const DEFAULT_MAX_FILE_BYTES = 1024 * 1024;
export const DEFAULT_MAX_TOTAL_BYTES = 256 * 1024 * 1024;

/** Never worth walking into: huge, and not the user's text. */
const ALWAYS_EXCLUDED_NAMES = new Set(['.git', 'node_modules']);
const ALWAYS_EXCLUDED_GLOBS = ['**/.git/**', '**/node_modules/**'];

/** Generated files a question about the code would only waste tokens on. */
const LOCK_FILES = new Set([
  'package-lock.json',
  'npm-shrinkwrap.json',
  'yarn.lock',
  'pnpm-lock.yaml',
  'bun.lockb',
  'Cargo.lock',
  'poetry.lock',
  'Pipfile.lock',
  'Gemfile.lock',
  'composer.lock',
  'go.sum',
  'uv.lock',
]);

/** Bytes sniffed for binary content: enough for any real text file to show its nature. */
const SNIFF_BYTES = 1024;
/** Files checked and read at once, well under any open-file limit. */
const READ_CONCURRENCY = 16;

/** One folder's .gitignore rules; paths are tested relative to `dir`. */
interface IgnoreLevel {
  dir: string;
  rules: Ignore;
}

/** State shared by one collectFiles call. */
interface Context {
  cwd: string;
  gitignore: boolean;
  isIncluded: (rel: string) => boolean;
  isExcluded: (rel: string) => boolean;
  /** Each folder's .gitignore is read once per call. */
  gitignoreCache: Map<string, Promise<Ignore | undefined>>;
  /** absPath → path relative to cwd; a Map so a file found twice is kept once. */
  found: Map<string, string>;
  /** Files the user named: taken whatever they hold or point to. */
  named: Set<string>;
  skipped: SkippedFile[];
}

export async function collectFiles(inputs: string[], options: CollectOptions, limits: ReadLimits = {}): Promise<Collection> {
  const [read] = await readFound([await findFiles(inputs, options)], limits);
  return read;
}

/**
 * Inputs relative to `root`, each collected from the folder it lies in with
 * that folder's options (globs are relative to the folder they filter: a
 * multi-root workspace's folders each have their own), paths relative to root.
 */
export async function collectAcrossFolders(
  root: string,
  inputs: string[],
  folderOf: (absPath: string) => string,
  optionsFor: (folder: string) => CollectOptions,
  limits: ReadLimits = {},
): Promise<Collection> {
  const byFolder = new Map<string, string[]>();
  for (const input of inputs.length > 0 ? inputs : ['.']) {
    const abs = path.resolve(root, input);
    const folder = folderOf(abs);
    byFolder.set(folder, [...(byFolder.get(folder) ?? []), path.relative(folder, abs) || '.']);
  }
  const found: Found[] = [];
  const seen = new Set<string>();
  for (const [folder, folderInputs] of byFolder) {
    const walk = await findFiles(folderInputs, { ...optionsFor(folder), cwd: folder });
    // Nested workspace folders: a file two walks found is read once.
    walk.candidates = walk.candidates.filter((c) => !seen.has(c.absPath) && seen.add(c.absPath));
    found.push(walk);
  }
  // POSIX separators as everywhere else; a skipped folder keeps its trailing '/'.
  const fromRoot = (folder: string, p: string) => relativePath(root, path.resolve(folder, p)) + (p.endsWith('/') ? '/' : '');
  const read = await readFound(found, limits);
  const files = read.flatMap((r, i) => r.files.map((f) => ({ ...f, path: fromRoot(found[i].ctx.cwd, f.path) })));
  // Two walks may skip the same path for the same reason.
  const skipped = new Map(read.flatMap((r, i) => r.skipped.map((s): [string, SkippedFile] => {
    const file = fromRoot(found[i].ctx.cwd, s.file);
    return [`${file}\0${s.reason}`, { ...s, file }];
  })));
  const stopped = read.some((r) => r.stopped);
  return { files: files.sort(byPath), skipped: [...skipped.values()].sort((a, b) => compare(a.file, b.file)), ...(stopped ? { stopped } : {}) };
}

/** One folder's walk: the files to read, and what was skipped on the way. */
interface Found {
  ctx: Context;
  candidates: Array<{ absPath: string; path: string }>;
  maxBytes: number;
}

async function findFiles(inputs: string[], options: CollectOptions): Promise<Found> {
  const cwd = path.resolve(options.cwd);
  const ctx: Context = {
    cwd,
    gitignore: options.gitignore ?? true,
    isIncluded: options.include?.length ? globTest(options.include) : () => true,
    isExcluded: globTest([...ALWAYS_EXCLUDED_GLOBS, ...(options.exclude ?? [])]),
    gitignoreCache: new Map(),
    found: new Map(),
    named: new Set(),
    skipped: [],
  };
  for (const input of inputs.length > 0 ? inputs : ['.']) await addInput(ctx, input);
  const candidates = await oncePerRealFile(ctx, new Set((options.skipFiles ?? []).map((f) => path.resolve(cwd, f))));
  return { ctx, candidates, maxBytes: options.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES };
}

/** Reads every walk's files under one byte budget; a collection per walk. */
async function readFound(found: Found[], limits: ReadLimits): Promise<Collection[]> {
  const count = found.reduce((n, f) => n + f.candidates.length, 0);
  const stop = (): Collection[] => found.map(() => ({ files: [], skipped: [], stopped: true }));
  if (limits.beforeRead && !(await limits.beforeRead(count))) return stop();
  const limit = limits.maxTotalBytes ?? DEFAULT_MAX_TOTAL_BYTES;
  const budget = { left: limit, limit };
  const out: Collection[] = [];
  for (const { ctx, candidates, maxBytes } of found) {
    const results = await mapLimited(candidates, READ_CONCURRENCY, async (c): Promise<CollectedFile | SkippedFile | undefined> =>
      limits.signal?.aborted ? undefined : readCandidate(c.absPath, c.path, maxBytes, ctx.named.has(c.absPath), budget));
    if (limits.signal?.aborted) return stop();
    const files: CollectedFile[] = [];
    for (const r of results) {
      if (!r) continue;
      if ('reason' in r) ctx.skipped.push(r);
      else files.push(r);
    }
    out.push({ files: files.sort(byPath), skipped: ctx.skipped.sort((a, b) => compare(a.file, b.file)) });
  }
  return out;
}

/**
 * The found files, each real file once (a link and its target, or two links
 * to one file, are one file: the path that is not a link is kept), less this
 * run's own reports.
 */
async function oncePerRealFile(ctx: Context, skipFiles: Set<string>): Promise<Array<{ absPath: string; path: string }>> {
  const found = await Promise.all([...ctx.found].map(async ([absPath, rel]) => ({
    absPath, path: rel, real: await fs.promises.realpath(absPath).catch(() => absPath),
    link: (await fs.promises.lstat(absPath).catch(() => undefined))?.isSymbolicLink() ?? false,
  })));
  // Links after real files, then by path: the first of each real file is the one kept.
  found.sort((a, b) => Number(a.link) - Number(b.link) || compare(a.path, b.path));
  const kept = new Map<string, string>();
  const out: Array<{ absPath: string; path: string }> = [];
  for (const f of found) {
    if (skipFiles.has(f.absPath) || skipFiles.has(f.real)) {
      ctx.skipped.push({ file: f.path, reason: "this run's own report (--out)" });
    } else if (kept.has(f.real)) {
      ctx.skipped.push({ file: f.path, reason: `the same file as ${kept.get(f.real)} (a symbolic link)` });
    } else {
      kept.set(f.real, f.path);
      out.push({ absPath: f.absPath, path: f.path });
    }
  }
  return out;
}

// ---------------------------------------------------------------- inputs

async function addInput(ctx: Context, input: string): Promise<void> {
  const abs = path.resolve(ctx.cwd, input);
  let stat: fs.Stats;
  try {
    stat = await fs.promises.stat(abs);
  } catch (err) {
    const code = errorCode(err);
    if (code !== 'ENOENT' && code !== 'ENOTDIR') {
      ctx.skipped.push({ file: relativePath(ctx.cwd, abs), reason: `unreadable: ${code}` });
      return;
    }
    if (isGlob(input)) return addGlob(ctx, input);
    throw new CollectError(`no such file or folder: ${input}`);
  }
  // A file named explicitly is taken even if ignored or excluded: the user asked for it.
  if (stat.isDirectory()) {
    await addFolder(ctx, abs);
  } else {
    ctx.found.set(abs, relativePath(ctx.cwd, abs));
    ctx.named.add(abs);
  }
}

/**
 * Fails fast, before a model loads, on a named path that does not exist (globs
 * may match nothing). One that exists but cannot be reached is left to
 * collection, which lists it as skipped with the reason.
 */
export function checkInputsExist(inputs: string[], cwd: string): void {
  for (const input of inputs) {
    if (isGlob(input)) continue;
    let exists = true;
    try {
      exists = fs.statSync(path.resolve(cwd, input), { throwIfNoEntry: false }) !== undefined;
    } catch (err) {
      exists = errorCode(err) !== 'ENOTDIR';
    }
    if (!exists) throw new CollectError(`no such file or folder: ${input}`);
  }
}

function isGlob(input: string): boolean {
  return /[*?[{]/.test(input);
}

async function addFolder(ctx: Context, dir: string): Promise<void> {
  const levels = await ancestorLevels(ctx, dir);
  // A folder named explicitly inside an excluded one (node_modules/pkg): the
  // user asked for it, so excludes apply only below it, as if it were the root.
  const namedExcluded = ctx.isExcluded(path.posix.join(relativePath(ctx.cwd, dir), 'x'));
  await walk(ctx, dir, levels, (abs, rel, refused) => {
    if (ctx.isIncluded(rel)) take(ctx, abs, rel, refused);
  }, { excludeFrom: namedExcluded ? dir : ctx.cwd, top: await linkBoundary(dir) });
}

/** Glob inputs: walk only from the glob's fixed prefix (`src` of `src/**\/*.ts`), testing paths relative to cwd. */
async function addGlob(ctx: Context, glob: string): Promise<void> {
  const pattern = toPosix(glob);
  const matches = picomatch(pattern, { dot: false });
  const absolute = path.isAbsolute(glob);
  const base = path.resolve(ctx.cwd, picomatch.scan(pattern).base);
  if (!(await isFolder(base))) return;
  const levels = await ancestorLevels(ctx, base);
  await walk(ctx, base, levels, (abs, rel, refused) => {
    if (matches(absolute ? toPosix(abs) : rel)) take(ctx, abs, rel, refused);
  }, { excludeFrom: ctx.cwd, top: await linkBoundary(base) });
}

/** A file a folder or glob matched: kept, or listed as skipped when the walk refused it (a link out of the repository). */
function take(ctx: Context, abs: string, rel: string, refused: string | undefined): void {
  if (refused) ctx.skipped.push({ file: rel, reason: refused });
  else ctx.found.set(abs, rel);
}

/** Where links found under `dir` may point: its git repository, else the folder itself. */
async function linkBoundary(dir: string): Promise<string> {
  const real = await fs.promises.realpath(dir).catch(() => dir);
  return findGitRoot(real) ?? real;
}

// ---------------------------------------------------------------- walking

interface WalkFrom {
  /** Exclude globs are tested relative to this folder. */
  excludeFrom: string;
  /** Real path of the walked folder's repository (else of the folder): links out of it are not followed. */
  top: string;
}

/**
 * Calls `onFile` for every file under `dir` not ignored or excluded, with its
 * path relative to cwd. Symlinked folders are not followed (they can form
 * cycles); symlinked files are when their target is inside the repository (or
 * the folder, outside one): a cloned repository's link to ~/.aws/credentials
 * is never read.
 */
async function walk(ctx: Context, dir: string, levels: IgnoreLevel[], onFile: (abs: string, rel: string, refused?: string) => void,
  from: WalkFrom): Promise<void> {
  const { excludeFrom } = from;
  const here = await withGitignoreOf(ctx, dir, levels);
  let entries: fs.Dirent[];
  try {
    entries = await fs.promises.readdir(dir, { withFileTypes: true });
  } catch (err) {
    ctx.skipped.push({ file: relativePath(ctx.cwd, dir) + '/', reason: `unreadable folder: ${errorCode(err)}` });
    return;
  }
  for (const entry of entries) {
    if (ALWAYS_EXCLUDED_NAMES.has(entry.name)) continue;
    const abs = path.join(dir, entry.name);
    const kind = await entryKind(entry, abs, from.top);
    if (kind === 'other') continue;
    const rel = relativePath(ctx.cwd, abs);
    if (ctx.isExcluded(excludeFrom === ctx.cwd ? rel : relativePath(excludeFrom, abs)) || isIgnored(here, abs, kind === 'folder')) continue;
    if (kind === 'folder') await walk(ctx, abs, here, onFile, from);
    else onFile(abs, rel, kind === 'outside' ? `a symbolic link to a file outside ${path.basename(from.top)}/` : undefined);
  }
}

async function entryKind(entry: fs.Dirent, abs: string, top: string): Promise<'file' | 'folder' | 'outside' | 'other'> {
  if (entry.isDirectory()) return 'folder';
  if (entry.isFile()) return 'file';
  if (!entry.isSymbolicLink()) return 'other';
  const target = await fs.promises.stat(abs).catch(() => undefined);
  if (!target?.isFile()) return 'other';
  const real = await fs.promises.realpath(abs).catch(() => undefined);
  return real !== undefined && isInside(real, top) ? 'file' : 'outside';
}

async function isFolder(abs: string): Promise<boolean> {
  const stat = await fs.promises.stat(abs).catch(() => undefined);
  return stat?.isDirectory() ?? false;
}

// ---------------------------------------------------------------- .gitignore

/** `levels` plus the rules of `dir`'s own .gitignore, if it has one. */
async function withGitignoreOf(ctx: Context, dir: string, levels: IgnoreLevel[]): Promise<IgnoreLevel[]> {
  if (!ctx.gitignore) return levels;
  const rules = await readGitignore(ctx, dir);
  return rules ? [...levels, { dir, rules }] : levels;
}

function readGitignore(ctx: Context, dir: string): Promise<Ignore | undefined> {
  let rules = ctx.gitignoreCache.get(dir);
  if (!rules) {
    rules = fs.promises.readFile(path.join(dir, '.gitignore'), 'utf8').then(
      (text) => ignore().add(text),
      () => undefined,
    );
    ctx.gitignoreCache.set(dir, rules);
  }
  return rules;
}

/**
 * The .gitignore rules of the folders above `dir`, from its git root (or
 * from cwd, outside a repository) down, so `src/a.log` stays ignored by a
 * root `*.log` when the input is `src`. A folder the user names that those
 * rules ignore (`build`) is expanded without them: they asked for it.
 */
async function ancestorLevels(ctx: Context, dir: string): Promise<IgnoreLevel[]> {
  if (!ctx.gitignore) return [];
  const top = findGitRoot(dir) ?? (isInside(dir, ctx.cwd) ? ctx.cwd : dir);
  const above: string[] = [];
  for (let d = dir; d !== top && isInside(d, top); d = path.dirname(d)) above.unshift(path.dirname(d));
  let levels: IgnoreLevel[] = [];
  for (const d of above) levels = await withGitignoreOf(ctx, d, levels);
  return isIgnored(levels, dir, true) ? [] : levels;
}

function findGitRoot(dir: string): string | undefined {
  for (let d = dir; ; d = path.dirname(d)) {
    if (fs.existsSync(path.join(d, '.git'))) return d;
    if (path.dirname(d) === d) return undefined;
  }
}

/** As git decides: the deepest .gitignore with a rule for the path wins, so a child's `!x` undoes a parent's `x`. */
function isIgnored(levels: IgnoreLevel[], abs: string, isDir: boolean): boolean {
  for (let i = levels.length - 1; i >= 0; i--) {
    const rel = toPosix(path.relative(levels[i].dir, abs)) + (isDir ? '/' : '');
    const result = levels[i].rules.test(rel);
    if (result.ignored) return true;
    if (result.unignored) return false;
  }
  return false;
}

// ---------------------------------------------------------------- checks

/** The file's text, or why it is skipped. Cheap checks first; the whole file is read last. */
async function readCandidate(absPath: string, rel: string, maxBytes: number, named: boolean,
  budget: { left: number; limit: number }): Promise<CollectedFile | SkippedFile> {
  const generated = generatedReason(path.basename(absPath));
  if (generated) return { file: rel, reason: generated };
  let reserved = 0;
  // Bytes are reserved before the whole file is read, and given back if it is not kept.
  const skip = (reason: string): SkippedFile => ((budget.left += reserved), { file: rel, reason });
  try {
    const { size } = await fs.promises.stat(absPath);
    if (size > maxBytes) return skip(`too large: ${formatBytes(size)} (limit ${formatBytes(maxBytes)})`);
    if (size === 0) return skip('empty');
    const head = await readHead(absPath);
    const utf16 = utf16Encoding(head);
    const binary = utf16 ? undefined : binaryReason(head);
    if (binary) return skip(binary);
    if (size > budget.left) return skip(`past the ${formatBytes(budget.limit)} one run reads in all: ask about fewer files`);
    budget.left -= reserved = size;
    const decoded = decodeText(await fs.promises.readFile(absPath), utf16);
    if ('reason' in decoded) return skip(decoded.reason);
    const text = decoded.text;
    if (text.trim() === '') return skip('empty (whitespace only)');
    // An earlier run's report holds its answers and quotes: asked about, it would "verify" them.
    if (!named && isAskReport(text)) return skip('an ask report (mlx-batch output; name it to ask about it)');
    return { path: rel, absPath, text, bytes: size };
  } catch (err) {
    return skip(`unreadable: ${errorCode(err)}`);
  }
}

/** UTF-16 by its byte order mark: text, though every other byte is NUL. */
function utf16Encoding(head: Uint8Array): 'utf-16le' | 'utf-16be' | undefined {
  if (head[0] === 0xff && head[1] === 0xfe && head[2] === 0 && head[3] === 0) return undefined; // UTF-32LE: binary here
  if (head[0] === 0xff && head[1] === 0xfe) return 'utf-16le';
  if (head[0] === 0xfe && head[1] === 0xff) return 'utf-16be';
  return undefined;
}

/** The whole file as text (a byte order mark dropped), or why not: the head's checks miss what comes later. */
function decodeText(bytes: Uint8Array, utf16: 'utf-16le' | 'utf-16be' | undefined): { text: string } | { reason: string } {
  if (utf16) {
    try {
      return { text: new TextDecoder(utf16, { fatal: true }).decode(bytes) };
    } catch {
      return { reason: `binary (not ${utf16.toUpperCase()})` };
    }
  }
  if (bytes.includes(0)) return { reason: 'binary (NUL byte)' };
  try {
    return { text: new TextDecoder('utf-8', { fatal: true }).decode(bytes) };
  } catch {
    // Latin-1 text with a plain ASCII head: replacement characters would reach the model and its quotes.
    const loose = new TextDecoder('utf-8').decode(bytes);
    const line = loose.slice(0, loose.indexOf('\uFFFD')).split('\n').length;
    return { reason: `not UTF-8 (line ${line}): save it as UTF-8 to ask about it` };
  }
}

const ASK_REPORT_MARKDOWN = /^# Ask report\n[\s\S]*\n## Totals\n/;
const ASK_REPORT_JSON = /^\{\s*"version": 1,\s*"created": "[^"]*",\s*"model": /;

function isAskReport(text: string): boolean {
  return ASK_REPORT_MARKDOWN.test(text) || ASK_REPORT_JSON.test(text);
}

function generatedReason(name: string): string | undefined {
  if (LOCK_FILES.has(name)) return 'lock file (generated)';
  if (/\.min\.(js|css)$/.test(name)) return 'minified file (generated)';
  if (name.endsWith('.map')) return 'source map (generated)';
  return undefined;
}

async function readHead(absPath: string): Promise<Uint8Array> {
  const handle = await fs.promises.open(absPath, 'r');
  try {
    const buffer = Buffer.alloc(SNIFF_BYTES);
    const { bytesRead } = await handle.read(buffer, 0, SNIFF_BYTES, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** Binary if the head has a NUL byte or is not UTF-8. `stream: true` lets a multi-byte char cut off at the end of the head pass. */
function binaryReason(head: Uint8Array): string | undefined {
  if (head.includes(0)) return 'binary (NUL byte)';
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(head, { stream: true });
    return undefined;
  } catch {
    return 'binary (not UTF-8)';
  }
}

// ---------------------------------------------------------------- helpers

/**
 * A test for any of `globs`, as in .gitignore: a glob without '/' matches a
 * name at any depth (`*.md`), and a glob that matches a folder also matches
 * what is inside it (`config`). `dot` so `**\/*.log` also covers `.cache/x.log`.
 * (picomatch's own `basename` option also applies to globs with a '/'.)
 */
function globTest(globs: string[]): (rel: string) => boolean {
  const anyDepth = globs.map(toPosix).map((g) => (g.includes('/') ? g : `**/${g}`));
  return picomatch([...anyDepth, ...anyDepth.map((g) => `${g}/**`)], { dot: true });
}

function relativePath(cwd: string, abs: string): string {
  return toPosix(path.relative(cwd, abs)) || '.';
}

function toPosix(p: string): string {
  return p.split(path.sep).join('/');
}

function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (rel !== '..' && !rel.startsWith('..' + path.sep) && !path.isAbsolute(rel));
}

function errorCode(err: unknown): string {
  return (err as NodeJS.ErrnoException)?.code ?? String(err);
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function byPath(a: CollectedFile, b: CollectedFile): number {
  return compare(a.path, b.path);
}

