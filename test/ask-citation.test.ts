// Locating a model's quote in a chunk and mapping it to file lines (pure functions, no model).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { locateQuote } from '../src/ask/citation.js';

const CHUNK = [
  'import fs from "node:fs";', // 1
  '',
  'export function readConfig(path: string) {', // 3
  '  const text = fs.readFileSync(path, "utf8");',
  '  return JSON.parse(text);', // 5
  '}',
  '',
  'export function retry(times: number) {', // 8
  '  for (let i = 0; i < times; i++) attempt();',
  '  return JSON.parse(text);', // 10: the same line as 5
  '}',
].join('\n');

describe('locateQuote', () => {
  test('an exact quote', () => {
    assert.deepEqual(locateQuote(CHUNK, 1, 'const text = fs.readFileSync(path, "utf8");'), { startLine: 4, endLine: 4, exact: true });
    assert.deepEqual(locateQuote(CHUNK, 1, 'readConfig'), { startLine: 3, endLine: 3, exact: true });
  });

  test('whitespace changes still match exactly: newlines, spaces, indentation', () => {
    assert.deepEqual(locateQuote(CHUNK, 1, 'export function readConfig(path: string) { const text = fs.readFileSync(path,   "utf8");'), {
      startLine: 3,
      endLine: 4,
      exact: true,
    });
    assert.deepEqual(locateQuote(CHUNK, 1, '    return JSON.parse(text);\n\t}'), { startLine: 5, endLine: 6, exact: true });
  });

  test('a multi-line quote gives its first and last lines', () => {
    const quote = 'const text = fs.readFileSync(path, "utf8");\n  return JSON.parse(text);\n}';
    assert.deepEqual(locateQuote(CHUNK, 1, quote), { startLine: 4, endLine: 6, exact: true });
  });

  test('a quote that occurs twice maps to its first occurrence', () => {
    assert.deepEqual(locateQuote(CHUNK, 1, 'return JSON.parse(text);'), { startLine: 5, endLine: 5, exact: true });
  });

  test('firstLine offsets the lines', () => {
    assert.deepEqual(locateQuote(CHUNK, 101, 'export function retry'), { startLine: 108, endLine: 108, exact: true });
  });

  test('a quote with a typo matches fuzzily', () => {
    assert.deepEqual(locateQuote(CHUNK, 1, 'for (let i = 0; i < times; i++) atempt();'), { startLine: 9, endLine: 9, exact: false });
    // a changed letter, across lines, in other case
    assert.deepEqual(locateQuote(CHUNK, 1, 'Export function retry(times: numbor) {\nfor (let i = 0;'), {
      startLine: 8,
      endLine: 9,
      exact: false,
    });
  });

  test('a quote that is not there is undefined', () => {
    assert.equal(locateQuote(CHUNK, 1, 'process.exit(1)'), undefined);
    assert.equal(locateQuote(CHUNK, 1, 'export function writeConfig(file: Buffer)'), undefined);
  });

  test('quote marks and ellipses around the quote are dropped', () => {
    assert.deepEqual(locateQuote(CHUNK, 1, '"return JSON.parse(text);"'), { startLine: 5, endLine: 5, exact: true });
    assert.deepEqual(locateQuote(CHUNK, 1, '`retry(times: number)`'), { startLine: 8, endLine: 8, exact: true });
    assert.deepEqual(locateQuote(CHUNK, 1, '“...const text = fs.readFileSync…”'), { startLine: 4, endLine: 4, exact: true });
    assert.deepEqual(locateQuote(CHUNK, 1, "'… attempt(); ...'"), { startLine: 9, endLine: 9, exact: true });
  });

  test('another number is never a match: not by a near match, not by cutting a number short', () => {
    const file = 'retries: 3\ntimeout: 45\nport = 8080';
    for (const wrong of ['timeout: 46', 'port = 9080', 'port = 8081', 'retries: 5', 'timeout: 4', 'port = 808']) {
      assert.equal(locateQuote(file, 1, wrong), undefined, wrong);
    }
    assert.deepEqual(locateQuote(file, 1, 'timeout: 45'), { startLine: 2, endLine: 2, exact: true });
    assert.deepEqual(locateQuote(file, 1, 'Timeout: 45'), { startLine: 2, endLine: 2, exact: false });
    // A later occurrence that is whole still counts.
    assert.deepEqual(locateQuote('limit 45\nlimit 4', 1, 'limit 4'), { startLine: 2, endLine: 2, exact: true });
  });

  test('a decimal or grouped number cut short is no match; a full stop after a number is no cut', () => {
    const file = 'retries = 3\ntimeout_seconds = 45.5\nprice = 1,250\nwait 1.5 s\nThe limit is 45. Then stop.';
    for (const wrong of ['timeout_seconds = 45', 'timeout_seconds = 45.', 'price = 1', 'price = 1,', '5 s', '.5 s']) {
      assert.equal(locateQuote(file, 1, wrong), undefined, wrong);
    }
    assert.deepEqual(locateQuote(file, 1, 'timeout_seconds = 45.5'), { startLine: 2, endLine: 2, exact: true });
    assert.deepEqual(locateQuote(file, 1, 'price = 1,250'), { startLine: 3, endLine: 3, exact: true });
    assert.deepEqual(locateQuote(file, 1, 'The limit is 45'), { startLine: 5, endLine: 5, exact: true });
  });

  test('a blockquote, list or heading marker the model put before its quote does not move it to the line before', () => {
    const md = '## Maintainers\nThe lead maintainer is Dana Okafor.\n';
    for (const marked of ['> The lead maintainer is Dana Okafor.', '* The lead maintainer is Dana Okafor.', '- > The lead maintainer is Dana Okafor.']) {
      assert.deepEqual(locateQuote(md, 1, marked), { startLine: 2, endLine: 2, exact: true }, marked);
    }
    assert.deepEqual(locateQuote('class Config:\n    timeout = 45\n', 1, '# timeout = 45'), { startLine: 2, endLine: 2, exact: true });
    assert.deepEqual(locateQuote('server:\n  host: 0.0.0.0\n  port: 8080\n', 1, '- port: 8080'), { startLine: 3, endLine: 3, exact: true });
    // A marker that is in the file is matched with it.
    assert.deepEqual(locateQuote('intro\n- port: 8080\n', 1, '- port: 8080'), { startLine: 2, endLine: 2, exact: true });
  });

  test('a short quote must match as written (case aside): one edit would match it almost anywhere', () => {
    assert.equal(locateQuote('retries: 3\ntimeout: 45', 1, 'yes'), undefined);
    assert.deepEqual(locateQuote('Answer: YES', 1, 'yes'), { startLine: 1, endLine: 1, exact: false });
  });

  test('composed and decomposed accents are the same letters', () => {
    const decomposed = 'The maintainer is Jose\u0301 Garci\u0301a.\nOther line.';
    assert.deepEqual(locateQuote(decomposed, 1, 'José García'), { startLine: 1, endLine: 1, exact: true });
    assert.deepEqual(locateQuote('José García\nnext', 1, 'Jose\u0301 Garci\u0301a'), { startLine: 1, endLine: 1, exact: true });
  });

  test('a quote of fewer than 3 characters anchors nothing', () => {
    assert.equal(locateQuote(CHUNK, 1, 'fs'), undefined);
    assert.equal(locateQuote(CHUNK, 1, ' "{ }" '), undefined);
    assert.equal(locateQuote(CHUNK, 1, ''), undefined);
    assert.deepEqual(locateQuote(CHUNK, 1, 'i++'), { startLine: 9, endLine: 9, exact: true });
  });

  test('a match never starts on the line before or ends on the line after', () => {
    // The fuzzy span must not take in the newline of a neighbouring line.
    const text = 'alpha\n\n  beta gamma delta\n\nomega';
    assert.deepEqual(locateQuote(text, 1, 'beta gamma delts'), { startLine: 3, endLine: 3, exact: false });
  });

  test('long quotes: the span reaches the end of the quote', () => {
    const lines = Array.from({ length: 60 }, (_, i) => `  statement_number_${i}(argument);`);
    const text = lines.join('\n');
    const quote = lines.slice(10, 40).join(' ').replace('statement_number_20', 'statement_nunber_20');
    assert.ok(quote.length > 400);
    assert.deepEqual(locateQuote(text, 1, quote), { startLine: 11, endLine: 40, exact: false });
  });

  test('fuzzy matching in a large chunk is fast', () => {
    const lines = Array.from({ length: 1000 }, (_, i) => `line ${i}: value = compute(${i}) + offset;`);
    const text = lines.join('\n');
    assert.ok(text.length > 35_000);
    const quote = lines.slice(900, 910).join('\n').replace('compute(905)', 'compte(905)');
    const started = performance.now();
    assert.deepEqual(locateQuote(text, 1, quote), { startLine: 901, endLine: 910, exact: false });
    assert.ok(performance.now() - started < 2000);
  });
});
