// Token-bounded chunks with 1-based line ranges (pure functions, no model).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chunkLines, splitLines, type Chunk, type ChunkResult } from '../src/ask/chunk.js';

/** Chunks of a result that must have them. */
function chunksOf(result: ChunkResult): Chunk[] {
  assert.ok('chunks' in result, `expected chunks, got ${JSON.stringify(result)}`);
  return result.chunks;
}

/** Checks every invariant a caller relies on. */
function assertWellFormed(lines: string[], tokens: number[], chunks: Chunk[], budget: number, overlap: number): void {
  assert.equal(chunks[0].startLine, 1);
  assert.equal(chunks.at(-1)!.endLine, lines.length);
  for (const [i, c] of chunks.entries()) {
    assert.ok(c.startLine <= c.endLine, `chunk ${i} is empty`);
    assert.equal(c.text, lines.slice(c.startLine - 1, c.endLine).join('\n'));
    const sum = tokens.slice(c.startLine - 1, c.endLine).reduce((a, b) => a + b, 0);
    assert.equal(c.tokens, sum);
    assert.ok(c.tokens <= budget, `chunk ${i} has ${c.tokens} tokens, budget ${budget}`);
    if (i === 0) continue;
    const prev = chunks[i - 1];
    assert.ok(c.startLine > prev.startLine, 'no progress');
    assert.ok(c.endLine > prev.endLine, 'no new lines');
    assert.ok(c.startLine <= prev.endLine + 1, 'a gap between chunks');
    assert.ok(prev.endLine - c.startLine + 1 <= overlap, 'overlap too large');
  }
}

describe('splitLines', () => {
  test('splits on \\n, keeps \\r, and a final newline ends the last line', () => {
    assert.deepEqual(splitLines('a\r\nb\nc'), ['a\r', 'b', 'c']);
    assert.deepEqual(splitLines('a\nb\n'), ['a', 'b']);
    assert.deepEqual(splitLines('a\n\n'), ['a', '']);
    assert.deepEqual(splitLines(''), ['']);
    assert.deepEqual(splitLines('\n'), ['']);
  });
});

