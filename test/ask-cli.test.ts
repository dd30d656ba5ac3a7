// `mlx-batch ask` end to end on the built-in engine (default model, the
// bundled CLI): collection, chunking, prefix sharing, the report files, usage
// errors and Ctrl-C. Model runs are kept small (the machine has 2 cores).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { AskReport, JobResult } from '../src/ask/report.js';
import { JOB_STATES } from '../src/ask/report.js';
import { runCli } from './support/cli.js';
import { ROOT } from './support/fixtures.js';

const DOCS = path.join(ROOT, 'test', 'fixtures', 'ask', 'docs');
const DOC_FILES = ['CHANGELOG.md', 'billing.py', 'config.yaml', 'project-notes.md'];
const COLORS = ['red', 'blue', 'green', 'gold', 'gray', 'pink', 'tan', 'black', 'white', 'brown'];
/** ~80 distinct numbered sentences, ~630 tokens: more than one chunk at --chunk-tokens 256. */
const LONG_LINES = 80;
const LONG_TEXT = Array.from({ length: LONG_LINES }, (_, i) => `Line ${i + 1} is ${COLORS[(i + 1) % 10]}.\n`).join('');

const temps: string[] = [];
after(() => {
  for (const dir of temps) fs.rmSync(dir, { recursive: true, force: true });
});

/** A fresh temp folder with a copy of the fixture docs. */
function docsCopy(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  temps.push(dir);
  fs.cpSync(DOCS, dir, { recursive: true });
  return dir;
}

const allResults = (report: AskReport): JobResult[] => report.questions.flatMap((q) => q.results);

/** Checks every job ended in exactly one state and the counts add up. */
function assertStatesAddUp(report: AskReport): void {
  const all = allResults(report);
  for (const r of all) assert.ok(JOB_STATES.includes(r.state), `job ${r.id} has state ${r.state}`);
  assert.equal(all.length, report.totals.jobs);
  assert.equal(Object.values(report.totals.states).reduce((a, b) => a + b, 0), report.totals.jobs);
  for (const s of JOB_STATES) assert.equal(report.totals.states[s], all.filter((r) => r.state === s).length, `totals.states.${s}`);
  assert.equal(new Set(all.map((r) => r.id)).size, all.length, 'job ids are unique');
}

