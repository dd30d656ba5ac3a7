// `mlx-batch generate` on the default model, end to end through the sidecar.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { after, test } from 'node:test';

import { runCli } from './support/cli.js';
import { ROOT } from './support/fixtures.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-cli-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

// Eight prompts of quite different lengths.
const PROMPTS = [
  'Hi.',
  'What is the capital of France?',
  'List three fruits.',
  'Explain in one sentence what a compiler does.',
  'Write a haiku about rain.',
  'Describe the water cycle for a ten year old, mentioning evaporation, condensation and precipitation.',
  'You are reviewing code. The function add(a, b) returns a - b. What is wrong with it and how would you fix it?',
  'Summarize: The quick brown fox jumps over the lazy dog. The dog does not react. The fox runs into the forest, ' +
    'where it meets a rabbit, and the two of them spend the afternoon looking for berries near the river.',
];

test('greedy outputs are identical with --batch 8 and --batch 1', async () => {
  const file = path.join(tmp, 'prompts.json');
  fs.writeFileSync(file, JSON.stringify(PROMPTS));
  const batched = await runCli(['generate', '--prompts-file', file, '--batch', '8', '--max-tokens', '40', '--json']);
  assert.equal(batched.code, 0, batched.stderr);
  const sequential = await runCli(['generate', '--prompts-file', file, '--batch', '1', '--max-tokens', '40', '--json']);
  assert.equal(sequential.code, 0, sequential.stderr);
  const a = JSON.parse(batched.stdout);
  const b = JSON.parse(sequential.stdout);
  assert.equal(a.results.length, 8);
  const lengths = new Set(a.results.map((r: { promptTokens: number }) => r.promptTokens));
  assert.ok(lengths.size >= 6, 'prompts of different lengths');
  for (let i = 0; i < 8; i++) {
    assert.equal(a.results[i].text, b.results[i].text, `prompt ${i + 1}: batch 8 vs batch 1`);
    assert.equal(a.results[i].generatedTokens, b.results[i].generatedTokens);
  }
  assert.equal(a.stats.batch, 8);
  assert.equal(b.stats.batch, 1);
});

test('the default model answers the capital of France with Paris, and --json reports the run', async () => {
  const r = await runCli(['generate', '--prompt', 'What is the capital of France?', '--prompt', 'Write a haiku about rain.',
    '--max-tokens', '48', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.match(out.results[0].text, /Paris/);
  for (const res of out.results) {
    assert.ok(res.promptTokens > 0);
    assert.ok(res.generatedTokens > 0 && res.generatedTokens <= 48);
    assert.ok(['stop', 'length'].includes(res.finishReason));
  }
  for (const key of ['prefillTokensPerSec', 'decodeTokensPerSec', 'wallSeconds', 'peakMemoryBytes']) {
    assert.ok(out.stats[key] > 0, `stats.${key} = ${out.stats[key]}`);
  }
  // The default weights of the device the engine reports: float32 on a CPU,
  // kept quantized on a GPU.
  assert.ok(['cpu', 'gpu'].includes(out.stats.device), `device ${out.stats.device}`);
  assert.match(out.stats.weights, out.stats.device === 'gpu' ? /^(quantized|as-stored)/ : /^float32$/);
});

test('sampled without --seed, the same prompt three times gives three draws; with --seed, prompts repeat as they did', async () => {
  const prompt = ['--prompt', 'Invent a word and define it.'];
  const args = ['generate', ...prompt, ...prompt, ...prompt, '--temp', '1.2', '--max-tokens', '12', '--json'];
  const unseeded = await runCli(args);
  assert.equal(unseeded.code, 0, unseeded.stderr);
  const texts = JSON.parse(unseeded.stdout).results.map((r: { text: string }) => r.text);
  assert.ok(new Set(texts).size > 1, `one seed for every prompt: ${JSON.stringify(texts)}`);
  const seeded = await runCli([...args, '--seed', '7']);
  const again = await runCli([...args, '--seed', '7']);
  assert.deepEqual(JSON.parse(seeded.stdout).results.map((r: { text: string }) => r.text),
    JSON.parse(again.stdout).results.map((r: { text: string }) => r.text));
});

test('a stop string cuts the text and ends the row', async () => {
  const r = await runCli(['generate', '--prompt', 'Count from 1 to 10, separated by commas.', '--stop', '5', '--max-tokens', '60', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const res = JSON.parse(r.stdout).results[0];
  assert.equal(res.finishReason, 'stop');
  assert.ok(!res.text.includes('5'), res.text);
  assert.ok(res.text.includes('4'), res.text);
});

test('a reader that closes the pipe early (| head) ends the run quietly, exit 0', async () => {
  const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'mlx-batch.js'), 'generate', '-p', 'Hi.', '--max-tokens', '8'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.destroy();
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  assert.equal(code, 0, stderr);
  assert.doesNotMatch(stderr, /EPIPE|at .*\.js:\d+/);
});
