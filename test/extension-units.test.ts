// The extension's VS Code-free parts: settings validation and trust, the model
// picker's scan of a fake Hugging Face cache, the run store's journal, exports.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';

import type { JobResult } from '../src/ask/report.js';
import { SidecarClient, SidecarState } from '../src/engine/client.js';
import { EngineHost, NoModelError, resolveModelSetting } from '../src/extension/engine-host.js';
import { huggingFaceHubCache, scanModels } from '../src/extension/model-scan.js';
import { exportRunAs, reportOfRun } from '../src/extension/run-export.js';
import { RunStore } from '../src/extension/run-store.js';
import { resolveSettings, SETTINGS, type InspectedValue } from '../src/extension/settings.js';
import { parseQuestionsFile } from '../src/ask/questions.js';
import { DEFAULT_MODEL, ROOT, VENV_PYTHON } from './support/fixtures.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlxb-ext-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const reader = (values: Record<string, InspectedValue>) => (key: string) => values[key];

describe('settings', () => {
  test('defaults when nothing is set, with no problems', () => {
    const { settings, problems } = resolveSettings(reader({}), true);
    assert.deepEqual(problems, []);
    assert.equal(settings.maxTokens, 256);
    assert.equal(settings.backend, 'builtin');
    assert.equal(settings.kvBudgetBytes, undefined);
    assert.equal(settings.maxFileBytes, 2 ** 20);
  });

  test('invalid values fall back to the default with a message naming the setting', () => {
    const { settings, problems } = resolveSettings(reader({
      maxTokens: { globalValue: 'lots' },
      temperature: { workspaceValue: -1 },
      kvBudget: { globalValue: '2 parsecs' },
      include: { globalValue: ['src/**', ''] },
      'server.url': { globalValue: 'ftp://x' },
      maxParallelChannels: { globalValue: 1.5 },
    }), true);
    assert.equal(settings.maxTokens, 256);
    assert.equal(settings.temperature, 0);
    assert.equal(settings.kvBudgetBytes, undefined);
    assert.deepEqual(settings.include, []);
    assert.equal(settings.maxParallelChannels, 32);
    for (const key of ['maxTokens', 'temperature', 'kvBudget', 'include', 'server.url', 'maxParallelChannels']) {
      assert.ok(problems.some((p) => p.startsWith(`mlxBatch.${key} `)), `a problem names mlxBatch.${key}: ${problems.join(' | ')}`);
    }
  });

  test('valid values are taken; workspace folder over workspace over user', () => {
    const { settings, problems } = resolveSettings(reader({
      maxTokens: { globalValue: 100, workspaceValue: 200, workspaceFolderValue: 300 },
      kvBudget: { globalValue: '2GiB' },
      exclude: { workspaceValue: ['**/*.lock'] },
    }), true);
    assert.deepEqual(problems, []);
    assert.equal(settings.maxTokens, 300);
    assert.equal(settings.kvBudgetBytes, 2 * 2 ** 30);
    assert.deepEqual(settings.exclude, ['**/*.lock']);
  });

  test('an untrusted workspace cannot point the engine at files or servers', () => {
    const values = reader({
      modelPath: { globalValue: '/models/mine.gguf', workspaceValue: '/tmp/evil.gguf' },
      'server.url': { workspaceValue: 'http://127.0.0.1:9/v1' },
      maxTokens: { workspaceValue: 64 },
    });
    const untrusted = resolveSettings(values, false);
    assert.equal(untrusted.settings.modelPath, '/models/mine.gguf');
    assert.equal(untrusted.settings.serverUrl, '');
    assert.equal(untrusted.settings.maxTokens, 64, 'harmless workspace settings still apply');
    assert.ok(untrusted.problems.some((p) => p.includes('mlxBatch.modelPath') && p.includes('not trusted')));
    assert.equal(resolveSettings(values, true).settings.modelPath, '/tmp/evil.gguf');
  });

  test('the openai backend without a URL or model falls back to the built-in engine, saying why', () => {
    const { settings, problems } = resolveSettings(reader({ backend: { globalValue: 'openai' } }), true);
    assert.equal(settings.backend, 'builtin');
    assert.ok(problems.some((p) => p.includes('mlxBatch.server.url')));
  });

  test('mlxBatch.modelPath: ~ is home, relative is from the workspace folder, a missing path is named', () => {
    const home = path.join(tmp, 'home');
    const workspace = path.join(tmp, 'workspace');
    fs.mkdirSync(path.join(home, 'models'), { recursive: true });
    fs.mkdirSync(path.join(workspace, 'models'), { recursive: true });
    fs.writeFileSync(path.join(home, 'models', 'm.gguf'), '');
    fs.writeFileSync(path.join(workspace, 'models', 'w.gguf'), '');
    assert.equal(resolveModelSetting('~/models/m.gguf', home), path.join(home, 'models', 'm.gguf'));
    assert.equal(resolveModelSetting('models/w.gguf', home, workspace), path.join(workspace, 'models', 'w.gguf'));
    assert.equal(resolveModelSetting(path.join(home, 'models', 'm.gguf'), home), path.join(home, 'models', 'm.gguf'));
    assert.throws(() => resolveModelSetting('~/models/gone.gguf', home), (e: Error) =>
      e instanceof NoModelError && e.message.includes('"mlxBatch.modelPath" is "~/models/gone.gguf"') && e.message.includes(path.join(home, 'models', 'gone.gguf')));
    assert.throws(() => resolveModelSetting('models/w.gguf', home), /relative path "models\/w.gguf" and no folder is open/);
  });

  test('package.json contributes every setting with the same default', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    const props = pkg.contributes.configuration.properties as Record<string, { default: unknown }>;
    for (const s of SETTINGS) {
      const contributed = props[`mlxBatch.${s.key}`];
      assert.ok(contributed, `mlxBatch.${s.key} is contributed`);
      const { settings } = resolveSettings(reader({ [s.key]: { globalValue: contributed.default } }), true);
      assert.deepEqual(settings[s.field], s.fallback, `mlxBatch.${s.key}'s contributed default means the same as ours`);
    }
    assert.equal(Object.keys(props).length, SETTINGS.length);
  });
});

