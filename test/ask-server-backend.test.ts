// `mlx-batch ask --backend-url`: the same small ask (2 questions x 2 small
// files) through an OpenAI-compatible server: our own `mlx-batch serve`
// (constrained JSON) and mlx_lm.server from the project venv (no constrained
// output: a reply that does not parse must be an error job, never missing).
// Every server binds 127.0.0.1 and is stopped by the test that started it.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { AskReport, JobResult } from '../src/ask/report.js';
import { JOB_STATES } from '../src/ask/report.js';
import { freePort } from '../bench/common.js';
import { runCli } from './support/cli.js';
import { DEFAULT_MODEL, ROOT, VENV_PYTHON } from './support/fixtures.js';

/** The float32 MLX folder bench/serve.ts runs mlx_lm.server on (scripts/gguf_to_mlx.py writes it from the default GGUF). */
const F32_FOLDER = path.join(ROOT, 'models', 'SmolLM2-135M-Instruct-f32-mlx');
const DOCS = path.join('test', 'fixtures', 'ask', 'docs');
const FILES = [`${DOCS}/config.yaml`, `${DOCS}/CHANGELOG.md`];
const QUESTIONS = ['What is the request timeout in seconds?', 'Which version added UBL XML invoice uploads?'];

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-ask-server-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** This environment without API keys or a serve token, plus `extra`. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const key of ['MLX_BATCH_API_KEY', 'OPENAI_API_KEY', 'MLX_BATCH_TOKEN']) delete env[key];
  return { ...env, ...extra };
}

/** Stops a child this test started: `signal`, then SIGKILL after `ms`; resolves once it exited. */
function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', ms = 30_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve({ code: child.exitCode, signal: child.signalCode });
      return;
    }
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      resolve({ code, signal: sig });
    });
    child.kill(signal);
  });
}

/** Runs the small ask against `url`; returns the exit code, stderr and the report. */
async function askVia(url: string, model: string, name: string, env: NodeJS.ProcessEnv) {
  const out = path.join(tmp, `${name}.json`);
  const r = await runCli(
    ['ask', ...QUESTIONS.flatMap((q) => ['-q', q]), ...FILES, '--backend-url', url, '--backend-model', model, '--max-tokens', '96', '--out', out],
    15 * 60_000,
    { env },
  );
  assert.ok(fs.existsSync(out), `no report (exit ${r.code}):\n${r.stderr}`);
  return { ...r, report: JSON.parse(fs.readFileSync(out, 'utf8')) as AskReport };
}

const allResults = (report: AskReport): JobResult[] => report.questions.flatMap((q) => q.results);

/** Every (question x file) job is there once, in one of the five states, and the counts add up. */
function assertEveryJobEnded(report: AskReport): void {
  assert.deepEqual(report.questions.map((q) => q.question), QUESTIONS);
  const all = allResults(report);
  assert.equal(report.totals.chunks, 2, 'each small file is one chunk');
  assert.equal(report.totals.jobs, 4);
  assert.equal(all.length, 4);
  for (const q of report.questions) assert.deepEqual(q.results.map((r) => r.file).sort(), [...FILES].sort(), q.question);
  for (const r of all) {
    assert.ok(JOB_STATES.includes(r.state), `${r.id}: state ${r.state}`);
    if (r.state === 'error' || r.state === 'truncated') assert.ok(r.error && r.error.length > 0, `${r.id}: ${r.state} without a reason`);
    if (r.state === 'found') assert.ok(r.answer, `${r.id}: found without an answer`);
  }
  assert.equal(Object.values(report.totals.states).reduce((a, b) => a + b, 0), report.totals.jobs);
  for (const s of JOB_STATES) assert.equal(report.totals.states[s], all.filter((r) => r.state === s).length, s);
  assert.equal(report.totals.states.cancelled, 0);
  assert.equal(report.cancelled, false);
}