describe('chunkLines', () => {
  test('a file that fits is one chunk of all its lines', () => {
    const lines = ['one', 'two', 'three'];
    const chunks = chunksOf(chunkLines(lines, [2, 2, 2], { budget: 6 }));
    assert.deepEqual(chunks, [{ startLine: 1, endLine: 3, text: 'one\ntwo\nthree', tokens: 6 }]);
  });

  test('an empty file is one empty line', () => {
    assert.deepEqual(chunksOf(chunkLines([''], [0], { budget: 10 })), [{ startLine: 1, endLine: 1, text: '', tokens: 0 }]);
  });

  test('long files: chunks fit the budget, cover every line and overlap by at most overlapLines', () => {
    const lines = Array.from({ length: 200 }, (_, i) => `  line ${i + 1}`); // indented: no good cuts
    const tokens = lines.map((_, i) => 1 + (i % 5));
    for (const overlap of [0, 1, 3, 7]) {
      const chunks = chunksOf(chunkLines(lines, tokens, { budget: 40, overlapLines: overlap }));
      assert.ok(chunks.length > 5);
      assertWellFormed(lines, tokens, chunks, 40, overlap);
      // without good cut lines, each chunk but the last is filled to the budget
      for (const c of chunks.slice(0, -1)) assert.ok(c.tokens + tokens[c.endLine] > 40);
    }
  });

  test('the default overlap is 3 lines', () => {
    const lines = Array.from({ length: 30 }, (_, i) => `  x${i}`);
    const chunks = chunksOf(chunkLines(lines, lines.map(() => 1), { budget: 10 }));
    assert.deepEqual(
      chunks.map((c) => [c.startLine, c.endLine]),
      [
        [1, 10],
        [8, 17],
        [15, 24],
        [22, 30],
      ],
    );
  });

  test('a cut prefers the line before a top-level definition', () => {
    const lines = [
      'function a() {', // 1
      '  x();',
      '  y();',
      '  z();',
      '  q();',
      '}',
      '',
      'function b() {', // 8: the cut falls before it
      '', // 9: a cut after this blank line would keep more lines
      '  w();',
      '  v();',
      '}',
    ];
    const chunks = chunksOf(chunkLines(lines, lines.map(() => 1), { budget: 10, overlapLines: 0 }));
    assert.deepEqual(chunks.map((c) => [c.startLine, c.endLine]), [
      [1, 7],
      [8, 12],
    ]);
  });

  test('keyword lines count as definitions without a blank line before them', () => {
    const lines = ['# Title', 'text', 'text', 'text', 'text', '## Section', 'text', 'text', 'text', 'text'];
    const chunks = chunksOf(chunkLines(lines, lines.map(() => 1), { budget: 7, overlapLines: 1 }));
    assert.deepEqual(chunks.map((c) => [c.startLine, c.endLine]), [
      [1, 5],
      [5, 10],
    ]);
  });

  test('without a definition, a cut falls just after a blank line', () => {
    const lines = ['  a', '  b', '  c', '  d', '  e', '', '  f', '  g', '  h', '  i', '  j'];
    const chunks = chunksOf(chunkLines(lines, lines.map(() => 1), { budget: 8, overlapLines: 0 }));
    assert.deepEqual(chunks.map((c) => [c.startLine, c.endLine]), [
      [1, 6],
      [7, 11],
    ]);
  });

  test('a good line early in a chunk is not used: the chunk would be too small', () => {
    const lines = ['  a', '', 'def f():', '  b', '  c', '  d', '  e', '  f', '  g', '  h', '  i', '  j'];
    const chunks = chunksOf(chunkLines(lines, lines.map(() => 1), { budget: 10, overlapLines: 0 }));
    assert.deepEqual(chunks[0], { startLine: 1, endLine: 10, text: lines.slice(0, 10).join('\n'), tokens: 10 });
  });

  test('one line longer than the budget: tooLong with its 1-based line', () => {
    assert.deepEqual(chunkLines(['x'.repeat(10_000)], [5000], { budget: 100 }), { tooLong: { line: 1, tokens: 5000 } });
    assert.deepEqual(chunkLines(['a', 'b', 'c'], [1, 200, 1], { budget: 100 }), { tooLong: { line: 2, tokens: 200 } });
  });

  test('progress even when the overlap is as long as the chunks', () => {
    const lines = Array.from({ length: 20 }, (_, i) => `  ${i}`);
    const tokens = lines.map(() => 1);
    for (const budget of [1, 2, 3]) {
      const chunks = chunksOf(chunkLines(lines, tokens, { budget, overlapLines: 5 }));
      assertWellFormed(lines, tokens, chunks, budget, 5);
    }
    const one = chunksOf(chunkLines(lines, tokens, { budget: 1, overlapLines: 5 }));
    assert.equal(one.length, 20);
  });

  test('overlap shrinks so the next chunk still has room for a big line', () => {
    const lines = ['  a', '  b', '  c', '  d', '  big'];
    const tokens = [3, 3, 3, 3, 9];
    const chunks = chunksOf(chunkLines(lines, tokens, { budget: 12, overlapLines: 3 }));
    assertWellFormed(lines, tokens, chunks, 12, 3);
    assert.deepEqual(chunks.map((c) => [c.startLine, c.endLine]), [
      [1, 4],
      [4, 5],
    ]);
  });

  test('random files keep every invariant', () => {
    let seed = 7;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let round = 0; round < 200; round++) {
      const n = 1 + Math.floor(random() * 120);
      const lines = Array.from({ length: n }, () => (random() < 0.15 ? '' : random() < 0.2 ? 'def f():' : '    body'));
      const tokens = lines.map(() => Math.floor(random() * 12));
      const budget = 11 + Math.floor(random() * 50);
      const overlap = Math.floor(random() * 6);
      assertWellFormed(lines, tokens, chunksOf(chunkLines(lines, tokens, { budget, overlapLines: overlap })), budget, overlap);
    }
  });
});
