// Stop strings and streaming hold-back in the batch generator (pure functions, no engine).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findStop, holdBackLength, StopTextBuffer } from '../src/engine/stop-text.js';

test('findStop finds the leftmost occurrence of any stop string', () => {
  assert.equal(findStop('hello world', []), undefined);
  assert.equal(findStop('hello world', ['xyz']), undefined);
  assert.deepEqual(findStop('hello world', ['world', 'o']), { index: 4, stop: 'o' });
  assert.deepEqual(findStop('a\n\nb', ['\n\n']), { index: 1, stop: '\n\n' });
  // same start: the longer stop wins
  assert.deepEqual(findStop('abcd', ['ab', 'abc']), { index: 0, stop: 'abc' });
  // empty stops are ignored
  assert.equal(findStop('abc', ['']), undefined);
  // `from` skips earlier text
  assert.deepEqual(findStop('xx yy xx', ['xx'], 1), { index: 6, stop: 'xx' });
});

test('holdBackLength holds back a proper prefix of a stop string at the end', () => {
  assert.equal(holdBackLength('hello', []), 0);
  assert.equal(holdBackLength('hello', ['</s>']), 0);
  assert.equal(holdBackLength('hello <', ['</s>']), 1);
  assert.equal(holdBackLength('hello </', ['</s>']), 2);
  // a complete stop string is findStop's business, not hold-back's
  assert.equal(holdBackLength('hello </s>', ['</s>']), 0);
  assert.equal(holdBackLength('ab', ['abc', 'b']), 2);
  assert.equal(holdBackLength('x', ['']), 0);
  // repeated characters: the longest matching prefix
  assert.equal(holdBackLength('aaa', ['aaab']), 3);
});

function stream(pieces: string[], stops: string[]) {
  const buf = new StopTextBuffer(stops);
  const out: string[] = [];
  for (const p of pieces) {
    out.push(buf.push(p));
    if (buf.stopped) break;
  }
  out.push(buf.flush());
  return { out, text: buf.text, stopped: buf.stopped, stop: buf.stop };
}

test('StopTextBuffer without stops releases everything at once', () => {
  const r = stream(['Hel', 'lo', ''], []);
  assert.deepEqual(r.out, ['Hel', 'lo', '', '']);
  assert.equal(r.text, 'Hello');
  assert.equal(r.stopped, false);
});

test('StopTextBuffer cuts before a stop string split across pieces and never shows it', () => {
  const r = stream(['Answer: 4', '2<', '/', 's>', ' more'], ['</s>']);
  assert.equal(r.text, 'Answer: 42');
  assert.equal(r.stopped, true);
  assert.equal(r.stop, '</s>');
  assert.equal(r.out.join(''), 'Answer: 42');
  // '<' and '/' were held back, not shown early
  assert.deepEqual(r.out, ['Answer: 4', '2', '', '', '']);
});

test('StopTextBuffer releases held-back text when it turns out not to be a stop', () => {
  const buf = new StopTextBuffer(['</s>']);
  assert.equal(buf.push('a <'), 'a ');
  assert.equal(buf.push('/'), '');
  assert.equal(buf.push('b'), '</b');
  assert.equal(buf.stopped, false);
  assert.equal(buf.push('<'), '');
  assert.equal(buf.flush(), '<');
  assert.equal(buf.text, 'a </b<');
});

test('StopTextBuffer: a stop inside one piece, text after it dropped', () => {
  const r = stream(['one\n\ntwo'], ['\n\n']);
  assert.deepEqual(r.out, ['one', '']);
  assert.equal(r.text, 'one');
});

test('StopTextBuffer: stop at the very start gives empty text', () => {
  const r = stream(['STOP', 'x'], ['STOP']);
  assert.equal(r.text, '');
  assert.equal(r.out.join(''), '');
  assert.equal(r.stopped, true);
});

test('StopTextBuffer: the earliest of several stops wins, even when found across checks', () => {
  // 'bc' completes in the second piece, but 'ab' (starting earlier) completed first
  const r = stream(['xa', 'bc'], ['bc', 'ab']);
  assert.equal(r.text, 'x');
  assert.equal(r.stop, 'ab');
  // overlapping prefixes: 'aab' with stop 'ab'
  const s = stream(['a', 'a', 'b'], ['ab']);
  assert.equal(s.text, 'a');
  assert.deepEqual(s.out, ['', 'a', '', '']);
});

test('StopTextBuffer: concatenated output always equals the final text', () => {
  const stops = ['END', '\n\n', 'ab'];
  const text = 'xxaEN a\nEND tail';
  for (let cut = 1; cut <= 4; cut++) {
    const pieces: string[] = [];
    for (let i = 0; i < text.length; i += cut) pieces.push(text.slice(i, i + cut));
    const r = stream(pieces, stops);
    assert.equal(r.out.join(''), r.text);
    assert.equal(r.text, 'xxaEN a\n');
  }
});
