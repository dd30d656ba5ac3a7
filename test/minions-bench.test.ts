// `mlx-batch bench minions` end to end on the default model: every client
// (our engine one at a time and batched, and mlx_lm.server, which this test
// starts on 127.0.0.1 and stops), a short document, batch sizes 1 and 5.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import type { MinionsReport } from '../src/benchmark/report.js';
import { startMlxLmServer, type PeerServer } from '../src/benchmark/mlx-lm-server.js';
import { runCli, type CliRun } from './support/cli.js';
import { DEFAULT_MODEL, ROOT } from './support/fixtures.js';

describe('bench minions', { timeout: 30 * 60_000 }, () => {
  let server: PeerServer;
  let out: string;
  let run: CliRun;
  let report: MinionsReport;

  before(async () => {
    server = await startMlxLmServer(ROOT, DEFAULT_MODEL, 5);
    out = fs.mkdtempSync(path.join(os.tmpdir(), 'minions-'));
    run = await runCli(['bench', 'minions', '--clients', 'sequential,batched,server', '--server-url', server.url, '--server-model', server.model,
      '--contexts', '5', '--sizes', '1,5', '--context-sweep-size', '5', '--size-sweep-context', '5',
      // mlx_lm.server has no constrained output: a small model can ramble to the seed's cap of 1000 tokens per answer.
      '--max-tokens', '96', '--target-repeats', '2', '--out', out], 25 * 60_000);
    if (run.code === 0) report = JSON.parse(fs.readFileSync(path.join(out, 'minions.json'), 'utf8'));
  });
  after(async () => {
    await server?.stop();
    if (out) fs.rmSync(out, { recursive: true, force: true });
  });

  test('every client runs every cell and the report and charts are written', () => {
    assert.equal(run.code, 0, run.stderr);
    // (5 sentences x 5 questions) and (5 x 1), packed and channels, three clients;
    // then the target's cell (channels, 5 x 5) once more by sequential and batched.
    assert.equal(report.runs.length, 14);
    const repeats = report.runs.filter((x) => x.repeat !== undefined);
    assert.deepEqual(repeats.map((x) => [x.client, x.mode, x.size, x.repeat]).sort(), [['batched', 'channels', 5, 1], ['sequential', 'channels', 5, 1]]);
    const target = report.targets.find((t) => t.target.includes('5× sequential'))!;
    assert.match(target.detail, /^median [\d.]+× over 2 runs of each/);
    for (const client of ['sequential', 'batched', 'server']) {
      for (const mode of ['packed', 'channels']) {
        for (const size of [1, 5]) {
          const r = report.runs.find((x) => x.client === client && x.mode === mode && x.size === size && x.repeat === undefined);
          assert.ok(r, `${client} ${mode} ${size}`);
          assert.equal(r.context, 5);
          assert.equal(r.answers.length, size);
        }
      }
    }
    const md = fs.readFileSync(path.join(out, 'minions.md'), 'utf8');
    assert.match(md, /\| client \| mode \| sentences \| questions \| wall s/);
    assert.equal(md.split('\n').filter((l) => /^\| (sequential|batched|server) \|/.test(l)).length, 12, 'the table shows the sweep, not the repeats');
    assert.match(md, /channels accuracy ≥ packed accuracy/);
    for (const client of ['sequential', 'batched', 'server']) {
      assert.match(md, new RegExp(`^- ${client}, channels: (all 6 valid|\\d+ of 6 not valid: )`, 'm'), `${client}'s invalid answers are accounted for`);
    }
    for (const chart of ['context_sweep', 'long_context_clients', 'batch_size_sweep']) {
      const svg = fs.readFileSync(path.join(out, `${chart}.svg`), 'utf8');
      assert.match(svg, /^<svg[\s\S]*<\/svg>\s*$/, `${chart}.svg`);
      assert.match(svg, /throughput/i);
      const png = fs.readFileSync(path.join(out, `${chart}.png`));
      assert.deepEqual([...png.subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], `${chart}.png is a PNG`);
      assert.ok(md.includes(`${chart}.svg`), `minions.md shows ${chart}`);
    }
  });

  test('the numbers add up: tokens are the per-request sums, throughput is tokens over wall time', () => {
    for (const r of report.runs) {
      const label = `${r.client} ${r.mode} ${r.size}`;
      const sum = (k: 'prompt_tokens' | 'cached_tokens' | 'generated_tokens') => r.requests.reduce((n, q) => n + q[k], 0);
      assert.equal(r.generated_tokens, sum('generated_tokens'), label);
      assert.equal(r.prompt_tokens, sum('prompt_tokens'), label);
      assert.equal(r.cached_tokens, sum('cached_tokens'), label);
      assert.equal(r.prefilled_tokens, r.prompt_tokens - r.cached_tokens, label);
      assert.ok(r.generated_tokens > 0, label);
      assert.ok(Math.abs(r.tokens_per_s - r.generated_tokens / r.wall_s) < 1e-9, label);
      assert.equal(r.requests.length >= (r.mode === 'packed' ? 1 : r.size), true, label);
      assert.ok(r.latency_p50_s <= r.latency_p95_s && r.latency_p95_s <= r.wall_s + 1e-6, label);
      assert.equal(r.accuracy, r.answers.filter((a) => a.correct).length / r.size, label);
      assert.equal(r.json_valid_rate, r.answers.filter((a) => a.valid).length / r.size, label);
      for (const a of r.answers) if (a.correct) assert.ok(a.valid, `${label}: a correct answer was valid JSON`);
    }
    // Our engine constrains its JSON: every reply the model ended parses (the output cap can cut one).
    for (const r of report.runs.filter((x) => x.client !== 'server')) {
      for (const a of r.answers) if (a.ended === 'stop') assert.ok(a.valid, `${r.client} ${r.mode} ${r.size}: ${a.question}`);
    }
    // Batched channels share the document: its prompt is read once, the other questions reuse it.
    const batched = report.runs.find((x) => x.client === 'batched' && x.mode === 'channels' && x.size === 5)!;
    assert.ok(batched.cached_tokens > 0, 'batched channels reused the document');
  });

  test('bad arguments are usage errors that name the flag', async () => {
    const r = await runCli(['bench', 'minions', '--clients', 'sequential,ollama', '--out', out], 60_000);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--clients: unknown 'ollama'/);
    const s = await runCli(['bench', 'minions', '--sizes', '0,5', '--out', out], 60_000);
    assert.equal(s.code, 2);
    assert.match(s.stderr, /--sizes: a comma-separated list/);
    // Found before anything runs, not after the sweep.
    const long = await runCli(['bench', 'minions', '--contexts', '5,400', '--out', out], 60_000);
    assert.equal(long.code, 2, long.stderr);
    assert.match(long.stderr, /--contexts \/ --size-sweep-context 400: .*gives no document of 400 sentences/);
    const file = path.join(out, 'minions.md');
    const notFolder = await runCli(['bench', 'minions', '--out', path.join(file, 'sub')], 60_000);
    assert.equal(notFolder.code, 2, notFolder.stderr);
    assert.match(notFolder.stderr, /--out .*minions\.md\/sub: cannot write to .* \(ENOTDIR\)/);
  });

  /** Whether the process has a child yet (the sidecar: its signal handlers are in place by then). */
  const hasChild = (pid: number) => fs.readdirSync(`/proc/${pid}/task`).some((t) => fs.readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim() !== '');

  test('interrupted before its first run ends, it writes nothing: the report already there stays', { skip: process.platform !== 'linux' && 'reads /proc' }, async () => {
    const before = fs.readFileSync(path.join(out, 'minions.json'), 'utf8');
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'mlx-batch.js'), 'bench', 'minions', '--clients', 'sequential',
      '--contexts', '5', '--sizes', '1', '--context-sweep-size', '1', '--size-sweep-context', '5', '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c) => (stderr += c));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      // While the engine loads: no run can have ended.
      for (let t = 0; !hasChild(child.pid!); t += 20) {
        assert.ok(t < 60_000, `no sidecar within 60 s: ${stderr}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.ok(child.kill('SIGTERM'));
      assert.equal(await exited, 130, stderr);
      assert.match(stderr, /interrupted before the first run ended; nothing was written/);
      assert.equal(fs.readFileSync(path.join(out, 'minions.json'), 'utf8'), before);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    }
  });
});
