// The seed benchmark's workload generator and exact scoring (no model needed).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { describe, test } from 'node:test';

import type { AskBackend, CompletionRequest } from '../src/ask/backend.js';
import { endsInLoop, RepetitionGuard } from '../src/ask/backends/repetition-guard.js';
import { runAsk } from '../src/ask/pipeline.js';
import { untilChildIdle } from '../src/benchmark/mlx-lm-server.js';
import { ROOT } from './support/fixtures.js';
import { checkTargets, invalidAnswers, lengthCeiling, sweepRuns, targetRatios } from '../src/benchmark/report.js';
import { DEFAULT_SWEEP, parseSweepPlan, QUICK_SWEEP, sweepRunCount } from '../src/benchmark/sweep.js';
import type { MinionAnswer, MinionRun } from '../src/benchmark/types.js';
import { minionDocument, scoreAnswer } from '../src/benchmark/workload.js';

describe('minion workload', () => {
  test('the same seed and sizes give the same document and questions; another seed does not', () => {
    const a = minionDocument(7, 20, 15);
    assert.deepEqual(minionDocument(7, 20, 15), a);
    assert.notDeepEqual(minionDocument(8, 20, 15).text, a.text);
    assert.equal(a.sentences.length, 20);
    assert.equal(a.questions.length, 15);
    assert.equal(new Set(a.questions.map((q) => q.question)).size, 15, 'every question is its own job');
  });

  test('answers are in the document, absent questions ask about what it never names', () => {
    for (const [sentences, questions] of [[5, 20], [20, 20], [30, 5]] as const) {
      for (let seed = 1; seed <= 20; seed++) {
        const doc = minionDocument(seed, sentences, questions);
        assert.equal(doc.sentences.length, sentences);
        const absent = doc.questions.filter((q) => q.expected === null);
        assert.ok(absent.length >= Math.floor(questions / 4), `${seed}/${sentences}: about a quarter not found`);
        for (const q of doc.questions) {
          if (q.expected !== null) {
            assert.ok(doc.text.includes(q.expected), `${q.expected} is in the document`);
            // The right answer scores; the document's other facts of the same kind do not.
            assert.ok(scoreAnswer(q, q.expected));
          } else {
            assert.ok(q.missing && !doc.text.includes(q.missing), `${q.missing} is not in the document`);
            assert.ok(q.question.includes(q.missing));
          }
        }
      }
    }
  });

  test('long documents: every seed fills them (small pools fall back to other forms), and past the pools the error says so', () => {
    for (let seed = 0; seed <= 300; seed++) assert.equal(minionDocument(seed, 30, 20).sentences.length, 30, `seed ${seed}`);
    for (let seed = 0; seed < 20; seed++) assert.equal(minionDocument(seed, 120, 5).sentences.length, 120, `seed ${seed}`);
    assert.throws(() => minionDocument(1, 400, 5), /seed 1 gives no document of 400 sentences \(minion workload: ran out of distinct names\)/);
  });

  test('scoring: numbers as whole numbers, names as words, abstentions only for absent facts', () => {
    const year = { expected: '1987', kind: 'year' as const };
    assert.ok(scoreAnswer(year, '1987'));
    assert.ok(scoreAnswer(year, 'It was founded in 1987.'));
    assert.ok(!scoreAnswer(year, '19870'));
    assert.ok(!scoreAnswer(year, '1978'));
    assert.ok(!scoreAnswer(year, null));
    assert.ok(!scoreAnswer(year, 'not found'));

    const number = { expected: '4200', kind: 'number' as const };
    assert.ok(scoreAnswer(number, '4,200 people'));
    assert.ok(!scoreAnswer(number, '420'));

    const city = { expected: 'Kraków', kind: 'city' as const };
    assert.ok(scoreAnswer(city, 'Krakow'), 'accents do not matter');
    assert.ok(scoreAnswer(city, 'She was born in Kraków, Poland.'));
    assert.ok(!scoreAnswer(city, 'Krakowiak'));

    const name = { expected: 'Amara Quist', kind: 'name' as const };
    assert.ok(scoreAnswer(name, 'amara quist'));
    assert.ok(!scoreAnswer(name, 'Amara'), 'the whole name');

    const absent = { expected: null, kind: 'name' as const };
    for (const a of [null, '', 'null', 'Not found', 'The document does not mention it.', 'unknown']) assert.ok(scoreAnswer(absent, a), String(a));
    for (const a of ['Amara Quist', '1987']) assert.ok(!scoreAnswer(absent, a), a);
  });

  test('bad sizes are refused with the reason', () => {
    assert.throws(() => minionDocument(1, 0, 5), /sentences must be a positive integer/);
    assert.throws(() => minionDocument(1, 5, 1.5), /questions must be a positive integer/);
  });
});