describe('ask end to end on the built-in engine', { timeout: 20 * 60_000 }, () => {
  const QUESTIONS = ['Which port does the HTTP API listen on?', 'Who is the lead maintainer?', 'What color is line 42?'];
  let dir: string;
  let run: Awaited<ReturnType<typeof runCli>>;
  let jsonText: string;
  let report: AskReport;

  before(async () => {
    dir = docsCopy('mlx-batch-ask-');
    fs.writeFileSync(path.join(dir, 'logo.png'), Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52]));
    // It ignores itself too: a one-line .gitignore would only be three more jobs for the model.
    fs.writeFileSync(path.join(dir, '.gitignore'), 'secret.txt\n.gitignore\n');
    fs.writeFileSync(path.join(dir, 'secret.txt'), 'The database password is hunter2.\n');
    fs.writeFileSync(path.join(dir, 'lines.txt'), LONG_TEXT);
    run = await runCli(
      ['ask', ...QUESTIONS.flatMap((q) => ['-q', q]), '.', '--chunk-tokens', '256', '--max-tokens', '96', '--synthesize', '--out', 'report.json', '--out', 'report.md'],
      15 * 60_000,
      { cwd: dir },
    );
    assert.ok(fs.existsSync(path.join(dir, 'report.json')), `no report.json (exit ${run.code}):\n${run.stderr}`);
    jsonText = fs.readFileSync(path.join(dir, 'report.json'), 'utf8');
    report = JSON.parse(jsonText) as AskReport;
  });

  test('exits 0 (1 only when jobs errored), and no reply failed to parse', () => {
    const errors = allResults(report).filter((r) => r.state === 'error');
    assert.ok(run.code === 0 || (run.code === 1 && errors.length > 0), `exit ${run.code}:\n${run.stderr}`);
    // Constrained JSON: every reply that ended parses, so no job is an error for its JSON.
    for (const r of errors) assert.doesNotMatch(r.error ?? '', /JSON/, `${r.id}: ${r.error}`);
    assert.equal(run.code, 0, `errored jobs: ${errors.map((r) => `${r.id}: ${r.error}`).join('; ')}`);
  });

  test('--synthesize: a summary for each question with found answers, null for one without', () => {
    for (const q of report.questions) {
      const found = q.results.some((r) => r.state === 'found');
      if (found) assert.ok(typeof q.summary === 'string' && q.summary.trim() !== '' && !q.summary.startsWith('(synthesis failed'), `${q.question}: ${q.summary}`);
      else assert.equal(q.summary, null, q.question);
      if (q.summary) assert.ok(fs.readFileSync(path.join(dir, 'report.md'), 'utf8').includes(q.summary.trim()), 'the summary is in report.md');
    }
  });

  test('every job ends in one state; jobs = questions x chunks', () => {
    assert.deepEqual(report.questions.map((q) => q.question), QUESTIONS);
    assertStatesAddUp(report);
    assert.equal(report.totals.jobs, 3 * report.totals.chunks);
    for (const q of report.questions) assert.equal(q.results.length, report.totals.chunks, q.question);
    // every question was asked of the same chunks
    const ranges = (q: AskReport['questions'][number]) => q.results.map((r) => `${r.file}:${r.start_line}-${r.end_line}`).sort();
    for (const q of report.questions.slice(1)) assert.deepEqual(ranges(q), ranges(report.questions[0]));
    assert.equal(report.cancelled, false);
    for (const r of allResults(report)) {
      if (r.state === 'found') assert.ok(r.answer, `${r.id}: found without an answer`);
      if (r.state === 'found' || r.state === 'not_found') assert.equal(r.error, null, r.id);
      if (r.state === 'truncated' || r.state === 'error') assert.ok(r.error, `${r.id}: ${r.state} without a reason`);
      if (r.state === 'found' && r.verified) {
        assert.ok(r.citation && r.citation.start_line !== null, `${r.id}: verified without a located quote`);
        assert.ok(r.citation.start_line! >= r.start_line && r.citation.end_line! <= r.end_line, `${r.id}: the quote's lines are inside its chunk`);
      }
    }
    assert.equal(report.totals.found_unverified, allResults(report).filter((r) => r.state === 'found' && !r.verified).length);
  });

  test('the long file is split into chunks that cover it', () => {
    const chunks = report.questions[0].results
      .filter((r) => r.file === 'lines.txt')
      .map((r) => [r.start_line, r.end_line] as const)
      .sort((a, b) => a[0] - b[0]);
    assert.ok(chunks.length >= 2, `lines.txt in ${chunks.length} chunk(s)`);
    assert.equal(chunks[0][0], 1);
    assert.equal(chunks.at(-1)![1], LONG_LINES);
    for (let i = 1; i < chunks.length; i++) {
      assert.ok(chunks[i][0] > chunks[i - 1][0] && chunks[i][1] > chunks[i - 1][1], `chunks ${i - 1} and ${i} progress`);
      assert.ok(chunks[i][0] <= chunks[i - 1][1] + 1, `no gap between chunks ${i - 1} and ${i}`);
    }
    // the small files are one chunk each
    for (const file of DOC_FILES) {
      const ranges = report.questions[0].results.filter((r) => r.file === file);
      assert.equal(ranges.length, 1, file);
      assert.equal(ranges[0].start_line, 1, file);
    }
  });

  test('the binary file is skipped with its reason; the git-ignored file is nowhere', () => {
    const logo = report.skipped.find((s) => s.file === 'logo.png');
    assert.ok(logo, `logo.png not in skipped: ${JSON.stringify(report.skipped)}`);
    assert.match(logo.reason, /binary/);
    assert.ok(!allResults(report).some((r) => r.file === 'logo.png'));
    for (const text of [jsonText, fs.readFileSync(path.join(dir, 'report.md'), 'utf8'), run.stdout, run.stderr]) {
      assert.ok(!text.includes('secret.txt'), 'secret.txt is mentioned');
      assert.ok(!text.includes('hunter2'), 'secret.txt was read');
    }
  });

  test('paths are relative to the folder ask ran in', () => {
    const files = new Set(allResults(report).map((r) => r.file));
    for (const f of [...DOC_FILES, 'lines.txt']) assert.ok(files.has(f), `${f} was asked about: ${[...files].join(', ')}`);
    for (const f of [...files, ...report.skipped.map((s) => s.file)]) {
      assert.ok(!path.isAbsolute(f) && !f.startsWith('..') && !f.startsWith('./') && !f.includes('\\'), `path ${f}`);
      assert.ok(fs.existsSync(path.join(dir, f)), `${f} is a file of the folder`);
    }
    assert.equal(report.totals.files, files.size);
    assert.ok(!jsonText.includes(dir), 'the temp folder\'s absolute path is not in the report');
    for (const r of allResults(report)) assert.ok(r.id.includes(`:${r.file}:${r.start_line}-${r.end_line}`), r.id);
  });

  test('the questions share each chunk\'s prefix: most prompt tokens are reused', (ctx) => {
    const t = report.totals;
    ctx.diagnostic(`totals: ${JSON.stringify(t)}`);
    assert.ok(t.prompt_tokens > 0 && t.generated_tokens > 0, JSON.stringify(t));
    assert.equal(t.prefilled_tokens + t.cached_tokens, t.prompt_tokens);
    assert.ok(t.prefilled_tokens < 0.7 * t.prompt_tokens, `prefilled ${t.prefilled_tokens} of ${t.prompt_tokens} prompt tokens`);
    // The jobs' own tokens plus those of the --synthesize calls.
    assert.equal(t.prompt_tokens, allResults(report).reduce((n, r) => n + r.prompt_tokens, 0) + t.synthesis.prompt_tokens);
    assert.equal(t.generated_tokens, allResults(report).reduce((n, r) => n + r.generated_tokens, 0) + t.synthesis.generated_tokens);
    assert.ok(t.synthesis.generated_tokens > 0, 'the summaries were generated');
    for (const r of allResults(report)) {
      if (r.state !== 'cancelled') assert.ok(r.attempts === 1 || r.attempts === 2, `${r.id}: ${r.attempts} attempts`);
    }
  });

  test('report.md has the questions, the skipped files and the totals; stdout shows it too', () => {
    const md = fs.readFileSync(path.join(dir, 'report.md'), 'utf8');
    assert.match(md, /^# Ask report\n/);
    for (const q of QUESTIONS) assert.ok(md.includes(`## ${q}\n`), q);
    assert.match(md, /## Skipped files\n\n(- .*\n)*- logo\.png: binary/);
    assert.match(md, /## Totals\n/);
    assert.match(md, new RegExp(`- jobs: ${report.totals.jobs} \\(`));
    assert.equal(run.stdout, md);
    assert.match(run.stderr, /report written to report\.json, report\.md/);
  });
});

describe('ask usage errors', () => {
  const usage = async (args: string[], pattern: RegExp) => {
    const r = await runCli(['ask', ...args], 120_000);
    assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}\n${r.stderr}`);
    assert.match(r.stderr, pattern);
    assert.equal(r.stdout, '');
  };

  test('no questions', () => usage([DOCS], /no questions/));
  test('blank questions only', () => usage(['-q', '  ', DOCS], /no questions/));
  test('--out with another extension', () => usage(['-q', 'hi', '--out', 'r.txt', DOCS], /--out r\.txt: .*\.md.*\.json/));
  test('--out in a missing folder', () => usage(['-q', 'hi', '--out', path.join(DOCS, 'nope', 'r.md'), DOCS], /--out .*does not exist/));
  test('--out under a file', () => usage(['-q', 'hi', '--out', path.join(DOCS, 'billing.py', 'r.md'), DOCS], /--out .*r\.md: .*billing\.py is not a folder/));
  test('a missing path is named', () => usage(['-q', 'hi', path.join('test', 'no-such-folder-xyz')], /no such file or folder: test\/no-such-folder-xyz/));
  test('--backend-url without --backend-model', () => usage(['-q', 'hi', '--backend-url', 'http://127.0.0.1:9/v1', DOCS], /--backend-url needs --backend-model/));
  test('--backend-url that is not a URL', () => usage(['-q', 'hi', '--backend-url', 'not a url', '--backend-model', 'm', DOCS], /is not a URL/));
  test('--chunk-tokens below the minimum', () => usage(['-q', 'hi', '--chunk-tokens', '8', DOCS], /--chunk-tokens/));
  test('--out that is a folder', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-ask-outdir-'));
    temps.push(dir);
    fs.mkdirSync(path.join(dir, 'r.md'));
    return usage(['-q', 'hi', '--out', path.join(dir, 'r.md'), DOCS], /--out .*r\.md: that is a folder/);
  });
});

describe('ask keeps the report when --out cannot be written, and on SIGTERM', { timeout: 10 * 60_000 }, () => {
  test('a file that cannot be written: the report is on stdout, the file named, exit 1 (or refused before the run)', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-ask-out-'));
    temps.push(dir);
    fs.writeFileSync(path.join(dir, 'note.txt'), 'The lead maintainer is Dana Okafor.\n');
    // /proc takes no new files. As root the folder passes the writable check
    // and the write fails at the end; otherwise the run is refused up front.
    const r = await runCli(['ask', '-q', 'Who is the lead maintainer?', 'note.txt', '--max-tokens', '48', '--out', '/proc/mlx-batch-report.md'], 300_000, { cwd: dir });
    if (r.code === 2) {
      assert.match(r.stderr, /--out \/proc\/mlx-batch-report\.md: the folder \/proc is not writable/);
      return;
    }
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /--out \/proc\/mlx-batch-report\.md: could not write the report \(\w+\); it is on stdout above/);
    assert.match(r.stdout, /## Who is the lead maintainer\?/);
    assert.match(r.stdout, /## Totals/);
  });

  test('SIGTERM ends the run as Ctrl-C does: the partial report is written, exit 130', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-ask-term-'));
    temps.push(dir);
    fs.writeFileSync(path.join(dir, 'story.txt'), LONG_TEXT);
    const child = spawn(process.execPath, [
      path.join(ROOT, 'bin', 'mlx-batch.js'), 'ask', '-q', 'Retell every line in your own words.', 'story.txt', '--max-tokens', '400', '--out', 'partial.json',
    ], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let stderr = '';
    try {
      await new Promise<void>((resolve, reject) => {
        const overall = setTimeout(() => reject(new Error(`no job planned within 4 minutes:\n${stderr}`)), 4 * 60_000);
        child.stderr.on('data', (c) => {
          stderr += c;
          if (/^\d+ jobs?$/m.test(stderr)) {
            clearTimeout(overall);
            resolve();
          }
        });
      });
      assert.ok(child.kill('SIGTERM'));
      assert.equal(await exited, 130, stderr);
      assert.match(stderr, /interrupted \(SIGTERM\): cancelling the running jobs/);
      const report = JSON.parse(fs.readFileSync(path.join(dir, 'partial.json'), 'utf8')) as AskReport;
      assertStatesAddUp(report);
      assert.equal(report.cancelled, true);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    }
  });
});

describe('Ctrl-C during ask', { timeout: 20 * 60_000 }, () => {
  test('cancels the running jobs, keeps the finished ones, writes the partial report and exits 130', async () => {
    const dir = docsCopy('mlx-batch-ask-int-');
    // --batch 2: few jobs run at once, so most are still queued when the first one ends.
    // In a process group of its own, signalled as a whole below, as a terminal's Ctrl-C reaches the CLI and its sidecar.
    const child = spawn(process.execPath, [
      path.join(ROOT, 'bin', 'mlx-batch.js'), 'ask',
      '-q', 'Who is the lead maintainer?', '-q', 'What is the VAT rate?', '-q', 'Which port does the HTTP API listen on?',
      '.', '--batch', '2', '--max-tokens', '96', '--out', 'partial.json',
    ], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })));
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    try {
      // Wait for the first finished job ([k/N] state ...); if none comes, interrupt a while after the jobs were planned.
      const sawFinished = await new Promise<boolean>((resolve, reject) => {
        let fallback: NodeJS.Timeout | undefined;
        const overall = setTimeout(() => reject(new Error(`no jobs within 10 minutes:\n${stderr}`)), 10 * 60_000);
        const finish = (finished: boolean) => {
          clearTimeout(overall);
          clearTimeout(fallback);
          resolve(finished);
        };
        child.stderr.on('data', (c) => {
          stderr += c;
          if (/^\[\d+\/\d+\] /m.test(stderr)) finish(true);
          else if (fallback === undefined && /^\d+ jobs?$/m.test(stderr)) fallback = setTimeout(() => finish(false), 5 * 60_000);
        });
        void exited.then(({ code }) => reject(new Error(`ask exited (${code}) before it was interrupted:\n${stderr}`)));
      });
      const total = Number(/^(\d+) jobs?$/m.exec(stderr)?.[1]);
      assert.equal(total, 12, stderr);
      const interruptedAt = Date.now();
      assert.ok(child.pid !== undefined);
      process.kill(-child.pid, 'SIGINT');
      const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 120_000).unref());
      const ended = await Promise.race([exited, timeout]);
      assert.notEqual(ended, 'timeout', `no exit within 120 s of SIGINT:\n${stderr}`);
      assert.deepEqual(ended, { code: 130, signal: null }, stderr);
      const seconds = (Date.now() - interruptedAt) / 1000;
      assert.ok(seconds < 120, `exited ${seconds.toFixed(1)} s after SIGINT`);
      assert.match(stderr, /interrupted: cancelling the running jobs/);

      const file = path.join(dir, 'partial.json');
      assert.ok(fs.existsSync(file), `no partial.json:\n${stderr}`);
      const report = JSON.parse(fs.readFileSync(file, 'utf8')) as AskReport;
      assertStatesAddUp(report);
      assert.equal(report.totals.jobs, total, 'no job went missing');
      assert.equal(report.cancelled, true);
      assert.ok(report.totals.states.cancelled >= 1, JSON.stringify(report.totals.states));
      // The sidecar got the Ctrl-C too, and left it to the CLI: no running job died with it.
      assert.equal(report.totals.states.error, 0, JSON.stringify(allResults(report).filter((r) => r.state === 'error').map((r) => r.error)));
      for (const r of allResults(report).filter((r) => r.state === 'cancelled')) assert.ok(r.error, `${r.id}: cancelled without a reason`);
      // The jobs that had ended before Ctrl-C are in the report with their results.
      const endedBefore = [...stderr.split('interrupted:')[0].matchAll(/^\[\d+\/\d+\] (found|not_found|truncated|error)\S* (?:\(unverified\) )?q(\d+) (\S+):(\d+)-(\d+)/gm)];
      if (sawFinished) assert.ok(endedBefore.length >= 1, stderr);
      for (const m of endedBefore) {
        const [, state, q, file, start] = m;
        const r = report.questions[Number(q) - 1].results.find((x) => x.file === file && x.start_line === Number(start));
        assert.ok(r, `${m[0]} is in the report`);
        assert.equal(r.state, state, m[0]);
        if (state === 'found') assert.ok(r.answer, m[0]);
      }
      assert.match(stdout, /run cancelled/);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    }
  });
});
