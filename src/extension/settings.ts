// The extension's settings (contributes.configuration in package.json),
// read and checked in one place. Pure: it takes a reader over VS Code's
// configuration, so tests run without VS Code. An invalid value is replaced
// by its default and reported with the setting's name; in an untrusted
// workspace, workspace values that point at files or servers are ignored.
import { parseByteSize } from '../byte-size.js';

export const SECTION = 'mlxBatch';

export interface AssistantSettings {
  /** '' = the default model. */
  modelPath: string;
  modelFolders: string[];
  backend: 'builtin' | 'openai';
  serverUrl: string;
  serverModel: string;
  serverConcurrency: number;
  serverContextLength: number;
  maxParallelChannels: number;
  maxTokens: number;
  temperature: number;
  /** Bytes; undefined = the engine's default (a quarter of memory). */
  kvBudgetBytes: number | undefined;
  include: string[];
  exclude: string[];
  maxFileBytes: number;
  chunkTokens: number;
  synthesize: boolean;
}

/** What `WorkspaceConfiguration.inspect(key)` returns, reduced to what we read. */
export interface InspectedValue {
  globalValue?: unknown;
  workspaceValue?: unknown;
  workspaceFolderValue?: unknown;
}

export type SettingsReader = (key: string) => InspectedValue | undefined;

export interface ResolvedSettings {
  settings: AssistantSettings;
  /** One line per invalid or ignored value, naming the setting. */
  problems: string[];
}

/** A checked value, or why it is invalid. */
type Checked<T> = { ok: T } | { error: string };
type Check<T> = (value: unknown) => Checked<T>;

const ok = <T>(v: T): Checked<T> => ({ ok: v });
const bad = (error: string) => ({ error });
const integer = (min: number, max: number): Check<number> => (v) =>
  Number.isInteger(v) && (v as number) >= min && (v as number) <= max ? ok(v as number) : bad(`must be a whole number from ${min} to ${max}`);
const number = (min: number, max: number): Check<number> => (v) =>
  typeof v === 'number' && Number.isFinite(v) && v >= min && v <= max ? ok(v) : bad(`must be a number from ${min} to ${max}`);
const text: Check<string> = (v) => (typeof v === 'string' ? ok(v.trim()) : bad('must be a string'));
const bool: Check<boolean> = (v) => (typeof v === 'boolean' ? ok(v) : bad('must be true or false'));
const globs: Check<string[]> = (v) =>
  Array.isArray(v) && v.every((g) => typeof g === 'string' && g.trim() !== '') ? ok((v as string[]).map((g) => g.trim())) : bad('must be a list of non-empty strings');
const oneOf = <T extends string>(...values: T[]): Check<T> => (v) =>
  values.includes(v as T) ? ok(v as T) : bad(`must be one of ${values.map((x) => `"${x}"`).join(', ')}`);
const httpUrl: Check<string> = (v) => {
  if (typeof v !== 'string') return bad('must be a string');
  if (v.trim() === '') return ok('');
  try {
    const u = new URL(v.trim());
    return u.protocol === 'http:' || u.protocol === 'https:' ? ok(v.trim()) : bad('must be an http:// or https:// URL');
  } catch {
    return bad('must be a URL such as http://127.0.0.1:8080/v1');
  }
};
/** '' = the default (undefined). */
const byteSize = (min: number): Check<number | undefined> => (v) => {
  if (typeof v !== 'string') return bad('must be a size such as "2GiB" or "512MiB"');
  if (v.trim() === '') return ok(undefined);
  try {
    const n = parseByteSize(v);
    return n >= min ? ok(n) : bad(`must be at least ${min} bytes`);
  } catch (e) {
    return bad((e as Error).message);
  }
};
const requiredByteSize = (min: number): Check<number> => (v) => {
  const c = byteSize(min)(v);
  return 'ok' in c && c.ok === undefined ? bad('must be a size such as "1MiB"') : (c as Checked<number>);
};