describe('repetition guard', () => {
  test('a reply ending in a loop is caught; varied text and short repeats are not', () => {
    const loop = '1. The answer is 1. ' + 'The document is in JSON format. '.repeat(6);
    assert.equal(endsInLoop(loop), true);
    assert.equal(endsInLoop('aaaa'), false, 'too short to call a loop');
    const numbered = Array.from({ length: 30 }, (_, i) => `${i + 9}. In which year did Nikolai Brennan born?`).join('\n');
    assert.equal(endsInLoop(`1. In which city was Hugo born?\n${numbered}`, 24), true, 'a numbered list of one line, 30 times');
    assert.equal(endsInLoop(numbered.split('\n').slice(0, 20).join('\n'), 24), false, '20 times is not a loop when 24 make one');
    // A valid packed reply of 20 like items is not a loop when lists of 20 are asked for.
    const packed = `{"answers": [${Array.from({ length: 20 }, (_, i) => i % 2 ? '{"answer": null}' : `{"answer": "${2000 + i}"}`).join(', ')}]}`;
    assert.equal(endsInLoop(packed, 24), false);
    assert.equal(endsInLoop('{"answers": [' + '{"answer": null}, '.repeat(20), 24), false);
    assert.equal(endsInLoop('{"answers": [' + '{"answer": null}, '.repeat(30), 24), true);
    const varied = 'The Larkspur project is due to finish in 2003. Rosalind Quist leads it from Adelaide, where the team of 57 people works. ' +
      'Bastian Kowalczyk was born in Lyon in 1971 and joined Kestrel Biotech in 2013, the year the Saffron project began.';
    assert.equal(endsInLoop(varied), false);
    // Short units caught inside a 120-character answer field (from the minions run at e95cad2).
    assert.equal(endsInLoop('{"answer": "2019-01-01 (1993) (1993-01-01 (2019-01-01 (2019-01-01 (2019-01-01 (2019-01-01 ('), true);
    assert.equal(endsInLoop('{"answer": "); 2003; 2003; 2013; 57; 2003; 2013; 2003; 2013; 2003; 2013; 2003; 2013;'), true);
    assert.equal(endsInLoop('{"answer": "ports 8080, 8081, 8082, 8083, 8084, 8085, 8086, 8087, 8088, 8089'), false, 'a list of numbers is text');
    assert.equal(endsInLoop('{"answer": "2019-01-01, 2019-06-01, 2020-01-01, 2020-06-01, 2021-01-01'), false, 'a list of dates is text');
    assert.equal(endsInLoop('{"citation": "' + '-'.repeat(80)), false, 'a rule line is text');
    assert.equal(endsInLoop('{"citation": "' + ' '.repeat(64) + 'return x;'), false, 'indentation is text');
  });

  /** A backend that streams the pieces `reply` picks for a request, one token each, until aborted. */
  const scriptedBackend = (reply: (r: CompletionRequest) => string[]): AskBackend => ({
    label: 'scripted', model: 'm', contextLength: 4096, concurrency: 2,
    countTokens: async (items) => items.map((i) => Math.ceil(JSON.stringify(i).length / 4)),
    complete: async (r) => {
      const pieces = reply(r);
      let sent = 0;
      for (const p of pieces) {
        if (r.signal?.aborted) return { text: pieces.slice(0, sent).join(''), finishReason: 'cancelled', promptTokens: 50, cachedTokens: 0, generatedTokens: sent };
        r.onDelta?.(p, 1);
        sent++;
      }
      return { text: pieces.join(''), finishReason: 'stop', promptTokens: 50, cachedTokens: 0, generatedTokens: sent };
    },
  });

  test('the guard stops a looping reply as a loop with its tokens, and passes others through', async () => {
    const backend = (pieces: string[]) => scriptedBackend(() => pieces);
    const looping = await new RepetitionGuard(backend(Array(200).fill('The document is in JSON format. '))).complete({ id: 'a', messages: [], maxTokens: 500, temperature: 0 });
    assert.equal(looping.finishReason, 'loop');
    assert.match(looping.error ?? '', /repeats itself/);
    assert.ok(looping.generatedTokens > 0 && looping.generatedTokens < 20, `stopped early: ${looping.generatedTokens}`);
    const fine = await new RepetitionGuard(backend(['{"answer": ', '"2013"}'])).complete({ id: 'b', messages: [], maxTokens: 500, temperature: 0 });
    assert.deepEqual([fine.finishReason, fine.text, fine.generatedTokens], ['stop', '{"answer": "2013"}', 2]);
  });

  test('the ask pipeline cuts a looping answer itself: that job ends truncated, not retried; the others are judged', async () => {
    const looping = '{"answer": "2019 (' + '2019-01-02 (2019)) ('.repeat(60);
    const scripted = scriptedBackend((r) => JSON.stringify(r.messages).includes('finish')
      ? looping.match(/.{1,8}/g)!
      : ['{"answer": "Lyon", ', '"quote": "born in Lyon", ', '"explanation": ""}']);
    const report = await runAsk(scripted, {
      questions: ['Where was Bastian born?', 'When does the project finish?'],
      sources: [{ path: 'notes.md', text: 'Bastian Kowalczyk was born in Lyon in 1971.\n' }],
      maxTokens: 1000,
    });
    const [born, finish] = report.questions.map((q) => q.results[0]);
    assert.equal(born.state, 'found');
    assert.equal(finish.state, 'truncated');
    assert.equal(finish.truncated_by, 'loop');
    assert.match(finish.error ?? '', /repeats itself/);
    assert.equal(finish.attempts, 1, 'a loop is not retried');
    assert.ok(finish.generated_tokens < 30, `cut early, not at the cap: ${finish.generated_tokens} of ${looping.length / 8} pieces`);
  });
});

