// The seed benchmark's workload generator and exact scoring (no model needed).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

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
