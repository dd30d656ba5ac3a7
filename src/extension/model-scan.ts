// Finds models a user already has: GGUF files and MLX model folders (config.json
// beside *.safetensors) in the Hugging Face cache and in folders from the
// `mlxBatch.modelFolders` setting. No VS Code here, so it is tested on a fake
// cache layout.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ggufString, readGgufFile } from '../engine/gguf-metadata.js';

export interface FoundModel {
  path: string;
  /** What a picker shows: the repo id for HF cache entries, else the file or folder name. */
  name: string;
  format: 'gguf' | 'mlx';
  architecture: string;
  bytes: number;
}

/** The HF hub cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub. */
export function huggingFaceHubCache(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HF_HOME) return path.join(env.HF_HOME, 'hub');
  return path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'huggingface', 'hub');
}

const MAX_DEPTH = 6;
/** Hugging Face cache entries that hold datasets and Spaces, not models: often huge, never worth walking. */
const NOT_MODELS = /^(datasets|spaces)--/;

export async function scanModels(roots: string[]): Promise<FoundModel[]> {
  const found = new Map<string, FoundModel>();
  for (const given of roots) {
    // "~/models" in mlxBatch.modelFolders, as in mlxBatch.modelPath.
    const root = given === '~' || given.startsWith('~/') ? path.join(os.homedir(), given.slice(1)) : given;
    for (const candidate of walk(root, 0)) {
      const real = safeRealpath(candidate.path);
      if (!real || found.has(real)) continue;
      const model = await describe(candidate.path, candidate.format, root);
      if (model) found.set(real, model);
    }
  }
  return [...found.values()].sort((a, b) => a.name.localeCompare(b.name));
}

function* walk(dir: string, depth: number): Generator<{ path: string; format: 'gguf' | 'mlx' }> {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  const names = new Set(entries.map((e) => e.name));
  if (names.has('config.json') && entries.some((e) => e.name.endsWith('.safetensors'))) {
    yield { path: dir, format: 'mlx' };
    return;
  }
  for (const e of entries) {
    const full = path.join(dir, e.name);
    // The HF cache links snapshot files into blobs/: follow links to files, not to folders.
    if (e.name.toLowerCase().endsWith('.gguf') && (e.isFile() || e.isSymbolicLink())) yield { path: full, format: 'gguf' };
    else if (e.isDirectory() && depth < MAX_DEPTH && e.name !== 'blobs' && !e.name.startsWith('.') && !NOT_MODELS.test(e.name) &&
      e.name !== 'node_modules') yield* walk(full, depth + 1);
  }
}

function safeRealpath(p: string): string | undefined {
  try {
    return fs.realpathSync(p);
  } catch {
    return undefined;
  }
}

/** `models--org--name/snapshots/<rev>/...` -> `org/name`. */
function hubRepoId(p: string, root: string): string | undefined {
  const rel = path.relative(root, p).split(path.sep);
  const repo = rel.find((part) => part.startsWith('models--'));
  return repo ? repo.slice('models--'.length).split('--').join('/') : undefined;
}

async function describe(p: string, format: 'gguf' | 'mlx', root: string): Promise<FoundModel | undefined> {
  const repo = hubRepoId(p, root);
  if (format === 'gguf') {
    try {
      const file = await readGgufFile(p);
      const name = repo ? `${repo}/${path.basename(p)}` : path.basename(p);
      return { path: p, name, format, architecture: ggufString(file, 'general.architecture') ?? 'unknown', bytes: file.fileSize };
    } catch {
      return undefined; // not a readable GGUF: not offered
    }
  }
  let architecture = 'unknown';
  try {
    const config = JSON.parse(fs.readFileSync(path.join(p, 'config.json'), 'utf8')) as { model_type?: unknown };
    if (typeof config.model_type === 'string') architecture = config.model_type;
  } catch {
    return undefined;
  }
  const bytes = fs.readdirSync(p).filter((f) => f.endsWith('.safetensors'))
    .reduce((n, f) => n + (safeRealpath(path.join(p, f)) ? fs.statSync(path.join(p, f)).size : 0), 0);
  return { path: p, name: repo ?? path.basename(p), format, architecture, bytes };
}