describe('sweep plans from outside', () => {
  test('a valid plan is taken as given; anything out of range or unknown is refused', () => {
    assert.deepEqual(parseSweepPlan(QUICK_SWEEP), QUICK_SWEEP);
    assert.deepEqual(parseSweepPlan({ ...QUICK_SWEEP, tokensPerAnswer: undefined }), { ...QUICK_SWEEP, tokensPerAnswer: DEFAULT_SWEEP.tokensPerAnswer });
    for (const bad of [undefined, null, 'quick', { ...QUICK_SWEEP, sizes: [] }, { ...QUICK_SWEEP, sizes: [0] }, { ...QUICK_SWEEP, contexts: [1.5] },
      { ...QUICK_SWEEP, modes: ['packed', 'both'] }, { ...QUICK_SWEEP, contextSweepSize: 100 }, { ...QUICK_SWEEP, tokensPerAnswer: -1 },
      { ...QUICK_SWEEP, targetRepeats: 0 }, { ...QUICK_SWEEP, targetRepeats: 2.5 }]) {
      assert.equal(parseSweepPlan(bad), undefined, JSON.stringify(bad));
    }
    assert.equal(parseSweepPlan({ ...QUICK_SWEEP, targetRepeats: undefined })!.targetRepeats, DEFAULT_SWEEP.targetRepeats);
  });

  // A run of the 5x target's cell (channels, 20 sentences, 20 questions), one second long.
  const targetCellRun = (client: string, tokensPerS: number, more: Partial<MinionRun> = {}): MinionRun => ({
    client, mode: 'channels', context: 20, size: 20, wall_s: 1, prompt_tokens: 0, cached_tokens: 0, prefilled_tokens: 0,
    generated_tokens: tokensPerS, tokens_per_s: tokensPerS, latency_p50_s: 1, latency_p95_s: 1, json_valid_rate: 1, accuracy: 1, answers: [],
    requests: [], ...more,
  });

  test('the 5x target is the median of its paired runs; the repeats add runs only where both clients run', () => {
    const run = (client: string, tokensPerS: number, repeat?: number) =>
      targetCellRun(client, tokensPerS, repeat === undefined ? {} : { repeat });
    const runs = [run('sequential', 100), run('batched', 400), run('batched', 520, 1), run('sequential', 100, 1), run('sequential', 80, 2), run('batched', 480, 2)];
    const target = targetRatios(runs, DEFAULT_SWEEP);
    assert.deepEqual(target.pairs.map((p) => p.ratio), [4, 5.2, 6]);
    assert.equal(target.median, 5.2);
    const check = checkTargets(runs, DEFAULT_SWEEP)[0];
    assert.equal(check.met, true);
    assert.match(check.detail, /^median 5\.20× over 3 runs of each, back to back: 400\.0 vs 100\.0 tok\/s \(4\.00×\)/);
    assert.equal(sweepRuns(runs).length, 2);
    // Default plan: 14 cells (the 20 x 5 cell counts once) per client, and two more runs of the target cell per repeat.
    assert.equal(sweepRunCount(DEFAULT_SWEEP, ['sequential', 'batched', 'server']), 14 * 3 + 2 * 2);
    assert.equal(sweepRunCount(DEFAULT_SWEEP, ['batched', 'server']), 14 * 2);
    assert.equal(sweepRunCount({ ...DEFAULT_SWEEP, modes: ['packed'] }, ['sequential', 'batched']), 7 * 2);
  });

  test('runs that generated nothing count for no target: no Infinity, no 0% against 0%', () => {
    // A server that was down: every request failed, nothing generated.
    const down = (client: string, mode: 'packed' | 'channels') => targetCellRun(client, 0, { mode, accuracy: 0 });
    const runs = [targetCellRun('sequential', 0), targetCellRun('batched', 400), down('server', 'channels'),
      targetCellRun('batched', 300, { mode: 'packed' }), down('server', 'packed')];
    const [five, server, accuracy] = checkTargets(runs, DEFAULT_SWEEP);
    assert.equal(five.met, null, five.detail);
    assert.doesNotMatch(five.detail, /Infinity|NaN/);
    assert.equal(server.met, null, server.detail);
    assert.match(server.detail, /^not measured; 2 cells left out: a client generated nothing there/);
    // batched channels against batched packed is measured; the server's 0% against 0% is not.
    assert.match(accuracy.detail, /^all 1 cells/);
  });

  test('the answers\' lengths bound the batch: the ceiling and the share an extra row may cost', () => {
    const req = (generated_tokens: number) => ({ prompt_tokens: 10, cached_tokens: 0, generated_tokens });
    // The seed cell's lengths in bench/results/minions.json at 613403f.
    const seed = [26, 31, 32, 32, 33, 36, 36, 51, 70, 71, 71, 72, 81, 81, 90, 91, 92, 93, 128, 193].map(req);
    const c = lengthCeiling({ requests: seed }, 5)!;
    assert.deepEqual([c.shortest, c.longest, c.sum], [26, 193, 1410]);
    assert.ok(Math.abs(c.ceiling - 1410 / 193) < 1e-9);
    // 1410a = 5(193a + 1217b) at b = a · 445 / 6085.
    assert.ok(Math.abs(c.rowShare - 445 / 6085) < 1e-9);
    // Equal lengths: only the extra rows' cost stands between the batch and n×.
    assert.ok(Math.abs(lengthCeiling({ requests: [req(50), req(50), req(50), req(50)] }, 2)!.rowShare - 1 / 3) < 1e-9);
    // One answer as long as the others together: 5× cannot happen however cheap rows are.
    assert.ok(lengthCeiling({ requests: [req(10), req(20), req(30)] }, 5)!.rowShare <= 0);
    assert.equal(lengthCeiling({ requests: [] }, 5), undefined);

    const run = (client: string, tokensPerS: number) => targetCellRun(client, tokensPerS, { generated_tokens: 1410, requests: seed });
    const check = checkTargets([run('sequential', 100), run('batched', 300)], DEFAULT_SWEEP)[0];
    assert.equal(check.met, false);
    assert.match(check.detail, /^300\.0 vs 100\.0 tok\/s \(3\.00×\)\. Answers 26-193 tokens, 1410 in all: .* at most 7\.3× as fast .* at most 1\/13\.7 of one row's step$/);
  });

  test('answers that are not valid are counted by reason per client and mode, the repeats left out', () => {
    const answer = (valid: boolean, ended: MinionAnswer['ended'], error?: string): MinionAnswer =>
      ({ question: 'q', expected: 'x', answer: null, valid, ended, correct: false, latency_s: 1, ...(error ? { error } : {}) });
    const run = (client: string, answers: MinionAnswer[], repeat?: number): MinionRun => ({
      client, mode: 'channels', context: 5, size: answers.length, wall_s: 1, prompt_tokens: 0, cached_tokens: 0, prefilled_tokens: 0,
      generated_tokens: 1, tokens_per_s: 1, latency_p50_s: 1, latency_p95_s: 1, json_valid_rate: 0, accuracy: 0, answers,
      requests: [], ...(repeat === undefined ? {} : { repeat }),
    });
    const prose = 'the reply is not a JSON object: "The answer is: 42."';
    const runs = [
      run('server', [answer(false, 'stop', prose), answer(false, 'loop', 'the reply repeats itself; stopped after 99 tokens'), answer(false, 'stop', prose)]),
      run('server', [answer(false, 'stop', 'the reply has no "answer": {}'), answer(false, 'length'), answer(false, 'error', 'HTTP 500')]),
      run('batched', [answer(true, 'stop'), answer(true, 'stop')]),
      run('batched', [answer(false, 'loop')], 1),
    ];
    assert.deepEqual(invalidAnswers(runs), [
      { client: 'server', mode: 'channels', answers: 6, invalid: 6, example: '"The answer is: 42."',
        reasons: [['not the JSON asked for', 2], ['fell into a loop', 1], ['JSON of the wrong shape', 1], ['cut at the output cap', 1], ['failed', 1]] },
      { client: 'batched', mode: 'channels', answers: 2, invalid: 0, reasons: [] },
    ]);
  });
});

describe('peer servers between runs', () => {
  // A real child: busy for `busyMs`, then asleep.
  const child = (busyMs: number) => spawn(process.execPath,
    ['-e', `const end = Date.now() + ${busyMs}; while (Date.now() < end); setTimeout(() => {}, 20000);`], { stdio: 'ignore' });

  test('a server process is waited for while it works, and not once it is idle', { skip: process.platform !== 'linux' && 'reads /proc' }, async () => {
    const busy = child(2500);
    const idle = child(0);
    try {
      await new Promise((r) => setTimeout(r, 300)); // both started
      let t = performance.now();
      await untilChildIdle(busy);
      const waited = performance.now() - t;
      assert.ok(waited >= 1500 && waited < 6000, `waited ${waited.toFixed(0)} ms for a process busy about 2.2 s more`);
      t = performance.now();
      await untilChildIdle(idle);
      const quiet = performance.now() - t;
      assert.ok(quiet < 700, `waited ${quiet.toFixed(0)} ms for an idle process`);
    } finally {
      busy.kill();
      idle.kill();
    }
  });

  test('a peer server dies with the process that started it, even on process.exit', async () => {
    // The parent exits at once (a second Ctrl-C does): its 'finally' that stops servers never runs.
    const script = `const { spawn } = require('node:child_process');
      const { tiedToThisProcess } = require(${JSON.stringify(path.join(ROOT, 'src', 'benchmark', 'mlx-lm-server.ts'))});
      const c = tiedToThisProcess(spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' }));
      console.log(c.pid);
      setTimeout(() => process.exit(130), 200);`;
    const parent = spawn(process.execPath, ['--import', 'tsx', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    parent.stdout.on('data', (c) => (out += c));
    assert.equal(await new Promise((r) => parent.once('exit', r)), 130);
    const pid = Number(out.trim());
    assert.ok(pid > 0, out);
    const alive = () => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    for (let t = 0; alive() && t < 5000; t += 50) await new Promise((r) => setTimeout(r, 50));
    assert.equal(alive(), false, `the server ${pid} outlived its parent`);
  });
});