describe('model picker scan', () => {
  test('finds GGUF files and MLX folders in a Hugging Face cache layout, with format, architecture and size', async () => {
    const hub = path.join(tmp, 'hub');
    const snap = path.join(hub, 'models--mlx-community--Tiny-4bit', 'snapshots', 'abc123');
    fs.mkdirSync(snap, { recursive: true });
    fs.mkdirSync(path.join(hub, 'models--mlx-community--Tiny-4bit', 'blobs'), { recursive: true });
    fs.writeFileSync(path.join(snap, 'config.json'), JSON.stringify({ model_type: 'qwen2' }));
    fs.writeFileSync(path.join(hub, 'models--mlx-community--Tiny-4bit', 'blobs', 'w'), Buffer.alloc(1000));
    fs.symlinkSync(path.join(hub, 'models--mlx-community--Tiny-4bit', 'blobs', 'w'), path.join(snap, 'model.safetensors'));
    const ggufSnap = path.join(hub, 'models--someone--SmolLM2-GGUF', 'snapshots', 'def456');
    fs.mkdirSync(ggufSnap, { recursive: true });
    fs.symlinkSync(DEFAULT_MODEL, path.join(ggufSnap, 'smol.Q4_1.gguf'));
    fs.writeFileSync(path.join(ggufSnap, 'broken.gguf'), 'not a gguf');
    const extra = path.join(tmp, 'my-models');
    fs.mkdirSync(extra);
    fs.symlinkSync(DEFAULT_MODEL, path.join(extra, 'same-file-again.gguf'));

    // Datasets and Spaces in the cache are not walked.
    const dataset = path.join(hub, 'datasets--someone--corpus', 'snapshots', 'r1');
    fs.mkdirSync(dataset, { recursive: true });
    execFileSync(VENV_PYTHON, [path.join(ROOT, 'test', 'python', 'make_bad_gguf.py'), path.join(dataset, 'tiny.gguf'), 'Q8_0']);

    const found = await scanModels([hub, extra, path.join(tmp, 'missing')]);
    const mlx = found.find((m) => m.format === 'mlx');
    assert.deepEqual(mlx && { name: mlx.name, architecture: mlx.architecture, bytes: mlx.bytes }, { name: 'mlx-community/Tiny-4bit', architecture: 'qwen2', bytes: 1000 });
    assert.ok(!found.some((m) => m.path.includes('datasets--')), 'a dataset is not walked');
    const ggufs = found.filter((m) => m.format === 'gguf');
    assert.equal(ggufs.length, 1, 'the same file through two links is listed once; an unreadable GGUF is not offered');
    assert.equal(ggufs[0].name, 'someone/SmolLM2-GGUF/smol.Q4_1.gguf');
    assert.equal(ggufs[0].architecture, 'llama');
    assert.equal(ggufs[0].bytes, fs.statSync(DEFAULT_MODEL).size);
  });

  test('a model folder given as ~/... is the home folder', async () => {
    const home = process.env.HOME;
    const fakeHome = path.join(tmp, 'scan-home');
    fs.mkdirSync(path.join(fakeHome, 'models'), { recursive: true });
    fs.symlinkSync(DEFAULT_MODEL, path.join(fakeHome, 'models', 'mine.gguf'));
    process.env.HOME = fakeHome;
    try {
      const found = await scanModels(['~/models']);
      assert.deepEqual(found.map((m) => m.path), [path.join(fakeHome, 'models', 'mine.gguf')]);
    } finally {
      process.env.HOME = home;
    }
  });

  test('the hub cache honours HF_HUB_CACHE, then HF_HOME', () => {
    assert.equal(huggingFaceHubCache({ HF_HUB_CACHE: '/a', HF_HOME: '/b' }), '/a');
    assert.equal(huggingFaceHubCache({ HF_HOME: '/b' }), path.join('/b', 'hub'));
    assert.match(huggingFaceHubCache({}), /huggingface[/\\]hub$/);
  });
});