interface SettingSpec<K extends keyof AssistantSettings> {
  key: string;
  field: K;
  fallback: AssistantSettings[K];
  check: Check<AssistantSettings[K]>;
  /** Points at files or servers: only user (global) values count in an untrusted workspace. */
  trustSensitive?: boolean;
}

const spec = <K extends keyof AssistantSettings>(s: SettingSpec<K>) => s;

/** Keys, defaults and checks; package.json's contributes.configuration mirrors these (a test keeps them in step). */
export const SETTINGS = [
  spec({ key: 'modelPath', field: 'modelPath', fallback: '', check: text, trustSensitive: true }),
  spec({ key: 'modelFolders', field: 'modelFolders', fallback: [], check: globs, trustSensitive: true }),
  spec({ key: 'backend', field: 'backend', fallback: 'builtin', check: oneOf('builtin', 'openai'), trustSensitive: true }),
  spec({ key: 'server.url', field: 'serverUrl', fallback: '', check: httpUrl, trustSensitive: true }),
  spec({ key: 'server.model', field: 'serverModel', fallback: '', check: text }),
  spec({ key: 'server.concurrency', field: 'serverConcurrency', fallback: 4, check: integer(1, 256) }),
  spec({ key: 'server.contextLength', field: 'serverContextLength', fallback: 8192, check: integer(256, 1_048_576) }),
  spec({ key: 'maxParallelChannels', field: 'maxParallelChannels', fallback: 32, check: integer(1, 256) }),
  spec({ key: 'maxTokens', field: 'maxTokens', fallback: 256, check: integer(16, 8192) }),
  spec({ key: 'temperature', field: 'temperature', fallback: 0, check: number(0, 2) }),
  spec({ key: 'kvBudget', field: 'kvBudgetBytes', fallback: undefined, check: byteSize(64 * 2 ** 20) }),
  spec({ key: 'include', field: 'include', fallback: [], check: globs }),
  spec({ key: 'exclude', field: 'exclude', fallback: [], check: globs }),
  spec({ key: 'maxFileSize', field: 'maxFileBytes', fallback: 2 ** 20, check: requiredByteSize(1) }),
  spec({ key: 'chunkTokens', field: 'chunkTokens', fallback: 3072, check: integer(64, 131_072) }),
  spec({ key: 'synthesize', field: 'synthesize', fallback: false, check: bool }),
] as const;

export function resolveSettings(read: SettingsReader, trusted: boolean): ResolvedSettings {
  const settings = {} as Record<string, unknown>;
  const problems: string[] = [];
  for (const s of SETTINGS) {
    const inspected = read(s.key) ?? {};
    const workspace = inspected.workspaceFolderValue ?? inspected.workspaceValue;
    let value: unknown = workspace ?? inspected.globalValue;
    if (!trusted && s.trustSensitive && workspace !== undefined) {
      problems.push(`${SECTION}.${s.key}: the workspace's value is ignored because the workspace is not trusted`);
      value = inspected.globalValue;
    }
    if (value === undefined) {
      settings[s.field] = s.fallback;
      continue;
    }
    const checked = (s.check as Check<unknown>)(value);
    if ('error' in checked) {
      problems.push(`${SECTION}.${s.key} ${checked.error} (got ${JSON.stringify(value)}); using ${JSON.stringify(s.fallback) ?? 'the default'}`);
      settings[s.field] = s.fallback;
    } else {
      settings[s.field] = checked.ok;
    }
  }
  const result = settings as unknown as AssistantSettings;
  if (result.backend === 'openai' && (!result.serverUrl || !result.serverModel)) {
    problems.push(`${SECTION}.backend is "openai" but ${SECTION}.server.url or ${SECTION}.server.model is empty; using the built-in engine`);
    result.backend = 'builtin';
  }
  return { settings: result, problems };
}

/** Settings whose change needs a new sidecar (a new model load). */
export const ENGINE_SETTING_KEYS = ['modelPath', 'maxParallelChannels', 'kvBudget'];