describe('ask through our own server (mlx-batch serve)', { timeout: 20 * 60_000 }, () => {
  const token = randomBytes(16).toString('hex');
  let child: ChildProcess | undefined;
  let url = '';
  let modelId = '';
  let serveErr = '';

  before(async () => {
    child = spawn(process.execPath, [path.join(ROOT, 'bin', 'mlx-batch.js'), 'serve', '--port', '0', '--token', token, '--batch', '8'], {
      cwd: ROOT,
      env: cleanEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const c = child;
    c.stderr!.on('data', (d) => (serveErr += d));
    const out = await new Promise<string>((resolve, reject) => {
      let text = '';
      const timer = setTimeout(() => reject(new Error(`serve printed no URL within 180 s:\n${text}\n${serveErr}`)), 180_000);
      c.stdout!.on('data', (d) => {
        text += d;
        if (text.includes('Ctrl-C to stop')) {
          clearTimeout(timer);
          resolve(text);
        }
      });
      c.once('exit', (code) => reject(new Error(`serve exited (${code}) before it was ready:\n${serveErr}`)));
    });
    url = /at (http:\/\/127\.0\.0\.1:\d+\/v1)/.exec(out)?.[1] ?? '';
    modelId = /^model (\S+)/m.exec(out)?.[1] ?? '';
    assert.ok(url && modelId, out);
  });

  after(async () => {
    if (child) await stopChild(child, 'SIGTERM');
  });

  test('every job ends in a state; constrained JSON makes every reply parse', async (t) => {
    const r = await askVia(url, modelId, 'ours', cleanEnv({ MLX_BATCH_API_KEY: token }));
    t.diagnostic(`totals: ${JSON.stringify(r.report.totals)}`);
    assert.equal(r.code, 0, r.stderr);
    assertEveryJobEnded(r.report);
    assert.equal(r.report.totals.states.error, 0, allResults(r.report).map((x) => `${x.id}: ${x.error}`).join('\n'));
    assert.equal(r.report.backend, url, 'the report names the server');
    assert.equal(r.report.model, modelId);
    // usage comes back on the stream
    assert.ok(r.report.totals.prompt_tokens > 0 && r.report.totals.generated_tokens > 0, JSON.stringify(r.report.totals));
    assert.match(r.stdout, new RegExp(`\\(${url.replace(/[.:/]/g, '\\$&')}\\)`));
  });

  test('a wrong API key: every job is an error naming the 401, none missing', async () => {
    const r = await askVia(url, modelId, 'ours-401', cleanEnv({ MLX_BATCH_API_KEY: 'wrong' }));
    assert.equal(r.code, 1, r.stderr);
    assertEveryJobEnded(r.report);
    assert.equal(r.report.totals.states.error, 4);
    for (const x of allResults(r.report)) assert.match(x.error ?? '', /401/, x.id);
  });

  test('SIGTERM stops the server', async () => {
    const ended = await stopChild(child!, 'SIGTERM');
    assert.deepEqual(ended, { code: 0, signal: null }, serveErr);
    await assert.rejects(fetch(`${url}/models`));
  });
});

describe('ask through mlx_lm.server (no constrained output)', { timeout: 20 * 60_000 }, () => {
  let child: ChildProcess | undefined;
  let url = '';
  let err = '';

  before(async () => {
    if (!fs.existsSync(path.join(F32_FOLDER, 'config.json'))) {
      execFileSync(VENV_PYTHON, [path.join(ROOT, 'scripts', 'gguf_to_mlx.py'), DEFAULT_MODEL, F32_FOLDER], { stdio: ['ignore', 'ignore', 'inherit'] });
    }
    const port = await freePort();
    child = spawn(VENV_PYTHON, ['-m', 'mlx_lm.server', '--model', F32_FOLDER, '--host', '127.0.0.1', '--port', String(port), '--log-level', 'WARNING'], {
      cwd: ROOT,
      env: cleanEnv(),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    child.stderr!.on('data', (d) => (err += d));
    url = `http://127.0.0.1:${port}`;
    const started = Date.now();
    for (;;) {
      if (child.exitCode !== null) throw new Error(`mlx_lm.server exited (${child.exitCode}):\n${err}`);
      if (Date.now() - started > 180_000) throw new Error(`mlx_lm.server not ready within 180 s:\n${err}`);
      try {
        if ((await fetch(`${url}/v1/models`)).ok) break;
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  });

  after(async () => {
    if (child) await stopChild(child, 'SIGTERM');
  });

  test('every job ends in one of the five states; unparseable replies are error jobs with a reason', async (t) => {
    // 'default_model': the model mlx_lm.server was started with (another name would make it load that one).
    const r = await askVia(url, 'default_model', 'mlx-lm', cleanEnv());
    t.diagnostic(`totals: ${JSON.stringify(r.report.totals)}`);
    for (const x of allResults(r.report)) t.diagnostic(`${x.id}: ${x.state}${x.error ? `: ${x.error}` : ''}`);
    assertEveryJobEnded(r.report);
    const errors = allResults(r.report).filter((x) => x.state === 'error');
    assert.equal(r.code, errors.length > 0 ? 1 : 0, r.stderr);
    for (const x of errors) assert.match(x.error ?? '', /JSON|string|null/, `${x.id}: an error is a reply that did not parse: ${x.error}`);
    assert.equal(r.report.backend, url);
    assert.equal(r.report.model, 'default_model');
    assert.ok(r.report.totals.generated_tokens > 0, JSON.stringify(r.report.totals));
  });
});
