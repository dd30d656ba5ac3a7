// src/extension/webview-protocol.ts: what the webview posts is untrusted (it
// renders model text), so parseFromWebview accepts exactly the typed messages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseFromWebview, type FromWebview } from '../src/extension/webview-protocol.js';

const VALID: FromWebview[] = [
  { type: 'ready' },
  { type: 'select', runId: 'r1' },
  { type: 'openFile', file: 'src/a.ts', startLine: 1, endLine: 1, runId: 'r1' },
  { type: 'openFile', file: 'dir with space/ü.md', startLine: 10, endLine: 42, runId: 'r1' },
  { type: 'copy', text: 'the answer' },
  { type: 'copy', text: '' },
  { type: 'rerunJob', runId: 'r1', jobId: 'q0:src/a.ts:1-40' },
  { type: 'rerunFailed', runId: 'r1' },
  { type: 'cancel', runId: 'r1' },
  { type: 'export', runId: 'r1', format: 'markdown' },
  { type: 'export', runId: 'r1', format: 'json' },
  { type: 'export', runId: 'r1', format: 'csv' },
  { type: 'deleteRun', runId: 'r1' },
];

test('accepts every valid message, unchanged', () => {
  for (const m of VALID) assert.deepEqual(parseFromWebview(structuredClone(m)), m, JSON.stringify(m));
});

test('drops fields a message does not have', () => {
  assert.deepEqual(parseFromWebview({ type: 'ready', extra: '<script>' }), { type: 'ready' });
  assert.deepEqual(parseFromWebview({ type: 'cancel', runId: 'r', jobId: 'x', evil: true }), { type: 'cancel', runId: 'r' });
  const open = parseFromWebview({ type: 'openFile', file: 'a', startLine: 2, endLine: 3, runId: 'r', command: 'rm -rf' });
  assert.deepEqual(open, { type: 'openFile', file: 'a', startLine: 2, endLine: 3, runId: 'r' });
});

test('rejects what is not an object or has an unknown type', () => {
  for (const v of [undefined, null, 0, 1, '', 'ready', true, [], [{ type: 'ready' }], {}, { type: 'nope' }, { type: 'READY' }, { type: 1 }, { type: null }, { kind: 'ready' }, { type: 'runs' }, { type: 'toString' }, { type: '__proto__' }]) {
    assert.equal(parseFromWebview(v), undefined, JSON.stringify(v));
  }
});

test('rejects missing fields and wrong types', () => {
  const bad: unknown[] = [
    { type: 'select' },
    { type: 'select', runId: 1 },
    { type: 'select', runId: null },
    { type: 'rerunFailed' },
    { type: 'cancel', runId: ['r'] },
    { type: 'deleteRun', runId: { id: 'r' } },
    { type: 'copy' },
    { type: 'copy', text: 5 },
    { type: 'copy', text: null },
    { type: 'rerunJob', runId: 'r' },
    { type: 'rerunJob', jobId: 'j' },
    { type: 'rerunJob', runId: 'r', jobId: 7 },
    { type: 'export', runId: 'r' },
    { type: 'export', runId: 'r', format: 'pdf' },
    { type: 'export', runId: 'r', format: 'MARKDOWN' },
    { type: 'export', format: 'json' },
    { type: 'openFile', startLine: 1, endLine: 1, runId: 'r' },
    { type: 'openFile', file: 'a', endLine: 1, runId: 'r' },
    { type: 'openFile', file: 'a', startLine: 1, runId: 'r' },
    { type: 'openFile', file: 'a', startLine: 1, endLine: 1 },
    { type: 'openFile', file: 3, startLine: 1, endLine: 1, runId: 'r' },
    { type: 'openFile', file: 'a', startLine: '1', endLine: 1, runId: 'r' },
    { type: 'openFile', file: 'a', startLine: 1, endLine: '2', runId: 'r' },
  ];
  for (const v of bad) assert.equal(parseFromWebview(v), undefined, JSON.stringify(v));
});

test('rejects line numbers below 1 or not integers', () => {
  for (const [startLine, endLine] of [
    [0, 1],
    [1, 0],
    [-1, 5],
    [1.5, 2],
    [1, 2.25],
    [Number.NaN, 1],
    [1, Number.POSITIVE_INFINITY],
    [Number.NEGATIVE_INFINITY, 1],
  ]) {
    const v = { type: 'openFile', file: 'a.ts', startLine, endLine, runId: 'r' };
    assert.equal(parseFromWebview(v), undefined, `${startLine}-${endLine}`);
  }
});