function result(id: string, file: string, state: JobResult['state'], extra: Partial<JobResult> = {}): JobResult {
  return {
    id, file, start_line: 1, end_line: 10, state, answer: state === 'found' ? 'an answer, with "quotes"' : null, explanation: null,
    citation: state === 'found' ? { start_line: 3, end_line: 3, quote: 'line three' } : null, verified: state === 'found', error: null,
    prompt_tokens: 100, cached_tokens: 60, generated_tokens: 20, attempts: 1, seconds: 1, ...extra,
  };
}

describe('run store', () => {
  test('finished jobs survive a reload; a run cut off mid-way ends its open jobs as cancelled', () => {
    const dir = path.join(tmp, 'runs');
    const store = new RunStore(dir);
    const run = store.create({ id: 'r1', started: new Date().toISOString(), questions: ['Q?'], scope: 'docs', model: 'm', root: tmp });
    const jobs = ['a.md', 'b.md', 'c.md'].map((file) => ({ id: `q0:${file}:1-10`, question: 0, file, start_line: 1, end_line: 10, phase: 'queued' as const }));
    store.plan(run, jobs, [{ file: 'x.png', reason: 'binary' }]);
    store.update(run, { ...jobs[0], phase: 'found', result: result(jobs[0].id, 'a.md', 'found') });
    store.update(run, { ...jobs[1], phase: 'generating', text: '{"expl' });

    const reloaded = new RunStore(dir).get('r1')!;
    assert.equal(reloaded.status, 'cancelled');
    assert.equal(reloaded.jobs.find((j) => j.file === 'a.md')!.result!.state, 'found');
    for (const j of reloaded.jobs.filter((j) => j.file !== 'a.md')) {
      assert.equal(j.result!.state, 'cancelled');
      assert.match(j.result!.error!, /reloaded/);
    }
    assert.deepEqual(reloaded.skipped, [{ file: 'x.png', reason: 'binary' }]);
    // Settled at that load: the header holds it all, the journal is gone.
    assert.equal(fs.existsSync(path.join(dir, 'r1.jobs.jsonl')), false);
    assert.equal(new RunStore(dir).get('r1')!.jobs.find((j) => j.file === 'a.md')!.result!.state, 'found');
  });

  test('a finished run is one file: its journal goes once the header holds every result', () => {
    const dir = path.join(tmp, 'runs-finished');
    const store = new RunStore(dir);
    const run = store.create({ id: 'r3', started: new Date().toISOString(), questions: ['Q?'], scope: 'docs', model: 'm', root: tmp });
    const jobs = ['a.md', 'b.md'].map((file) => ({ id: `q0:${file}:1-10`, question: 0, file, start_line: 1, end_line: 10, phase: 'queued' as const }));
    store.plan(run, jobs, []);
    for (const j of jobs) store.update(run, { ...j, phase: 'not_found', result: result(j.id, j.file, 'not_found') });
    assert.ok(fs.existsSync(path.join(dir, 'r3.jobs.jsonl')), 'results are journaled as they finish');
    store.finish(run, 'done');
    assert.equal(fs.existsSync(path.join(dir, 'r3.jobs.jsonl')), false);
    const reloaded = new RunStore(dir).get('r3')!;
    assert.equal(reloaded.status, 'done');
    assert.deepEqual(reloaded.jobs.map((j) => j.result!.state), ['not_found', 'not_found']);
  });

  test('exports: JSON is the ask report shape, CSV escapes, Markdown links citations', () => {
    const store = new RunStore(path.join(tmp, 'runs2'));
    const run = store.create({ id: 'r2', started: '2026-12-01T00:00:00.000Z', questions: ['Q1?', 'Q2?'], scope: 's', model: 'm', root: tmp });
    const jobs = [
      { id: 'q0:a.md:1-10', question: 0, file: 'a.md', start_line: 1, end_line: 10, phase: 'queued' as const },
      { id: 'q1:a.md:1-10', question: 1, file: 'a.md', start_line: 1, end_line: 10, phase: 'queued' as const },
    ];
    store.plan(run, jobs, []);
    store.update(run, { ...jobs[0], phase: 'found', result: result(jobs[0].id, 'a.md', 'found') });
    store.update(run, { ...jobs[1], phase: 'error', result: result(jobs[1].id, 'a.md', 'error', { error: 'boom, "bad"' }) });
    store.finish(run, 'done');
    const report = reportOfRun(run);
    assert.equal(report.totals.jobs, 2);
    assert.equal(report.totals.states.found + report.totals.states.error, 2);
    assert.equal(report.totals.prefilled_tokens, 80);
    assert.deepEqual(JSON.parse(exportRunAs(run, 'json')).questions.map((q: { question: string }) => q.question), ['Q1?', 'Q2?']);
    const csv = exportRunAs(run, 'csv').split('\r\n');
    assert.match(csv[0], /^question,file,start_line/);
    assert.ok(csv.some((l) => l.includes('"an answer, with ""quotes"""')));
    assert.ok(csv.some((l) => l.includes('"boom, ""bad"""')));
    assert.match(exportRunAs(run, 'markdown'), /\[a\.md#L3\]\(a\.md#L3\)/);
  });
});

describe('questions files', () => {
  test('.txt, .md list items and .jsonl', () => {
    assert.deepEqual(parseQuestionsFile('What?\n\n# a comment\nWhy?\n', 'q.txt'), ['What?', 'Why?']);
    assert.deepEqual(parseQuestionsFile('# Questions\n\n- What?\n* Why?\n1. How?\nprose\n', 'q.md'), ['What?', 'Why?', 'How?']);
    assert.deepEqual(parseQuestionsFile('"What?"\n{"question": "Why?"}\n', 'q.jsonl'), ['What?', 'Why?']);
    assert.throws(() => parseQuestionsFile('{"q": 1}', 'q.jsonl'), /q\.jsonl: line 1/);
    // Lines as an editor numbers them: blank lines count.
    assert.throws(() => parseQuestionsFile('\n\n"ok"\n\n{bad\n', 'q.jsonl'), /q\.jsonl: line 5 is not JSON/);
  });
});

describe('engine host', { skip: fs.existsSync(DEFAULT_MODEL) ? false : `needs ${DEFAULT_MODEL}` }, () => {
  test('a batch keeps the engine it started on when a changed setting brings a new one, which stops when the batch ends', async () => {
    const said: string[] = [];
    const log = { info: (l: string) => said.push(l), warn: (l: string) => said.push(l), error: (l: string) => said.push(l) };
    let idle = 0;
    const host = new EngineHost(ROOT, log as never, { onState: () => {}, onIdle: () => idle++ });
    const settings = { ...resolveSettings(reader({}), true).settings, modelPath: DEFAULT_MODEL };
    try {
      const first = await host.lease({ ...settings, maxParallelChannels: 4 });
      const firstEngine = (host as unknown as { client: SidecarClient }).client;
      const stateOf = (c: SidecarClient): SidecarState => c.state;
      const long = first.backend.complete({ id: 'a', messages: [{ role: 'user', content: 'Count from 1 to 100, one number a line.' }], maxTokens: 120, temperature: 0 });
      // The setting changes mid-run and the user starts another batch: a new engine for it.
      const second = await host.lease({ ...settings, maxParallelChannels: 8 });
      assert.notEqual((host as unknown as { client: SidecarClient }).client, firstEngine);
      const short = await second.backend.complete({ id: 'b', messages: [{ role: 'user', content: 'Say hi.' }], maxTokens: 8, temperature: 0 });
      assert.notEqual(short.finishReason, 'error', short.error);
      const reply = await long;
      assert.ok(reply.finishReason === 'stop' || reply.finishReason === 'length', `${reply.finishReason}: ${reply.error}`);
      assert.ok(reply.generatedTokens > 0);
      assert.equal(stateOf(firstEngine), SidecarState.Running);
      assert.ok(said.some((l) => l.includes('stops when its running batch ends')));
      first.release();
      first.release(); // twice is once
      for (let i = 0; i < 100 && stateOf(firstEngine) !== SidecarState.Stopped; i++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(stateOf(firstEngine), SidecarState.Stopped);
      assert.equal(idle, 0, 'a replaced engine ending is not the current one going idle');
      second.release();
      assert.equal(idle, 1);
      assert.equal(host.running, true, 'the current engine stays up between batches');
    } finally {
      await host.stop();
    }
  });
});
