// The OpenAI-compatible HTTP server (src/engine/http-server.ts).
//
// Part 1: pure parts and the server over a fake backend (no model, fast).
// Part 2: the real sidecar (default model, maxBatch 32) behind the server,
// driven by the official `openai` Python package (test/python/openai_client.py)
// and curl.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import Ajv from 'ajv';

import {
  allowedHost,
  authorized,
  chunkBody,
  completionBody,
  completionLogprobs,
  choiceSeed,
  completionParamsFor,
  engineSeed,
  generateParamsFor,
  HttpError,
  modelIdFromPath,
  parseChatCompletionRequest,
  parseCompletionRequest,
  requestPath,
  SEED_RANGE,
  ServerMetrics,
  sseData,
  startOpenAiServer,
  textCompletionBody,
  usageOf,
  type CompletionBackend,
  type OpenAiServer,
} from '../src/engine/http-server.js';
import { parseByteSize } from '../src/cli.js';
import { SidecarClient } from '../src/engine/client.js';
import { defaultModelPath } from '../src/engine/engine-session.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import type { GenerateParams, GenerateResult, MetricsSnapshot, ModelInfo, PrefillProgress, TokenDelta } from '../src/engine/protocol.js';
import { QUESTIONS } from '../bench/decode-sweep.js';

const ROOT = path.resolve(__dirname, '..');
const PYTHON = path.join(ROOT, '.venv', 'bin', 'python');
const CLIENT_PY = path.join(ROOT, 'test', 'python', 'openai_client.py');

const LIMITS = { modelId: 'm', defaultMaxTokens: 512, maxTokensLimit: 8192 };
const MSG = [{ role: 'user', content: 'hi' }];

function rejects400(body: unknown, param: string) {
  assert.throws(
    () => parseChatCompletionRequest(body, LIMITS),
    (e: unknown) => {
      assert.ok(e instanceof HttpError, `expected HttpError, got ${e}`);
      assert.equal(e.status, 400, e.message);
      assert.equal(e.param, param, e.message);
      assert.ok(e.message.includes(param.split(/[.[]/)[0]), `message names ${param}: ${e.message}`);
      return true;
    },
  );
}

describe('request validation', () => {
  test('defaults and mapping', () => {
    const r = parseChatCompletionRequest({ model: 'm', messages: MSG }, LIMITS);
    assert.deepEqual(r.messages, [{ role: 'user', content: 'hi' }]);
    assert.equal(r.maxTokens, 512);
    assert.deepEqual(r.sampling, { temperature: 1, topP: 1 });
    assert.equal(r.seed, undefined);
    assert.deepEqual(r.stop, []);
    assert.equal(r.n, 1);
    assert.equal(r.stream, false);
    assert.equal(r.includeUsage, false);
    assert.equal(r.jsonSchema, undefined);
    // model may be absent
    assert.equal(parseChatCompletionRequest({ messages: MSG }, LIMITS).n, 1);
  });

  test('every parameter', () => {
    const r = parseChatCompletionRequest(
      {
        model: 'm',
        messages: [
          { role: 'developer', content: 'be brief' },
          { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] },
          { role: 'assistant', content: 'x' },
          { role: 'user', content: 'y', name: 'bob' },
        ],
        max_tokens: 10,
        max_completion_tokens: 20,
        temperature: 0,
        top_p: 0.5,
        top_k: 40,
        min_p: 0.05,
        repetition_penalty: 1.1,
        stop: 'END',
        seed: 7,
        n: 3,
        stream: true,
        stream_options: { include_usage: true },
        response_format: { type: 'json_schema', json_schema: { name: 'answer', schema: { type: 'object' }, strict: true } },
        presence_penalty: 0,
        logprobs: false,
        tools: [],
        user: 'ignored',
      },
      LIMITS,
    );
    assert.deepEqual(r.messages, [
      { role: 'system', content: 'be brief' },
      { role: 'user', content: 'ab' },
      { role: 'assistant', content: 'x' },
      { role: 'user', content: 'y' },
    ]);
    assert.equal(r.maxTokens, 20, 'max_completion_tokens wins over max_tokens');
    assert.deepEqual(r.sampling, { temperature: 0, topP: 0.5, topK: 40, minP: 0.05, repetitionPenalty: 1.1 });
    assert.deepEqual(r.stop, ['END']);
    assert.equal(r.n, 3);
    assert.equal(r.stream, true);
    assert.equal(r.includeUsage, true);
    assert.deepEqual(r.jsonSchema, { type: 'object' });
    assert.deepEqual(generateParamsFor(r, 2), {
      messages: r.messages,
      maxTokens: 20,
      sampling: { temperature: 0, topP: 0.5, topK: 40, minP: 0.05, repetitionPenalty: 1.1, seed: 9 },
      stop: ['END'],
      jsonSchema: { type: 'object' },
    });
    assert.deepEqual(parseChatCompletionRequest({ messages: MSG, stop: ['a', 'b'] }, LIMITS).stop, ['a', 'b']);
    assert.deepEqual(parseChatCompletionRequest({ messages: MSG, response_format: { type: 'json_object' } }, LIMITS).jsonSchema, { type: 'object' });
    assert.equal(parseChatCompletionRequest({ messages: MSG, response_format: { type: 'text' } }, LIMITS).jsonSchema, undefined);
    // no seed: every choice, and every request, draws its own
    const unseeded = parseChatCompletionRequest({ messages: MSG, n: 3 }, LIMITS);
    const seeds = [0, 1, 2, 0].map((i) => generateParamsFor(unseeded, i).sampling?.seed);
    for (const s of seeds) assert.ok(Number.isInteger(s) && s! >= 0 && s! < 2 ** 32, `seed ${s}`);
    assert.equal(new Set(seeds).size, 4, `four different seeds: ${seeds}`);
  });
});

test('a body that is not an object is 400', () => {
  for (const body of [null, [], 'x', 3]) {
    assert.throws(() => parseChatCompletionRequest(body, LIMITS), (e: unknown) => e instanceof HttpError && e.status === 400);
  }
});

test('bad parameters are 400 naming the parameter', () => {
  rejects400({}, 'messages');
  rejects400({ messages: 'hi' }, 'messages');
  rejects400({ messages: [] }, 'messages');
  rejects400({ messages: ['hi'] }, 'messages[0]');
  rejects400({ messages: [{ content: 'hi' }] }, 'messages[0].role');
  rejects400({ messages: [{ role: 'user' }] }, 'messages[0].content');
  rejects400({ messages: [{ role: 'user', content: 5 }] }, 'messages[0].content');
  rejects400({ messages: [{ role: 'robot', content: 'x' }] }, 'messages[0].role');
  rejects400({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: {} }] }] }, 'messages[0].content[0]');
  rejects400({ messages: MSG, max_tokens: 0 }, 'max_tokens');
  rejects400({ messages: MSG, max_tokens: 1.5 }, 'max_tokens');
  rejects400({ messages: MSG, max_tokens: '10' }, 'max_tokens');
  rejects400({ messages: MSG, max_tokens: 100000 }, 'max_tokens');
  rejects400({ messages: MSG, max_completion_tokens: -1 }, 'max_completion_tokens');
  rejects400({ messages: MSG, temperature: -0.1 }, 'temperature');
  rejects400({ messages: MSG, temperature: 2.5 }, 'temperature');
  rejects400({ messages: MSG, temperature: 'hot' }, 'temperature');
  rejects400({ messages: MSG, top_p: -0.1 }, 'top_p');
  rejects400({ messages: MSG, top_p: 1.01 }, 'top_p');
  rejects400({ messages: MSG, top_k: -1 }, 'top_k');
  rejects400({ messages: MSG, min_p: 1 }, 'min_p');
  rejects400({ messages: MSG, repetition_penalty: 0 }, 'repetition_penalty');
  rejects400({ messages: MSG, n: 0 }, 'n');
  rejects400({ messages: MSG, n: 17 }, 'n');
  rejects400({ messages: MSG, seed: 'x' }, 'seed');
  rejects400({ messages: MSG, seed: 1.5 }, 'seed');
  rejects400({ messages: MSG, stop: 5 }, 'stop');
  rejects400({ messages: MSG, stop: ['a', 5] }, 'stop');
  rejects400({ messages: MSG, stop: [''] }, 'stop');
  rejects400({ messages: MSG, stop: ['ok', 'x'.repeat(257)] }, 'stop');
  rejects400({ messages: MSG, stop: 'x'.repeat(100_000) }, 'stop');
  assert.throws(() => parseChatCompletionRequest({ messages: MSG, stop: ['x'.repeat(300)] }, LIMITS), /at most 256 characters; stop\[0\] has 300/);
  assert.deepEqual(parseChatCompletionRequest({ messages: MSG, stop: ['y'.repeat(256)] }, LIMITS).stop, ['y'.repeat(256)]);
  rejects400({ messages: MSG, stream: 'yes' }, 'stream');
  rejects400({ messages: MSG, stream_options: { include_usage: true } }, 'stream_options');
  rejects400({ messages: MSG, stream: true, stream_options: { include_usage: 1 } }, 'stream_options.include_usage');
  rejects400({ messages: MSG, response_format: 'json' }, 'response_format');
  rejects400({ messages: MSG, response_format: { type: 'xml' } }, 'response_format.type');
  rejects400({ messages: MSG, response_format: { type: 'json_schema' } }, 'response_format.json_schema');
  rejects400({ messages: MSG, response_format: { type: 'json_schema', json_schema: { schema: {} } } }, 'response_format.json_schema.name');
  rejects400({ messages: MSG, response_format: { type: 'json_schema', json_schema: { name: 'a' } } }, 'response_format.json_schema.schema');
  rejects400({ messages: MSG, tools: [{ type: 'function' }] }, 'tools');
  rejects400({ messages: MSG, logprobs: 'yes' }, 'logprobs');
  rejects400({ messages: MSG, logprobs: true, top_logprobs: 21 }, 'top_logprobs');
  rejects400({ messages: MSG, top_logprobs: 2 }, 'top_logprobs');
  rejects400({ messages: MSG, presence_penalty: 2.5 }, 'presence_penalty');
  rejects400({ messages: MSG, frequency_penalty: -3 }, 'frequency_penalty');
  rejects400({ messages: MSG, model: 5 }, 'model');
});

test('seed -1 is random; negative and 64-bit seeds are taken, mapped into the engine range, distinct ones kept distinct', () => {
  // -1: llama.cpp's and Ollama's "random": no seed, each choice draws its own.
  const random = parseChatCompletionRequest({ messages: MSG, seed: -1, n: 3 }, LIMITS);
  assert.equal(random.seed, undefined);
  const drawn = [0, 1, 2].map((i) => generateParamsFor(random, i).sampling?.seed);
  assert.equal(new Set(drawn).size, 3, `three random seeds: ${drawn}`);
  // Seeds the engine takes as they are (below 2^53) are not changed.
  for (const seed of [0, 7, 2 ** 32, 2 ** 53 - 1]) assert.equal(parseChatCompletionRequest({ messages: MSG, seed }, LIMITS).seed, seed);
  // Other negatives: the int64's bit pattern, modulo 2^53.
  assert.equal(SEED_RANGE, 2 ** 53);
  assert.equal(engineSeed(-2), 2 ** 53 - 2);
  assert.equal(engineSeed(-(2 ** 53)), 0);
  assert.equal(Object.is(engineSeed(-0), 0), true, '-0 is 0');
  // 64-bit seeds (as JSON.parse reads them: 2^63 - 1 arrives as 2^63) reduced modulo 2^53.
  assert.equal(engineSeed(JSON.parse('9223372036854775807')), 0);
  assert.equal(engineSeed(2 ** 60 + 256), 256);
  assert.equal(engineSeed(-(2 ** 60) - 256), 2 ** 53 - 256);
  const distinct = [-2, -3, -4, -1000, -(2 ** 31), -(2 ** 52), 2 ** 53 + 6, 3, 2 ** 40];
  const mapped = distinct.map((s) => engineSeed(s)!);
  for (const m of mapped) assert.ok(Number.isSafeInteger(m) && m >= 0 && m < 2 ** 53, `in range: ${m}`);
  assert.equal(new Set(mapped).size, distinct.length, `distinct seeds stay distinct: ${mapped}`);
  // Choice i: seed + i, wrapping at 2^53 without losing precision.
  const r = parseChatCompletionRequest({ messages: MSG, seed: -2, n: 3 }, LIMITS);
  assert.deepEqual([0, 1, 2].map((i) => generateParamsFor(r, i).sampling?.seed), [2 ** 53 - 2, 2 ** 53 - 1, 0]);
  assert.equal(choiceSeed(2 ** 53 - 1, 15), 14);
  assert.equal(choiceSeed(10, 2), 12);
  const legacy = parseCompletionRequest({ prompt: ['a', 'b'], n: 2, seed: -3 }, LIMITS);
  assert.deepEqual([0, 1, 2, 3].map((i) => completionParamsFor(legacy, i).sampling?.seed), [2 ** 53 - 3, 2 ** 53 - 2, 2 ** 53 - 1, 0]);
});

test('top_p 0 is greedy (the smallest nucleus: the likeliest token alone)', () => {
  const r = parseChatCompletionRequest({ messages: MSG, top_p: 0, temperature: 0.8 }, LIMITS);
  assert.deepEqual(r.sampling, { temperature: 0, topP: 1 });
  const legacy = parseCompletionRequest({ prompt: 'x', top_p: 0 }, LIMITS);
  assert.deepEqual(legacy.sampling, { temperature: 0, topP: 1 });
  // Other values pass as given.
  assert.deepEqual(parseChatCompletionRequest({ messages: MSG, top_p: 0.01, temperature: 0.8 }, LIMITS).sampling, { temperature: 0.8, topP: 0.01 });
});

test('penalties and logprobs reach the sampling parameters', () => {
  const r = parseChatCompletionRequest({ messages: MSG, presence_penalty: 0.5, frequency_penalty: -1, logprobs: true, top_logprobs: 3 }, LIMITS);
  assert.deepEqual(r.sampling, { temperature: 1, topP: 1, presencePenalty: 0.5, frequencyPenalty: -1, logprobs: 3 });
  assert.equal(parseChatCompletionRequest({ messages: MSG, logprobs: true }, LIMITS).sampling.logprobs, 0);
  assert.equal(parseChatCompletionRequest({ messages: MSG, logprobs: false }, LIMITS).sampling.logprobs, undefined);
});

describe('/v1/completions request validation', () => {
  const rejects = (body: Record<string, unknown>, param: string, code?: string) =>
    assert.throws(() => parseCompletionRequest(body, LIMITS), (e: unknown) => {
      assert.ok(e instanceof HttpError, `expected HttpError, got ${e}`);
      assert.equal(e.status, 400, e.message);
      assert.equal(e.param, param, e.message);
      if (code) assert.equal(e.code, code);
      assert.ok(e.message.includes(param), `message names ${param}: ${e.message}`);
      return true;
    });

  test('a string or an array of strings; each prompt gets n choices', () => {
    const one = parseCompletionRequest({ model: 'm', prompt: 'def f(' }, LIMITS);
    assert.deepEqual(one.prompts, ['def f(']);
    assert.equal(one.maxTokens, 512);
    assert.equal(one.suffix, undefined);
    assert.deepEqual(completionParamsFor(one, 0).prompt, 'def f(');
    const many = parseCompletionRequest({
      prompt: ['a', 'b'], n: 2, seed: 4, suffix: 'z', max_tokens: 7, stop: '\n', logprobs: 2, presence_penalty: 1, echo: false, best_of: 1,
    }, LIMITS);
    assert.deepEqual([0, 1, 2, 3].map((i) => completionParamsFor(many, i)), [0, 1, 2, 3].map((i) => ({
      prompt: i < 2 ? 'a' : 'b', suffix: 'z', maxTokens: 7, stop: ['\n'],
      sampling: { temperature: 1, topP: 1, presencePenalty: 1, logprobs: 2, seed: 4 + i },
    })));
  });

  test('what it refuses, naming the parameter', () => {
    rejects({}, 'prompt', 'missing_required_parameter');
    rejects({ prompt: [] }, 'prompt');
    rejects({ prompt: [1, 2, 3] }, 'prompt', 'invalid_type');
    rejects({ prompt: [[1, 2]] }, 'prompt', 'invalid_type');
    rejects({ prompt: 'x', suffix: 5 }, 'suffix', 'invalid_type');
    rejects({ prompt: 'x', echo: true }, 'echo', 'unsupported_parameter');
    rejects({ prompt: 'x', best_of: 3 }, 'best_of', 'unsupported_parameter');
    rejects({ prompt: 'x', logprobs: 21 }, 'logprobs');
    rejects({ prompt: 'x', frequency_penalty: 2.1 }, 'frequency_penalty');
    rejects({ prompt: ['a', 'b', 'c'], n: 6 }, 'n');
    assert.throws(() => parseCompletionRequest({ prompt: 'x', model: 'gpt-3.5-turbo-instruct' }, LIMITS),
      (e: unknown) => e instanceof HttpError && e.status === 404 && e.code === 'model_not_found');
  });

  test('bodies: text_completion choices, usage counting each prompt once, logprobs lists', () => {
    const lp = [
      { token: 'He', logprob: -0.5, bytes: [72, 101], top: [{ token: 'He', logprob: -0.5, bytes: [72, 101] }, { token: 'A', logprob: -1, bytes: [65] }] },
      { token: 'llo', logprob: -0.1, bytes: [108, 108, 111], top: [] },
    ];
    const body = textCompletionBody('cmpl-1', 5, 'm', [
      result({ text: 'Hello', logprobs: lp }), result({ text: 'x', finishReason: 'length' }), result({ promptTokens: 3, cachedPromptTokens: 0 }),
    ], 2);
    assert.equal(body.object, 'text_completion');
    assert.deepEqual(body.choices.map((c) => [c.index, c.text, c.finish_reason]), [[0, 'Hello', 'stop'], [1, 'x', 'length'], [2, 'hello', 'stop']]);
    assert.deepEqual(body.usage, { prompt_tokens: 13, completion_tokens: 9, total_tokens: 22, prompt_tokens_details: { cached_tokens: 4 } });
    assert.deepEqual(body.choices[0].logprobs, {
      tokens: ['He', 'llo'], token_logprobs: [-0.5, -0.1], top_logprobs: [{ He: -0.5, A: -1 }, {}], text_offset: [0, 2],
    });
    assert.equal(body.choices[1].logprobs, null);
    assert.deepEqual(completionLogprobs(lp, 10).text_offset, [10, 12]);
    const chat = completionBody('c', 5, 'm', [result({ logprobs: lp })]);
    assert.deepEqual(chat.choices[0].logprobs?.content[0], {
      token: 'He', logprob: -0.5, bytes: [72, 101], top_logprobs: [{ token: 'He', logprob: -0.5, bytes: [72, 101] }, { token: 'A', logprob: -1, bytes: [65] }],
    });
  });
});

test('an unknown model is 404 model_not_found', () => {
  assert.throws(
    () => parseChatCompletionRequest({ model: 'gpt-4o', messages: MSG }, LIMITS),
    (e: unknown) => e instanceof HttpError && e.status === 404 && e.code === 'model_not_found' && e.param === 'model',
  );
});

test('authorized compares the bearer token', () => {
  assert.equal(authorized('Bearer secret', 'secret'), true);
  assert.equal(authorized('bearer   secret', 'secret'), true);
  assert.equal(authorized('Bearer secreT', 'secret'), false);
  assert.equal(authorized('Bearer secret2', 'secret'), false);
  assert.equal(authorized('secret', 'secret'), false);
  assert.equal(authorized('Basic secret', 'secret'), false);
  assert.equal(authorized(undefined, 'secret'), false);
  assert.equal(authorized('Bearer ', ''), false);
  assert.equal(authorized('Bearer secret  \t', 'secret'), true);
  assert.equal(authorized('Bearer sec ret', 'sec ret'), false, 'a token is one word');
});

test('authorized takes linear time on a header built to backtrack', () => {
  const header = `Bearer a${' '.repeat(40_000)}b\n`;
  const t0 = performance.now();
  assert.equal(authorized(header, 'secret'), false);
  const ms = performance.now() - t0;
  assert.ok(ms < 100, `${ms.toFixed(0)} ms for a 40,000-character header`);
});

test('allowedHost accepts the loopback names with our port only', () => {
  for (const host of ['127.0.0.1:8080', 'localhost:8080', 'LocalHost:8080', '[::1]:8080']) assert.equal(allowedHost(host, 8080), true, host);
  for (const host of [undefined, '', 'evil.example:8080', 'evil.example', '127.0.0.1:8081', 'localhost', '127.0.0.1.evil.example:8080',
    'localhost:8080.evil.example', '[::1]', '0.0.0.0:8080', 'localhost:08080x']) {
    assert.equal(allowedHost(host, 8080), false, String(host));
  }
  assert.equal(allowedHost('localhost', 80), true, 'no port means 80');
});

const result = (over: Partial<GenerateResult> = {}): GenerateResult => ({
  requestId: 'r',
  text: 'hello',
  finishReason: 'stop',
  promptTokens: 10,
  cachedPromptTokens: 4,
  generatedTokens: 3,
  timings: { queuedMs: 0, firstTokenMs: 1, totalMs: 2 },
  ...over,
});

test('response bodies and SSE framing', () => {
  assert.equal(sseData({ a: 1 }), 'data: {"a":1}\n\n');
  assert.equal(sseData('[DONE]'), 'data: [DONE]\n\n');
  const usage = usageOf([result(), result({ generatedTokens: 5, finishReason: 'length' })]);
  assert.deepEqual(usage, { prompt_tokens: 10, completion_tokens: 8, total_tokens: 18, prompt_tokens_details: { cached_tokens: 4 } });
  const body = completionBody('id1', 5, 'm', [result(), result({ text: 'x', finishReason: 'length' })]);
  assert.equal(body.object, 'chat.completion');
  assert.deepEqual(
    body.choices.map((c) => [c.index, c.message.content, c.finish_reason]),
    [
      [0, 'hello', 'stop'],
      [1, 'x', 'length'],
    ],
  );
  const chunk = chunkBody('id1', 5, 'm', [{ index: 0, delta: { content: 'a' }, finish_reason: null }], null);
  assert.equal(chunk.object, 'chat.completion.chunk');
  assert.equal(chunk.usage, null);
  assert.equal('usage' in chunkBody('id1', 5, 'm', []), false);
  assert.equal(modelIdFromPath('/x/models/SmolLM2-135M-Instruct.Q4_1.gguf'), 'SmolLM2-135M-Instruct.Q4_1');
  assert.equal(modelIdFromPath('/x/models/some-mlx-folder/'), 'some-mlx-folder');
});

const SNAPSHOT: MetricsSnapshot = {
  requests: { stop: 3, length: 2, cancelled: 1, error: 0 },
  promptTokens: 100,
  cachedPromptTokens: 40,
  prefillTokens: 60,
  generatedTokens: 50,
  running: 2,
  prefilling: 1,
  queued: 4,
  kvBytes: 1234,
  kvBudgetBytes: 99999,
  prefixCacheBytes: 77,
  decodeTokensPerSecond: 12.5,
  prefillTokensPerSecond: 300,
  decodeSeconds: 4,
  prefillSeconds: 0.5,
  decodeTokens: 45,
  activeMemoryBytes: 5000,
  peakMemoryBytes: 6000,
  uptimeSeconds: 9,
};

test('metrics render the snapshot; counters follow its cumulative values', async () => {
  const m = new ServerMetrics();
  m.update(SNAPSHOT);
  m.countHttp('/v1/models', 200);
  let text = await m.render();
  for (const line of [
    'mlx_batch_requests_total{finish_reason="stop"} 3',
    'mlx_batch_requests_total{finish_reason="cancelled"} 1',
    'mlx_batch_prompt_tokens_total 100',
    'mlx_batch_cached_prompt_tokens_total 40',
    'mlx_batch_prefill_tokens_total 60',
    'mlx_batch_generated_tokens_total 50',
    'mlx_batch_running_requests 2',
    'mlx_batch_prefilling_requests 1',
    'mlx_batch_queued_requests 4',
    'mlx_batch_kv_cache_bytes 1234',
    'mlx_batch_kv_cache_budget_bytes 99999',
    'mlx_batch_prefix_cache_bytes 77',
    'mlx_batch_decode_tokens_per_second 12.5',
    'mlx_batch_prefill_tokens_per_second 300',
    'mlx_batch_engine_up 1',
    'mlx_batch_decode_tokens_total 45',
    'mlx_batch_decode_seconds_total 4',
    'mlx_batch_prefill_seconds_total 0.5',
    'mlx_batch_peak_memory_bytes 6000',
    'mlx_batch_http_requests_total{route="/v1/models",code="200"} 1',
    '# TYPE mlx_batch_generated_tokens_total counter',
    '# TYPE mlx_batch_running_requests gauge',
  ]) {
    assert.ok(text.includes(line + '\n'), `missing ${line}\n${text}`);
  }
  m.update({ ...SNAPSHOT, generatedTokens: 80, requests: { ...SNAPSHOT.requests, stop: 5 } });
  text = await m.render();
  assert.ok(text.includes('mlx_batch_generated_tokens_total 80\n'));
  assert.ok(text.includes('mlx_batch_requests_total{finish_reason="stop"} 5\n'));
  m.update(undefined);
  assert.ok((await m.render()).includes('mlx_batch_engine_up 0\n'));
  // a registry of its own: nothing in prom-client's global one
  const { register } = await import('prom-client');
  assert.equal((await register.metrics()).includes('mlx_batch_'), false);
});

test('serve --kv-budget / --prefix-cache byte sizes', () => {
  assert.equal(parseByteSize('2GiB'), 2 * 2 ** 30);
  assert.equal(parseByteSize('512MiB'), 512 * 2 ** 20);
  assert.equal(parseByteSize('1.5G'), 1.5 * 2 ** 30);
  assert.equal(parseByteSize('2GB'), 2e9);
  assert.equal(parseByteSize('64k'), 65536);
  assert.equal(parseByteSize('1000'), 1000);
  assert.equal(parseByteSize('0'), 0);
  for (const bad of ['', 'lots', '2 parsecs', '-1GiB', '1e9']) assert.throws(() => parseByteSize(bad), /byte size/);
});

// ---------------------------------------------------------------------------
// The server over a fake backend

/** Streams `text` word by word, one word per `stepMs`; honours the signal. */
class FakeBackend implements CompletionBackend {
  info = { contextLength: 4096, maxBatch: 4 } as ModelInfo;
  calls: Array<Omit<GenerateParams, 'requestId'>> = [];
  active = 0;
  cancelled = 0;
  failWith?: string;
  failType?: GenerateResult['errorType'];
  /** Fail after this many words (0 = before the first). */
  failAfter = 0;
  stepMs = 5;
  failCode?: string;
  /** Called as a generation starts, and as one ends cancelled (tests wait on these, not on timers). */
  onStart?: () => void;
  onCancel?: () => void;
  /** performance.now() of the last generation's first token. */
  firstDeltaAt = 0;
  /**
   * Milliseconds the engine takes to decide (tokenizing, compiling a schema):
   * then it refuses the request (refuse), or accepts it, which it says with a
   * prefill event as the sidecar's scheduler does once it admits a request.
   */
  prepareMs: number | ((p: Omit<GenerateParams, 'requestId'>) => number) = 0;
  /** Whether acceptance is told with a prefill event (else only the first token tells it). */
  prefillEvents = true;
  /** The engine's refusal of these parameters (as its prepare() gives: no event before it). */
  refuse?: (p: Omit<GenerateParams, 'requestId'>) => Partial<GenerateResult> | undefined;
  reply = (p: Omit<GenerateParams, 'requestId'>) => `echo ${p.messages?.at(-1)?.content ?? p.prompt} seed=${p.sampling?.seed ?? '-'}`;

  async generate(
    params: Omit<GenerateParams, 'requestId'>,
    handlers: { onDelta?: (d: TokenDelta) => void; onPrefill?: (p: PrefillProgress) => void; signal?: AbortSignal } = {},
  ): Promise<GenerateResult> {
    this.calls.push(params);
    this.active++;
    this.onStart?.();
    let emitted = 0;
    const words = this.reply(params).split(/(?<= )/).slice(0, params.maxTokens);
    let text = '';
    try {
      const prepareMs = typeof this.prepareMs === 'function' ? this.prepareMs(params) : this.prepareMs;
      if (prepareMs > 0) await new Promise((r) => setTimeout(r, prepareMs));
      const refusal = this.refuse?.(params);
      if (refusal) return result({ text: '', generatedTokens: 0, finishReason: 'error', errorType: 'invalid_request', ...refusal });
      // failWith of a refusal type fails in the loop below, as before; anything else is accepted first.
      const refused = this.failWith !== undefined && (this.failType === 'invalid_request' || this.failType === 'overloaded');
      if (this.prefillEvents && !refused) handlers.onPrefill?.({ requestId: 'r', promptTokens: 5, prefilledTokens: 0, cachedTokens: 0 });
      for (const w of words) {
        await new Promise((r) => setTimeout(r, this.stepMs));
        if (handlers.signal?.aborted) {
          this.cancelled++;
          this.onCancel?.();
          return result({ text, finishReason: 'cancelled', generatedTokens: text.split(' ').length });
        }
        if (this.failWith && emitted >= this.failAfter) {
          return result({ text, finishReason: 'error', error: this.failWith, errorType: this.failType,
            ...(this.failCode ? { errorCode: this.failCode, errorParam: 'messages' } : {}) });
        }
        text += w;
        if (emitted++ === 0) this.firstDeltaAt = performance.now();
        handlers.onDelta?.({ requestId: 'r', text: w, tokens: 1 });
      }
      return result({ text, generatedTokens: words.length, finishReason: words.length >= params.maxTokens ? 'length' : 'stop' });
    } finally {
      this.active--;
    }
  }

  async metrics(): Promise<MetricsSnapshot> {
    return { ...SNAPSHOT, running: this.active };
  }
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function request(url: string, opts: { method?: string; token?: string | null; body?: string | Buffer; headers?: Record<string, string> } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    if (opts.token !== null) headers.authorization = `Bearer ${opts.token ?? 'tok'}`;
    if (opts.body !== undefined) headers['content-type'] = 'application/json';
    const req = http.request(url, { method: opts.method ?? (opts.body !== undefined ? 'POST' : 'GET'), headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** One request written by hand on a fresh connection (any request target, as sent); the connection closes after it. */
function rawRequest(port: number, target: string, opts: { method?: string; token?: string | null } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      const auth = opts.token === null ? '' : `Authorization: Bearer ${opts.token ?? 'tok'}\r\n`;
      s.write(`${opts.method ?? 'GET'} ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${auth}Connection: close\r\n\r\n`);
    });
    let data = '';
    s.setEncoding('utf8');
    s.on('data', (c) => (data += c));
    s.on('error', reject);
    s.on('close', () => {
      const head = data.slice(0, Math.max(0, data.indexOf('\r\n\r\n')));
      const headers: http.IncomingHttpHeaders = {};
      for (const line of head.split('\r\n').slice(1)) {
        const k = line.indexOf(':');
        headers[line.slice(0, k).toLowerCase()] = line.slice(k + 1).trim();
      }
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0), headers, body: head ? data.slice(head.length + 4) : '' });
    });
  });
}

function sseEvents(body: string): unknown[] {
  return body
    .split('\n\n')
    .filter((e) => e.startsWith('data: '))
    .map((e) => e.slice(6))
    .map((d) => (d === '[DONE]' ? d : JSON.parse(d)));
}

describe('server over a fake backend', () => {
  const backend = new FakeBackend();
  let server: OpenAiServer;
  const chat = (body: unknown, token?: string | null) => request(`${server.url}/v1/chat/completions`, { body: JSON.stringify(body), token });

  before(async () => {
    server = await startOpenAiServer({ client: backend, port: 0, token: 'tok', modelId: 'm', maxBodyBytes: 64 * 1024 });
  });
  after(async () => {
    await server.close();
  });

  test('binds 127.0.0.1', () => {
    assert.equal(server.host, '127.0.0.1');
    assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  });

  test('401 without the right token, on every route', async () => {
    for (const [pathName, token] of [
      ['/v1/models', null],
      ['/v1/models', 'wrong'],
      ['/metrics', null],
      ['/nope', 'wrong'],
    ] as const) {
      const r = await request(server.url + pathName, { token });
      assert.equal(r.status, 401, pathName);
      assert.equal(r.headers['www-authenticate'], 'Bearer');
      const body = JSON.parse(r.body);
      assert.equal(body.error.code, 'invalid_api_key');
      assert.equal(typeof body.error.message, 'string');
      assert.equal(body.error.type, 'invalid_request_error');
    }
    const r = await chat({ messages: MSG }, 'wrong');
    assert.equal(r.status, 401);
  });

  test('403 for a Host header that does not name this server (DNS rebinding), even with the token', async () => {
    for (const host of ['evil.example', `evil.example:${server.port}`, `127.0.0.1:${server.port + 1}`, `localhost.evil.example:${server.port}`]) {
      for (const pathName of ['/v1/models', '/v1/chat/completions']) {
        const r = await request(server.url + pathName, { headers: { host }, ...(pathName.endsWith('completions') ? { body: JSON.stringify({ messages: MSG }) } : {}) });
        assert.equal(r.status, 403, `${host} ${pathName}: ${r.body}`);
        const body = JSON.parse(r.body);
        assert.equal(body.error.code, 'forbidden_host');
        assert.match(body.error.message, /Host header/);
      }
    }
    for (const host of [`127.0.0.1:${server.port}`, `localhost:${server.port}`, `[::1]:${server.port}`]) {
      const r = await request(`${server.url}/v1/models`, { headers: { host } });
      assert.equal(r.status, 200, `${host}: ${r.body}`);
    }
  });

  test('404, 405, models', async () => {
    let r = await request(`${server.url}/v1/nope`);
    assert.equal(r.status, 404);
    assert.equal(JSON.parse(r.body).error.code, 'not_found');
    r = await request(`${server.url}/v1/chat/completions`);
    assert.equal(r.status, 405);
    assert.equal(r.headers.allow, 'POST');
    r = await request(`${server.url}/v1/models`, { method: 'DELETE' });
    assert.equal(r.status, 405);
    r = await request(`${server.url}/v1/models`);
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body).data.map((m: { id: string }) => m.id), ['m']);
    assert.equal(JSON.parse(r.body).object, 'list');
  });

  test('malformed JSON is 400; an oversized body is 413', async () => {
    let r = await request(`${server.url}/v1/chat/completions`, { body: '{"messages": [' });
    assert.equal(r.status, 400);
    assert.equal(JSON.parse(r.body).error.code, 'invalid_json');
    r = await request(`${server.url}/v1/chat/completions`, { body: '' });
    assert.equal(r.status, 400);
    r = await chat({ messages: MSG, temperature: 3 });
    assert.equal(r.status, 400);
    assert.equal(JSON.parse(r.body).error.param, 'temperature');
    r = await request(`${server.url}/v1/chat/completions`, {
      body: JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(100 * 1024) }] }),
    });
    assert.equal(r.status, 413);
    assert.equal(JSON.parse(r.body).error.code, 'request_too_large');
    r = await chat({ messages: MSG, model: 'other' });
    assert.equal(r.status, 404);
  });

  test('non-streaming, n choices with seeds seed, seed+1, ...', async () => {
    backend.calls = [];
    const r = await chat({ model: 'm', messages: MSG, n: 3, seed: 10, max_tokens: 50, temperature: 0.5 });
    assert.equal(r.status, 200, r.body);
    const body = JSON.parse(r.body);
    assert.equal(body.object, 'chat.completion');
    assert.match(body.id, /^chatcmpl-/);
    assert.equal(body.model, 'm');
    assert.deepEqual(
      body.choices.map((c: { message: { content: string } }) => c.message.content),
      ['echo hi seed=10', 'echo hi seed=11', 'echo hi seed=12'],
    );
    assert.deepEqual(body.choices.map((c: { finish_reason: string }) => c.finish_reason), ['stop', 'stop', 'stop']);
    assert.deepEqual(body.usage, { prompt_tokens: 10, completion_tokens: 9, total_tokens: 19, prompt_tokens_details: { cached_tokens: 4 } });
    assert.deepEqual(backend.calls.map((c) => c.sampling?.seed), [10, 11, 12]);
    assert.equal(backend.calls[0].sampling?.temperature, 0.5);
    assert.equal(backend.calls[0].maxTokens, 50);
  });

  test('n choices without a seed get different random seeds', async () => {
    backend.calls = [];
    const r = await chat({ messages: MSG, n: 3, max_tokens: 50 });
    assert.equal(r.status, 200, r.body);
    const seeds = backend.calls.map((c) => c.sampling?.seed);
    assert.equal(seeds.length, 3);
    for (const s of seeds) assert.equal(typeof s, 'number');
    assert.equal(new Set(seeds).size, 3, `three seeds: ${seeds}`);
  });

  test('streaming with usage', async () => {
    const r = await chat({ messages: MSG, stream: true, stream_options: { include_usage: true }, max_tokens: 2, n: 2, seed: 1 });
    assert.equal(r.status, 200);
    assert.match(String(r.headers['content-type']), /^text\/event-stream/);
    const events = sseEvents(r.body);
    assert.equal(events.at(-1), '[DONE]');
    const chunks = events.slice(0, -1) as Array<ReturnType<typeof chunkBody>>;
    for (const c of chunks) assert.equal(c.object, 'chat.completion.chunk');
    const usageChunk = chunks.at(-1)!;
    assert.deepEqual(usageChunk.choices, []);
    assert.equal(usageChunk.usage?.completion_tokens, 4);
    for (const c of chunks.slice(0, -1)) assert.equal(c.usage, null);
    for (const i of [0, 1]) {
      const mine = chunks.flatMap((c) => c.choices).filter((c) => c.index === i);
      assert.equal(mine[0].delta.role, 'assistant');
      assert.equal(mine.map((c) => c.delta.content ?? '').join(''), 'echo hi ');
      assert.equal(mine.at(-1)!.finish_reason, 'length');
      assert.equal(mine.filter((c) => c.finish_reason).length, 1);
    }
    // without include_usage: no usage key
    const plain = sseEvents((await chat({ messages: MSG, stream: true })).body);
    assert.equal(plain.at(-1), '[DONE]');
    assert.equal((plain[0] as object).hasOwnProperty('usage'), false);
  });

  test('streaming to a reader that does not keep up: deltas wait for drain, merged, and none is lost', async () => {
    const words = 2000;
    const reply = Array.from({ length: words }, (_, i) => `${'x'.repeat(10_000)}${i} `).join('');
    const savedReply = backend.reply;
    backend.reply = () => reply;
    backend.stepMs = 0;
    try {
      const callsBefore = backend.calls.length;
      const body = await new Promise<string>((resolve, reject) => {
        const req = http.request(`${server.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: 'Bearer tok', 'content-type': 'application/json' },
        });
        req.on('response', (res) => {
          // Read nothing until the whole answer is generated: the socket fills up.
          res.pause();
          const waitForEnd = setInterval(() => {
            if (backend.calls.length > callsBefore && backend.active === 0) {
              clearInterval(waitForEnd);
              let text = '';
              res.setEncoding('utf8');
              res.on('data', (c) => (text += c));
              res.on('end', () => resolve(text));
              res.resume();
            }
          }, 20);
        });
        req.on('error', reject);
        req.end(JSON.stringify({ messages: MSG, stream: true, max_tokens: words }));
      });
      const events = sseEvents(body);
      assert.equal(events.at(-1), '[DONE]');
      const chunks = events.slice(0, -1) as Array<ReturnType<typeof chunkBody>>;
      const contentChunks = chunks.filter((c) => c.choices[0]?.delta.content);
      assert.equal(contentChunks.map((c) => c.choices[0].delta.content).join(''), reply);
      assert.ok(contentChunks.length < words / 2, `${contentChunks.length} content events for ${words} deltas: held ones were merged`);
      assert.equal(chunks.at(-1)!.choices[0].finish_reason, 'length');
    } finally {
      backend.reply = savedReply;
      backend.stepMs = 5;
    }
  });

  test('a failed generation is 500, or an SSE error event when streaming', async () => {
    backend.failWith = 'boom';
    try {
      let r = await chat({ messages: MSG });
      assert.equal(r.status, 500);
      assert.match(JSON.parse(r.body).error.message, /boom/);
      // before the first token: still a plain 500
      r = await chat({ messages: MSG, stream: true });
      assert.equal(r.status, 500);
      // after it: an error event, no [DONE]
      backend.failAfter = 1;
      r = await chat({ messages: MSG, stream: true });
      assert.equal(r.status, 200);
      const events = sseEvents(r.body);
      assert.equal((events[1] as ReturnType<typeof chunkBody>).choices[0].delta.content, 'echo ');
      assert.notEqual(events.at(-1), '[DONE]');
      assert.match((events.at(-1) as { error: { message: string } }).error.message, /boom/);
    } finally {
      backend.failWith = undefined;
      backend.failAfter = 0;
    }
  });

  test('a request refused because the queue is full is 429 with Retry-After, streaming or not', async () => {
    backend.failWith = 'the request queue is full (32 requests waiting for 8 batch slots); try again shortly';
    backend.failType = 'overloaded';
    try {
      for (const stream of [false, true]) {
        const r = await chat({ messages: MSG, stream, n: 2 });
        assert.equal(r.status, 429, `stream=${stream}: ${r.body}`);
        assert.equal(r.headers['retry-after'], '1');
        const error = JSON.parse(r.body).error;
        assert.equal(error.code, 'queue_full');
        assert.equal(error.type, 'rate_limit_error');
        assert.match(error.message, /queue is full/);
      }
    } finally {
      backend.failWith = undefined;
      backend.failType = undefined;
    }
  });

  test('connections beyond maxConnections are dropped; headers that do not arrive in time get 408', async () => {
    const other = await startOpenAiServer({ client: backend, port: 0, token: 'tok', modelId: 'm', maxConnections: 2, headersTimeoutMs: 400 });
    const sockets: net.Socket[] = [];
    try {
      const open = () => new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ host: '127.0.0.1', port: other.port }, () => resolve(s));
        s.on('error', () => undefined);
        s.once('error', reject);
        sockets.push(s);
      });
      const closed = (s: net.Socket) => new Promise<string>((resolve) => {
        let data = '';
        s.setEncoding('utf8');
        s.on('data', (c) => (data += c));
        s.once('close', () => resolve(data));
      });
      const [a, b] = [await open(), await open()];
      // Wait for the server to have accepted both before the third arrives.
      await new Promise((r) => setTimeout(r, 100));
      const third = await open();
      const t0 = Date.now();
      assert.equal(await closed(third), '', 'the third connection is closed without an answer');
      assert.ok(Date.now() - t0 < 300, 'at once, not by a timeout');
      // The first two sent nothing: the headers timeout answers 408 and closes them.
      a.write('GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n');
      const [ra, rb] = await Promise.all([closed(a), closed(b)]);
      assert.match(ra, /^HTTP\/1\.1 408 /);
      assert.match(rb, /^HTTP\/1\.1 408 |^$/);
      assert.ok(Date.now() - t0 < 3000, 'within a few checking intervals of 400 ms');
    } finally {
      for (const s of sockets) s.destroy();
      await other.close();
    }
  });

  test('a request the engine refuses (errorType invalid_request) is 400, streaming or not', async () => {
    backend.failWith = 'the prompt is longer than the context';
    backend.failType = 'invalid_request';
    try {
      for (const stream of [false, true]) {
        const r = await chat({ messages: MSG, stream });
        assert.equal(r.status, 400, `stream=${stream}`);
        assert.match(JSON.parse(r.body).error.message, /longer than the context/);
      }
    } finally {
      backend.failWith = undefined;
      backend.failType = undefined;
    }
  });

  test('context_length_exceeded from the engine is 400 with that code and the parameter', async () => {
    backend.failWith = 'the prompt has 9000 tokens and the model\'s context is 8192 tokens';
    backend.failType = 'invalid_request';
    backend.failCode = 'context_length_exceeded';
    try {
      for (const stream of [false, true]) {
        const r = await chat({ messages: MSG, stream });
        assert.equal(r.status, 400, `stream=${stream}`);
        const e = JSON.parse(r.body).error;
        assert.equal(e.code, 'context_length_exceeded');
        assert.equal(e.param, 'messages');
        assert.match(e.message, /9000 tokens .* 8192 tokens/);
      }
    } finally {
      backend.failWith = undefined;
      backend.failType = undefined;
      backend.failCode = undefined;
    }
  });

  test('GET /v1/models/{id}: the served model, else 404 model_not_found', async () => {
    let r = await request(`${server.url}/v1/models/m`);
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(Object.keys(JSON.parse(r.body)).sort(), ['created', 'id', 'object', 'owned_by']);
    assert.equal(JSON.parse(r.body).id, 'm');
    r = await request(`${server.url}/v1/models/gpt-4o`);
    assert.equal(r.status, 404);
    assert.equal(JSON.parse(r.body).error.code, 'model_not_found');
    assert.match(JSON.parse(r.body).error.message, /gpt-4o/);
    r = await request(`${server.url}/v1/models/m`, { method: 'POST', body: '{}' });
    assert.equal(r.status, 405);
  });

  test('/v1/completions: prompts x n choices, streamed as text_completion events', async () => {
    backend.calls = [];
    const complete = (body: unknown) => request(`${server.url}/v1/completions`, { body: JSON.stringify(body) });
    let r = await complete({ model: 'm', prompt: ['one', 'two'], n: 2, seed: 3, max_tokens: 8 });
    assert.equal(r.status, 200, r.body);
    const body = JSON.parse(r.body);
    assert.match(body.id, /^cmpl-/);
    assert.equal(body.object, 'text_completion');
    assert.deepEqual(body.choices.map((c: { text: string; index: number }) => [c.index, c.text]),
      [[0, 'echo one seed=3'], [1, 'echo one seed=4'], [2, 'echo two seed=5'], [3, 'echo two seed=6']]);
    assert.equal(body.usage.prompt_tokens, 20, 'each prompt counted once');
    assert.deepEqual(backend.calls.map((c) => [c.prompt, c.messages]), [['one', undefined], ['one', undefined], ['two', undefined], ['two', undefined]]);

    r = await complete({ prompt: 'hi there', stream: true, stream_options: { include_usage: true } });
    assert.equal(r.status, 200);
    const events = sseEvents(r.body);
    assert.equal(events.at(-1), '[DONE]');
    const chunks = events.slice(0, -1) as Array<{ object: string; choices: Array<{ text: string; finish_reason: string | null }>; usage?: unknown }>;
    assert.ok(chunks.every((c) => c.object === 'text_completion'));
    assert.equal(chunks.flatMap((c) => c.choices.map((x) => x.text)).join(''), backend.reply({ prompt: 'hi there', maxTokens: 1, sampling: backend.calls.at(-1)!.sampling }));
    assert.equal(chunks.at(-2)!.choices[0].finish_reason, 'stop');
    assert.ok(chunks.at(-1)!.usage);

    r = await complete({ prompt: 'x', echo: true });
    assert.equal(r.status, 400);
    assert.equal(JSON.parse(r.body).error.param, 'echo');
  });

  test('a client that goes away cancels its generation (streaming and not)', async () => {
    backend.stepMs = 50;
    try {
      for (const stream of [false, true]) {
        const before = backend.cancelled;
        const cancelled = new Promise<void>((resolve) => (backend.onCancel = resolve));
        await new Promise<void>((resolve, reject) => {
          const req = http.request(`${server.url}/v1/chat/completions`, {
            method: 'POST',
            headers: { authorization: 'Bearer tok', 'content-type': 'application/json' },
          });
          req.on('error', () => resolve());
          req.on('response', (res) => {
            res.once('data', () => {
              req.destroy();
              resolve();
            });
          });
          // Not streaming, nothing arrives before the end: leave once the generation has started.
          backend.onStart = () => {
            if (stream) return;
            req.destroy();
            resolve();
          };
          req.end(JSON.stringify({ messages: [{ role: 'user', content: 'a b c d e f g h i j k l m n o p' }], stream, max_tokens: 100 }));
        });
        await cancelled;
        assert.equal(backend.cancelled, before + 1, `stream=${stream}: generation cancelled`);
      }
      const text = await server.metrics.render();
      assert.match(text, /mlx_batch_http_client_disconnects_total 2\n/);
    } finally {
      backend.stepMs = 5;
      backend.onStart = backend.onCancel = undefined;
    }
  });

  test('/metrics over the fake backend', async () => {
    const r = await request(`${server.url}/metrics`);
    assert.equal(r.status, 200);
    assert.match(String(r.headers['content-type']), /^text\/plain/);
    assert.match(r.body, /mlx_batch_generated_tokens_total 50\n/);
    assert.match(r.body, /mlx_batch_http_requests_total\{route="\/v1\/chat\/completions",code="200"\} \d+/);
    assert.match(r.body, /mlx_batch_http_requests_total\{route="\/v1\/chat\/completions",code="400"\} \d+/);
    assert.match(r.body, /mlx_batch_time_to_first_token_seconds_count \d+/);
  });

  test('streaming: headers after the grace period, heartbeats while nothing is generated', async () => {
    const other = await startOpenAiServer({ client: backend, port: 0, token: 'tok', modelId: 'm', streamHeaderGraceMs: 50, heartbeatMs: 100 });
    backend.stepMs = 400;
    try {
      const t0 = performance.now();
      let headersAt = 0;
      const body = await new Promise<string>((resolve, reject) => {
        const req = http.request(`${other.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: 'Bearer tok', 'content-type': 'application/json' },
        });
        req.on('response', (res) => {
          headersAt = performance.now() - t0;
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c) => (text += c));
          res.on('end', () => resolve(text));
        });
        req.on('error', reject);
        req.end(JSON.stringify({ messages: MSG, stream: true, max_tokens: 2 }));
      });
      // Timers fire in deadline order, however loaded the machine: the 50 ms grace before the 400 ms step.
      assert.ok(t0 + headersAt < backend.firstDeltaAt, `headers after ${headersAt.toFixed(0)} ms, before the first token`);
      assert.match(body, /^: keep-alive$/m);
      const events = sseEvents(body);
      assert.equal(events.at(-1), '[DONE]');
      assert.equal(
        (events.slice(0, -1) as Array<ReturnType<typeof chunkBody>>).map((c) => c.choices[0]?.delta.content ?? '').join(''),
        'echo hi ',
      );
    } finally {
      backend.stepMs = 5;
      await other.close();
    }
  });

  test('streaming: a refusal that comes after the header grace period is still 400 / 429 with a JSON body', async () => {
    // The engine takes 200 ms to refuse (a long prompt to tokenize, a schema to
    // compile), four times the grace period: the headers wait for its verdict.
    const other = await startOpenAiServer({ client: backend, port: 0, token: 'tok', modelId: 'm', streamHeaderGraceMs: 50 });
    backend.prepareMs = 200;
    try {
      backend.refuse = () => ({ error: "the prompt has 9000 tokens and the model's context is 8192 tokens", errorCode: 'context_length_exceeded', errorParam: 'messages' });
      let r = await request(`${other.url}/v1/chat/completions`, { body: JSON.stringify({ messages: MSG, stream: true }) });
      assert.equal(r.status, 400, r.body);
      assert.match(String(r.headers['content-type']), /^application\/json/);
      let error = JSON.parse(r.body).error;
      assert.equal(error.code, 'context_length_exceeded');
      assert.equal(error.param, 'messages');
      assert.match(error.message, /9000 tokens/);

      backend.refuse = () => ({ error: 'the request queue is full', errorType: 'overloaded' });
      r = await request(`${other.url}/v1/chat/completions`, { body: JSON.stringify({ messages: MSG, stream: true, n: 2 }) });
      assert.equal(r.status, 429, r.body);
      assert.equal(r.headers['retry-after'], '1');
      assert.equal(JSON.parse(r.body).error.code, 'queue_full');

      // n choices: the headers wait for every choice. The first prompt is
      // accepted at once and its whole answer generated; the second is
      // refused 300 ms later: 400, and nothing of the first is sent.
      backend.prepareMs = (p) => (p.prompt === 'long' ? 300 : 0);
      backend.refuse = (p) => (p.prompt === 'long' ? { error: 'the prompt is too long', errorCode: 'context_length_exceeded', errorParam: 'prompt' } : undefined);
      const complete = (body: unknown) => request(`${other.url}/v1/completions`, { body: JSON.stringify(body) });
      r = await complete({ prompt: ['short', 'long'], stream: true, max_tokens: 8 });
      assert.equal(r.status, 400, r.body);
      error = JSON.parse(r.body).error;
      assert.equal(error.code, 'context_length_exceeded');
      assert.equal(error.param, 'prompt');

      // Both accepted, the second 300 ms late: what the first made meanwhile
      // was held, then sent after the headers, none of it lost.
      backend.refuse = undefined;
      backend.calls = [];
      r = await complete({ prompt: ['short', 'long'], stream: true, seed: 1, max_tokens: 8 });
      assert.equal(r.status, 200, r.body);
      const events = sseEvents(r.body);
      assert.equal(events.at(-1), '[DONE]');
      const chunks = events.slice(0, -1) as Array<{ choices: Array<{ index: number; text: string; finish_reason: string | null }> }>;
      for (const [i, prompt] of ['short', 'long'].entries()) {
        const mine = chunks.flatMap((c) => c.choices).filter((c) => c.index === i);
        assert.equal(mine.map((c) => c.text).join(''), `echo ${prompt} seed=${1 + i}`);
        assert.equal(mine.filter((c) => c.finish_reason).length, 1);
      }
    } finally {
      backend.prepareMs = 0;
      backend.refuse = undefined;
      await other.close();
    }
  });

  test('streaming: a request the engine has not accepted gets its headers after streamAcceptTimeoutMs; a refusal after that is an SSE error', async () => {
    // A request waiting in a long queue must get its headers before client
    // timeouts do: past streamAcceptTimeoutMs they go out, and a refusal that
    // comes later can only be an error event.
    const other = await startOpenAiServer({ client: backend, port: 0, token: 'tok', modelId: 'm', streamHeaderGraceMs: 10, streamAcceptTimeoutMs: 100 });
    backend.prepareMs = 400;
    backend.refuse = () => ({ error: 'the prompt is too long', errorCode: 'context_length_exceeded', errorParam: 'messages' });
    try {
      const r = await request(`${other.url}/v1/chat/completions`, { body: JSON.stringify({ messages: MSG, stream: true }) });
      assert.equal(r.status, 200, r.body);
      assert.match(String(r.headers['content-type']), /^text\/event-stream/);
      const events = sseEvents(r.body);
      assert.notEqual(events.at(-1), '[DONE]');
      assert.equal((events.at(-1) as { error: { code: string } }).error.code, 'context_length_exceeded');
    } finally {
      backend.prepareMs = 0;
      backend.refuse = undefined;
      await other.close();
    }
  });

  test('malformed request targets get a JSON answer naming them; repeated slashes reach their route', async () => {
    const raw = (target: string, opts: { method?: string; token?: string | null } = {}) => rawRequest(server.port, target, opts);
    // '//' once made new URL() throw: the connection was dropped without an answer.
    let r = await raw('//');
    assert.equal(r.status, 404, r.body);
    let error = JSON.parse(r.body).error;
    assert.equal(error.code, 'not_found');
    assert.equal(error.message, 'no route GET //');
    r = await raw('//', { token: null });
    assert.equal(r.status, 401, r.body);
    assert.equal(JSON.parse(r.body).error.code, 'invalid_api_key');
    // A base URL ending in '/' joined with '/models': the route it means, not a host named v1.
    for (const target of ['//v1/models', '///v1//models/', '/v1/models?x=1', `http://127.0.0.1:${server.port}/v1/models`]) {
      r = await raw(target);
      assert.equal(r.status, 200, `${target}: ${r.body}`);
      assert.deepEqual(JSON.parse(r.body).data.map((m: { id: string }) => m.id), ['m'], target);
    }
    r = await raw('//v1/models/m');
    assert.equal(r.status, 200, r.body);
    assert.equal(JSON.parse(r.body).id, 'm');
    r = await raw('//v1/chat/completions');
    assert.equal(r.status, 405, r.body);
    r = await raw('//nope//x?y=//z');
    assert.equal(r.status, 404, r.body);
    assert.equal(JSON.parse(r.body).error.message, 'no route GET //nope//x');
    // A target that is not a path at all.
    r = await raw('*', { method: 'OPTIONS' });
    assert.equal(r.status, 400, r.body);
    error = JSON.parse(r.body).error;
    assert.equal(error.code, 'invalid_path');
    assert.match(error.message, /"\*"/);
    // The server still answers on a fresh connection.
    assert.equal((await request(`${server.url}/v1/models`)).status, 200);
    assert.deepEqual(requestPath('//v1//models/'), { path: '/v1/models', shown: '//v1//models/' });
    assert.deepEqual(requestPath('/v1/./models/../models'), { path: '/v1/models', shown: '/v1/./models/../models' });
    assert.throws(() => requestPath('x'), (e: unknown) => e instanceof HttpError && e.status === 400);
  });

  test('close() cancels generations in flight and stops listening', async () => {
    const other = await startOpenAiServer({ client: backend, port: 0, token: 'tok', modelId: 'm' });
    backend.stepMs = 50;
    const started = new Promise<void>((resolve) => (backend.onStart = resolve));
    try {
      const pending = request(`${other.url}/v1/chat/completions`, {
        body: JSON.stringify({ messages: [{ role: 'user', content: 'a b c d e f g h i j k l m n o p q r s t' }] }),
      });
      await started;
      const cancelledBefore = backend.cancelled;
      await other.close();
      const r = await pending;
      // Cancelled, not waited for: the generation would have ended 200 after 20 steps.
      assert.equal(r.status, 503);
      assert.equal(backend.cancelled, cancelledBefore + 1, 'the generation in flight was cancelled');
      await assert.rejects(request(`${other.url}/v1/models`));
    } finally {
      backend.stepMs = 5;
      backend.onStart = undefined;
    }
  });
});

// ---------------------------------------------------------------------------
// The real sidecar behind the server, driven by the official openai package

const execFileAsync = promisify(execFile);


/** A non-loopback IPv4 address of this machine, if it has one. */
function externalAddress(): string | undefined {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

function connectError(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.setTimeout(3000, () => {
      s.destroy();
      resolve('ETIMEDOUT');
    });
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

/** Parses Prometheus text into name{labels} -> value. */
function scrapeValues(text: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m) values.set(m[1], Number(m[2]));
  }
  return values;
}

describe('server over the real sidecar, with the openai package', { timeout: 20 * 60_000 }, () => {
  let client: SidecarClient;
  let server: OpenAiServer;
  const token = randomBytes(16).toString('hex');
  const modelId = 'SmolLM2-135M-Instruct';
  const sidecarLog: string[] = [];

  async function py<T = any>(command: string, args: unknown = {}, apiKey = token, url = server.url): Promise<T> {
    const { stdout } = await execFileAsync(PYTHON, [CLIENT_PY, `${url}/v1`, command, JSON.stringify(args)], {
      env: { ...process.env, MLX_BATCH_API_KEY: apiKey },
      maxBuffer: 64 << 20,
      timeout: 15 * 60_000,
    });
    return JSON.parse(stdout) as T;
  }

  async function scrape(): Promise<Map<string, number>> {
    const r = await request(`${server.url}/metrics`, { token });
    assert.equal(r.status, 200);
    return scrapeValues(r.body);
  }

  const ask = (q: string, extra: Record<string, unknown> = {}) => ({
    model: modelId,
    messages: [{ role: 'user', content: q }],
    temperature: 0,
    max_tokens: 24,
    ...extra,
  });

  before(async () => {
    client = new SidecarClient(
      { maxBatch: 32 },
      { sidecarPath: path.join(ROOT, 'src', 'engine', 'sidecar.ts'), log: (l) => sidecarLog.push(l) },
    );
    await client.start();
    server = await startOpenAiServer({ client, port: 0, token, modelId });
  });

  after(async () => {
    await server?.close();
    await client?.stop();
  });

  test('answers on 127.0.0.1 only', async (t) => {
    assert.equal(new URL(server.url).hostname, '127.0.0.1');
    assert.equal(await connectError('127.0.0.1', server.port), 'connected');
    const ext = externalAddress();
    if (!ext) {
      t.skip('no non-loopback IPv4 address');
      return;
    }
    assert.equal(await connectError(ext, server.port), 'ECONNREFUSED', `connecting to ${ext}:${server.port}`);
  });

  test('models.list', async () => {
    const r = await py('models');
    assert.deepEqual(r.data.map((m: { id: string }) => m.id), [modelId]);
  });

  test('non-streaming and streaming chat completions agree (greedy)', async () => {
    const plain = await py('chat', ask('What is the capital of France?'));
    assert.equal(plain.object, 'chat.completion');
    assert.equal(plain.model, modelId);
    const text = plain.choices[0].message.content as string;
    assert.match(text, /Paris/);
    assert.ok(['stop', 'length'].includes(plain.choices[0].finish_reason));
    assert.ok(plain.usage.prompt_tokens > 10);
    assert.ok(plain.usage.completion_tokens >= 1 && plain.usage.completion_tokens <= 24);
    assert.equal(plain.usage.total_tokens, plain.usage.prompt_tokens + plain.usage.completion_tokens);
    assert.equal(typeof plain.usage.prompt_tokens_details.cached_tokens, 'number');

    const streamed = await py('stream', { ...ask('What is the capital of France?'), stream_options: { include_usage: true } });
    assert.ok(!streamed.error, JSON.stringify(streamed));
    assert.deepEqual(streamed.roles, ['assistant']);
    assert.deepEqual(streamed.texts, [text]);
    assert.deepEqual(streamed.finish_reasons, [plain.choices[0].finish_reason]);
    assert.equal(streamed.usage.completion_tokens, plain.usage.completion_tokens);
    assert.equal(streamed.usage.prompt_tokens, plain.usage.prompt_tokens);
    assert.ok(streamed.chunks.length >= 3, 'more than one content chunk');
  });

  test('n choices with a seed', async () => {
    const r = await py('chat', ask('Suggest a name for a pet turtle.', { n: 3, seed: 5, temperature: 1, max_tokens: 12 }));
    assert.equal(r.choices.length, 3);
    assert.deepEqual(r.choices.map((c: { index: number }) => c.index), [0, 1, 2]);
    // the same seeds give the same choices again
    const again = await py('chat', ask('Suggest a name for a pet turtle.', { n: 3, seed: 5, temperature: 1, max_tokens: 12 }));
    assert.deepEqual(
      again.choices.map((c: { message: { content: string } }) => c.message.content),
      r.choices.map((c: { message: { content: string } }) => c.message.content),
    );
  });

  test('without a seed, sampled choices and repeated requests differ', async () => {
    const request = ask('Suggest a name for a pet turtle.', { n: 3, temperature: 1, max_tokens: 16 });
    const first = await py('chat', request);
    const second = await py('chat', request);
    assert.ok(!first.error && !second.error, JSON.stringify([first, second]));
    const texts = (r: { choices: Array<{ message: { content: string } }> }) => r.choices.map((c) => c.message.content);
    assert.ok(new Set(texts(first)).size > 1, `three choices, all the same: ${JSON.stringify(texts(first))}`);
    assert.notDeepEqual(texts(second), texts(first), 'a repeated request samples again');
  });

  test('32 concurrent requests all complete, batched, and equal the same prompts run one at a time', async () => {
    const requests = QUESTIONS.map((q) => ask(q));
    let maxRunning = 0;
    let polling = true;
    const poller = (async () => {
      while (polling) {
        const v = await scrape();
        maxRunning = Math.max(maxRunning, v.get('mlx_batch_running_requests') ?? 0);
        await new Promise((r) => setTimeout(r, 250));
      }
    })();
    const t0 = performance.now();
    const together = await py('batch', { requests, concurrent: true });
    const concurrentS = (performance.now() - t0) / 1000;
    polling = false;
    await poller;
    const t1 = performance.now();
    const alone = await py('batch', { requests, concurrent: false });
    const sequentialS = (performance.now() - t1) / 1000;
    const tokens = together.results.reduce((s: number, r: { usage: { completion_tokens: number } }) => s + r.usage.completion_tokens, 0);
    console.log(
      `# 32 requests: concurrent ${concurrentS.toFixed(1)} s, one at a time ${sequentialS.toFixed(1)} s; ` +
        `${tokens} tokens; most rows decoding together: ${maxRunning}`,
    );
    for (const [i, r] of together.results.entries()) {
      assert.ok(!r.error, `request ${i}: ${JSON.stringify(r)}`);
      assert.ok(['stop', 'length'].includes(r.finish_reason));
    }
    assert.ok(maxRunning > 1, `requests were decoded together (max running ${maxRunning})`);
    const mismatches = together.results
      .map((r: { text: string }, i: number) => ({ i, together: r.text, alone: alone.results[i].text }))
      .filter((m: { together: string; alone: string }) => m.together !== m.alone);
    assert.deepEqual(mismatches, [], 'greedy outputs differ between batched and one-at-a-time');
  });

  test('a wrong token gets AuthenticationError (401)', async () => {
    const r = await py('chat', ask('hi'), 'not-the-token');
    assert.equal(r.error, 'AuthenticationError');
    assert.equal(r.status, 401);
    assert.equal(r.body.code, 'invalid_api_key');
  });

  test('bad parameters get BadRequestError (400) naming the parameter', async () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ temperature: 3 }, 'temperature'],
      [{ top_p: 1.5 }, 'top_p'],
      [{ max_tokens: 0 }, 'max_tokens'],
      [{ n: 17 }, 'n'],
      [{ messages: [] }, 'messages'],
      [{ messages: [{ role: 'user' }] }, 'messages[0].content'],
      [{ stop: [''] }, 'stop'],
      [{ response_format: { type: 'json_schema', json_schema: { name: 'x' } } }, 'response_format.json_schema.schema'],
    ];
    for (const [extra, param] of cases) {
      const r = await py('chat', ask('hi', extra));
      assert.equal(r.error, 'BadRequestError', `${JSON.stringify(extra)}: ${JSON.stringify(r)}`);
      assert.equal(r.status, 400);
      assert.equal(r.body.param, param);
    }
    const unknown = await py('chat', ask('hi', { model: 'gpt-4o' }));
    assert.equal(unknown.error, 'NotFoundError');
  });

  test('models.retrieve: the served id, NotFoundError for another', async () => {
    const m = await py('model', { id: modelId });
    assert.equal(m.id, modelId);
    assert.equal(m.object, 'model');
    const other = await py('model', { id: 'gpt-4o' });
    assert.equal(other.error, 'NotFoundError');
    assert.equal(other.body.code, 'model_not_found');
  });

  test('completions: a raw prompt, streamed or not, one choice set per prompt', async () => {
    const plain = await py('complete', { model: modelId, prompt: 'The capital of France is', temperature: 0, max_tokens: 8 });
    assert.ok(!plain.error, JSON.stringify(plain));
    assert.equal(plain.object, 'text_completion');
    assert.match(plain.choices[0].text, /Paris/);
    assert.ok(['stop', 'length'].includes(plain.choices[0].finish_reason));
    const tokenizer = await Tokenizer.fromModel(defaultModelPath());
    assert.equal(plain.usage.prompt_tokens, tokenizer.encode('The capital of France is').length, 'no chat template');
    const streamed = await py('complete_stream', { model: modelId, prompt: 'The capital of France is', temperature: 0, max_tokens: 8,
      stream_options: { include_usage: true } });
    assert.ok(!streamed.error, JSON.stringify(streamed));
    assert.deepEqual(streamed.texts, [plain.choices[0].text]);
    assert.deepEqual(streamed.finish_reasons, [plain.choices[0].finish_reason]);
    assert.equal(streamed.usage.completion_tokens, plain.usage.completion_tokens);
    const two = await py('complete', { model: modelId, prompt: ['The capital of France is', 'The capital of Italy is'], temperature: 0, max_tokens: 8 });
    assert.deepEqual(two.choices.map((c: { index: number }) => c.index), [0, 1]);
    assert.equal(two.choices[0].text, plain.choices[0].text);
    assert.match(two.choices[1].text, /Rome/);
    const ids = await py('complete', { model: modelId, prompt: [1, 2, 3] });
    assert.equal(ids.error, 'BadRequestError');
    assert.equal(ids.body.param, 'prompt');
  });

  test('completions: suffix on a model without fill-in-the-middle tokens is 400 naming suffix', async () => {
    const r = await py('complete', { model: modelId, prompt: 'def add(a, b):\n    ', suffix: '\n\nprint(add(1, 2))', max_tokens: 8 });
    assert.equal(r.error, 'BadRequestError', JSON.stringify(r));
    assert.equal(r.body.param, 'suffix');
    assert.match(r.body.message, /fill-in-the-middle/);
  });

  test('presence_penalty and frequency_penalty are accepted and change a greedy loop', async () => {
    const q = ask('Write a haiku about rain.', { max_tokens: 40 });
    const plain = await py('chat', q);
    const penalized = await py('chat', { ...q, presence_penalty: 1, frequency_penalty: 2 });
    assert.ok(!plain.error && !penalized.error, JSON.stringify([plain, penalized]));
    assert.notEqual(penalized.choices[0].message.content, plain.choices[0].message.content);
    const legacy = await py('complete', { model: modelId, prompt: 'Rain, rain,', temperature: 0, max_tokens: 8, presence_penalty: -0.5, frequency_penalty: 0.5 });
    assert.ok(!legacy.error, JSON.stringify(legacy));
    const bad = await py('chat', ask('hi', { presence_penalty: 2.5 }));
    assert.equal(bad.error, 'BadRequestError');
    assert.equal(bad.body.param, 'presence_penalty');
  });

  test('max_tokens is cut to what the context leaves; a prompt that fills the context is context_length_exceeded', async () => {
    const context = client.info!.contextLength;
    // prompt + max_tokens over the context: cut, not refused. (Running into the
    // context's end, finish_reason 'length', is in test/scheduler.test.ts with a
    // small context: here it would prefill 8k tokens, minutes on a CPU.)
    const fits = await py('chat', ask('Say OK.', { max_tokens: context - 2, stop: ['\n', '.'] }));
    assert.ok(!fits.error, JSON.stringify(fits).slice(0, 500));
    assert.ok(fits.usage.prompt_tokens + context - 2 > context);
    const unit = ' x';
    const over = await py('chat', ask(unit.repeat(context + 10), { max_tokens: 10 }));
    assert.equal(over.error, 'BadRequestError', JSON.stringify(over).slice(0, 500));
    assert.equal(over.body.code, 'context_length_exceeded');
    assert.match(over.body.message, new RegExp(`the prompt has \\d+ tokens and the model's context is ${context} tokens`));
    const legacyOver = await py('complete', { model: modelId, prompt: unit.repeat(context), max_tokens: 10 });
    assert.equal(legacyOver.body?.code, 'context_length_exceeded', JSON.stringify(legacyOver).slice(0, 500));
    assert.equal(legacyOver.body.param, 'prompt');
  });

  test('streaming: a prompt refused once tokenized is BadRequestError (400), even past the header grace period', async () => {
    // A grace period of 1 ms: any refusal after arrival used to come as HTTP 200
    // and an SSE error event (an APIError without a status in the openai package).
    const quick = await startOpenAiServer({ client, port: 0, token, modelId, streamHeaderGraceMs: 1 });
    try {
      const context = client.info!.contextLength;
      const over = await py('stream', ask(' x'.repeat(context + 10), { max_tokens: 10 }), token, quick.url);
      assert.equal(over.error, 'BadRequestError', JSON.stringify(over).slice(0, 500));
      assert.equal(over.status, 400);
      assert.equal(over.body.code, 'context_length_exceeded');
      assert.equal(over.body.param, 'messages');
      const legacyOver = await py('complete_stream', { model: modelId, prompt: ' x'.repeat(context), max_tokens: 10 }, token, quick.url);
      assert.equal(legacyOver.error, 'BadRequestError', JSON.stringify(legacyOver).slice(0, 500));
      assert.equal(legacyOver.body.code, 'context_length_exceeded');
      // An invalid schema, refused by the engine's compiler.
      const schema = await py('stream', ask('hi', { response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'foo' } } } }),
        token, quick.url);
      assert.equal(schema.error, 'BadRequestError', JSON.stringify(schema).slice(0, 500));
      // Accepted requests stream as before (the sidecar's prefill event opens the stream), n choices too.
      const plain = await py('chat', ask('What is the capital of France?'));
      const streamed = await py('stream', { ...ask('What is the capital of France?', { n: 2 }), stream_options: { include_usage: true } }, token, quick.url);
      assert.ok(!streamed.error, JSON.stringify(streamed).slice(0, 500));
      assert.deepEqual(streamed.roles, ['assistant', 'assistant']);
      assert.deepEqual(streamed.texts, [plain.choices[0].message.content, plain.choices[0].message.content]);
      assert.equal(streamed.usage.completion_tokens, 2 * plain.usage.completion_tokens);
    } finally {
      await quick.close();
    }
  });

  test('seed -1 is random; negative and 64-bit seeds are taken and repeat; top_p 0 is greedy', async () => {
    const q = 'Suggest a name for a pet turtle.';
    const texts = (r: { choices: Array<{ message: { content: string } }> }) => r.choices.map((c) => c.message.content);
    const random = await py('chat', ask(q, { n: 3, seed: -1, temperature: 1, max_tokens: 16 }));
    assert.ok(!random.error, JSON.stringify(random).slice(0, 500));
    assert.ok(new Set(texts(random)).size > 1, `seed -1: three choices, all the same: ${JSON.stringify(texts(random))}`);
    for (const seed of [-2, 2 ** 62]) {
      const first = await py('chat', ask(q, { n: 2, seed, temperature: 1, max_tokens: 12 }));
      assert.ok(!first.error, `seed ${seed}: ${JSON.stringify(first).slice(0, 500)}`);
      const again = await py('chat', ask(q, { n: 2, seed, temperature: 1, max_tokens: 12 }));
      assert.deepEqual(texts(again), texts(first), `seed ${seed} repeats`);
    }
    const greedy = await py('chat', ask(q, { max_tokens: 12 }));
    const topP0 = await py('chat', ask(q, { max_tokens: 12, temperature: 1.5, top_p: 0, seed: 3 }));
    assert.ok(!topP0.error, JSON.stringify(topP0).slice(0, 500));
    assert.deepEqual(texts(topP0), texts(greedy));
  });

  test('logprobs: greedy tokens are the likeliest of their top_logprobs, probabilities sum to at most 1, streamed alike', async () => {
    const q = ask('Name three colors.', { max_tokens: 16, logprobs: true, top_logprobs: 5 });
    const r = await py('chat', q);
    assert.ok(!r.error, JSON.stringify(r));
    const content = r.choices[0].logprobs.content as Array<{ token: string; logprob: number; bytes: number[]; top_logprobs: Array<{ token: string; logprob: number }> }>;
    assert.ok(content.length >= 1);
    for (const e of content) {
      assert.equal(e.top_logprobs.length, 5);
      assert.equal(e.logprob, Math.max(...e.top_logprobs.map((t) => t.logprob)));
      assert.equal(e.token, e.top_logprobs[0].token);
      assert.ok(e.top_logprobs.reduce((sum, t) => sum + Math.exp(t.logprob), 0) <= 1 + 1e-6);
      assert.ok(e.logprob <= 0);
    }
    assert.equal(content.map((e) => e.token).join(''), r.choices[0].message.content);
    const streamed = await py('stream', q);
    const fromChunks = streamed.chunks.flatMap((c: { choices: Array<{ logprobs: { content: unknown[] } | null }> }) =>
      c.choices.flatMap((x) => x.logprobs?.content ?? []));
    assert.deepEqual(fromChunks, content);
    assert.deepEqual(streamed.texts, [r.choices[0].message.content]);
    // Without logprobs: null, as before.
    assert.equal((await py('chat', ask('Name three colors.', { max_tokens: 4 }))).choices[0].logprobs, null);
    // Legacy completions: logprobs k.
    const legacy = await py('complete', { model: modelId, prompt: 'The capital of France is', temperature: 0, max_tokens: 6, logprobs: 3 });
    const lp = legacy.choices[0].logprobs;
    assert.equal(lp.tokens.join(''), legacy.choices[0].text);
    assert.equal(lp.token_logprobs.length, lp.tokens.length);
    lp.top_logprobs.forEach((top: Record<string, number>, k: number) => {
      assert.ok(Object.keys(top).length >= 1 && Object.keys(top).length <= 3);
      assert.equal(lp.token_logprobs[k], Math.max(...Object.values(top)));
    });
    assert.deepEqual(lp.text_offset, lp.tokens.map((_: string, k: number) => lp.tokens.slice(0, k).join('').length));
  });

  test('response_format json_schema returns JSON that parses and validates', async () => {
    const schema = {
      type: 'object',
      properties: { city: { type: 'string' }, country: { type: 'string' }, population_millions: { type: 'number' } },
      required: ['city', 'country', 'population_millions'],
      additionalProperties: false,
    };
    const r = await py(
      'chat',
      ask('Give the capital of France as JSON.', {
        max_tokens: 64,
        response_format: { type: 'json_schema', json_schema: { name: 'capital', schema, strict: true } },
      }),
    );
    assert.ok(!r.error, JSON.stringify(r));
    const content = r.choices[0].message.content as string;
    assert.equal(r.choices[0].finish_reason, 'stop', `ended by the schema, not by length: ${content}`);
    const value = JSON.parse(content);
    const validate = new Ajv().compile(schema);
    assert.ok(validate(value), `${content}: ${JSON.stringify(validate.errors)}`);

    const obj = await py('chat', ask('Describe a cat as a JSON object.', { max_tokens: 64, response_format: { type: 'json_object' } }));
    assert.ok(!obj.error, JSON.stringify(obj));
    if (obj.choices[0].finish_reason === 'stop') {
      const parsed = JSON.parse(obj.choices[0].message.content);
      assert.equal(typeof parsed, 'object');
      assert.ok(parsed !== null && !Array.isArray(parsed));
    }
  });

  test('/metrics has the expected names and the counters follow the requests', async () => {
    const before = await scrape();
    const r = await py('chat', ask('What is 12 times 12?'));
    // A 400 of this test's own, so the count does not rest on earlier tests.
    const bad = await request(`${server.url}/v1/chat/completions`, { token, body: JSON.stringify({ messages: [], max_tokens: 1 }) });
    assert.equal(bad.status, 400);
    const afterOne = await scrape();
    const delta = (name: string) => (afterOne.get(name) ?? 0) - (before.get(name) ?? 0);
    const finish = r.choices[0].finish_reason as string;
    assert.equal(delta(`mlx_batch_requests_total{finish_reason="${finish}"}`), 1);
    assert.equal(delta('mlx_batch_generated_tokens_total'), r.usage.completion_tokens);
    assert.equal(delta('mlx_batch_prompt_tokens_total'), r.usage.prompt_tokens);
    assert.equal(delta('mlx_batch_cached_prompt_tokens_total'), r.usage.prompt_tokens_details.cached_tokens);
    assert.equal(delta('mlx_batch_prefill_tokens_total'), r.usage.prompt_tokens - r.usage.prompt_tokens_details.cached_tokens);
    assert.equal(delta('mlx_batch_http_requests_total{route="/v1/chat/completions",code="200"}'), 1);
    for (const name of [
      'mlx_batch_running_requests',
      'mlx_batch_prefilling_requests',
      'mlx_batch_queued_requests',
      'mlx_batch_kv_cache_bytes',
      'mlx_batch_kv_cache_budget_bytes',
      'mlx_batch_decode_tokens_per_second',
      'mlx_batch_prefill_tokens_per_second',
      'mlx_batch_requests_total{finish_reason="cancelled"}',
      'mlx_batch_requests_total{finish_reason="error"}',
    ]) {
      assert.ok(afterOne.has(name), `missing ${name}`);
    }
    assert.equal(afterOne.get('mlx_batch_kv_cache_budget_bytes'), client.info!.kvBudgetBytes);
    assert.equal(afterOne.get('mlx_batch_engine_up'), 1);
    assert.equal(delta('mlx_batch_http_requests_total{route="/v1/chat/completions",code="400"}'), 1);
  });

  test('a client that disconnects mid-stream cancels its request', async () => {
    const before = await scrape();
    const r = await py('disconnect', {
      request: ask('Write a long story about a dragon who learns to code.', { max_tokens: 400 }),
      after_chunks: 3,
    });
    assert.equal(r.chunks_read, 3);
    const cancelled = 'mlx_batch_requests_total{finish_reason="cancelled"}';
    const t0 = Date.now();
    let now = await scrape();
    while ((now.get(cancelled) ?? 0) === (before.get(cancelled) ?? 0) && Date.now() - t0 < 10_000) {
      await new Promise((res) => setTimeout(res, 100));
      now = await scrape();
    }
    assert.equal((now.get(cancelled) ?? 0) - (before.get(cancelled) ?? 0), 1, 'one request cancelled');
    assert.equal((now.get('mlx_batch_http_client_disconnects_total') ?? 0) - (before.get('mlx_batch_http_client_disconnects_total') ?? 0), 1);
    const generated = (now.get('mlx_batch_generated_tokens_total') ?? 0) - (before.get('mlx_batch_generated_tokens_total') ?? 0);
    assert.ok(generated < 100, `stopped early: ${generated} tokens generated, not 400`);
    assert.equal(now.get('mlx_batch_running_requests'), 0);
  });

  test('curl: one plain call', { skip: spawnSync('curl', ['--version']).status !== 0 ? 'curl is not installed' : false }, async () => {
    const { stdout } = await execFileAsync('curl', [
      '-sS', '--fail-with-body', '--max-time', '120',
      '-H', `Authorization: Bearer ${token}`,
      '-H', 'Content-Type: application/json',
      '-d', JSON.stringify(ask('What is the capital of France?')),
      `${server.url}/v1/chat/completions`,
    ]);
    const body = JSON.parse(stdout);
    assert.equal(body.object, 'chat.completion');
    assert.match(body.choices[0].message.content, /Paris/);
  });

  /** `mlx-batch serve` on a free port; the caller stops it. */
  function spawnServeCli(env: NodeJS.ProcessEnv) {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'cli.ts'), 'serve', '--port', '0', '--batch', '2', '--kv-budget', '256MiB'], {
      cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const log = { out: '', err: '' };
    child.stderr!.on('data', (c) => (log.err += c));
    return { child, exited, log };
  }

  /** Resolves once serve printed its URL (its whole banner is then in log.out). */
  function untilServing(child: ReturnType<typeof spawnServeCli>['child'], exited: Promise<number | null>, log: { out: string; err: string }) {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no URL within 120 s: ${log.out} ${log.err}`)), 120_000);
      child.stdout!.on('data', (c) => {
        log.out += c;
        if (/Ctrl-C to stop/.test(log.out)) {
          clearTimeout(timer);
          resolve();
        }
      });
      void exited.then((code) => reject(new Error(`serve exited (${code}): ${log.err}`)));
    });
  }

  test('mlx-batch serve takes its token from MLX_BATCH_TOKEN and does not print it', async () => {
    const envToken = randomBytes(12).toString('hex');
    const { child, exited, log } = spawnServeCli({ ...process.env, MLX_BATCH_TOKEN: envToken });
    try {
      await untilServing(child, exited, log);
      const { out } = log;
      const url = /at (http:\/\/127\.0\.0\.1:\d+)\/v1/.exec(out)?.[1];
      assert.ok(url, out);
      assert.ok(!out.includes(envToken) && !log.err.includes(envToken), 'the token is not printed');
      assert.match(out, /token: as given by --token \/ MLX_BATCH_TOKEN/);
      assert.equal((await request(`${url}/v1/models`, { token: envToken })).status, 200);
      assert.equal((await request(`${url}/v1/models`, { token: 'wrong' })).status, 401);
      child.kill('SIGTERM');
      assert.equal(await exited, 0, log.err);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    }
  });

  test('mlx-batch serve: prints URL and token, answers, stops cleanly on SIGTERM', async () => {
    const { child, exited, log } = spawnServeCli(Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'MLX_BATCH_TOKEN')));
    try {
      await untilServing(child, exited, log);
      const { out } = log;
      const url = /at (http:\/\/127\.0\.0\.1:\d+)\/v1/.exec(out)?.[1];
      const cliToken = /^token: (\S+)$/m.exec(out)?.[1];
      assert.ok(url && cliToken, out);
      assert.ok(cliToken.length >= 32, 'a random token of 24 bytes');
      assert.match(out, /curl http:\/\/127\.0\.0\.1:\d+\/v1\/chat\/completions -H "Authorization: Bearer /);
      const r = await request(`${url}/v1/chat/completions`, { token: cliToken, body: JSON.stringify(ask('What is the capital of France?', { model: undefined })) });
      assert.equal(r.status, 200, r.body);
      assert.match(JSON.parse(r.body).choices[0].message.content, /Paris/);
      assert.equal((await request(`${url}/v1/models`, { token: 'wrong' })).status, 401);
      child.kill('SIGTERM');
      assert.equal(await exited, 0, log.err);
      assert.match(log.err, /SIGTERM: stopping/);
      await assert.rejects(request(`${url}/v1/models`, { token: cliToken }));
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    }
  });
});

describe('a bounded queue under a flood, over the real sidecar', { timeout: 10 * 60_000 }, () => {
  let client: SidecarClient;
  let server: OpenAiServer;
  const token = randomBytes(16).toString('hex');

  before(async () => {
    client = new SidecarClient(
      { maxBatch: 8, maxQueuedRequests: 32 },
      { sidecarPath: path.join(ROOT, 'src', 'engine', 'sidecar.ts') },
    );
    await client.start();
    server = await startOpenAiServer({ client, port: 0, token, modelId: 'm' });
  });

  after(async () => {
    await server?.close();
    await client?.stop();
  });

  test('200 requests against a queue of 32: each is answered 200 or 429, then the server serves normally', async () => {
    const ask = (i: number) => ({ model: 'm', messages: [{ role: 'user', content: `Say the number ${i}.` }], temperature: 0, max_tokens: 2 });
    const run = async (args: unknown) => {
      const { stdout } = await execFileAsync(PYTHON, [CLIENT_PY, `${server.url}/v1`, 'batch', JSON.stringify(args)], {
        env: { ...process.env, MLX_BATCH_API_KEY: token },
        maxBuffer: 64 << 20,
        timeout: 5 * 60_000,
      });
      return JSON.parse(stdout) as { results: Array<{ text?: string; error?: string; status?: number; body?: { code?: string } }> };
    };
    const flood = await run({ requests: Array.from({ length: 200 }, (_, i) => ask(i)), concurrent: true });
    assert.equal(flood.results.length, 200);
    const answered = flood.results.filter((r) => !r.error);
    const refused = flood.results.filter((r) => r.error);
    for (const r of refused) {
      assert.equal(r.status, 429, JSON.stringify(r));
      assert.equal(r.body?.code, 'queue_full');
    }
    for (const r of answered) assert.equal(typeof r.text, 'string');
    console.log(`# flood: ${answered.length} answered, ${refused.length} refused with 429`);
    assert.ok(refused.length > 0, 'the queue bound was reached');
    // Refusals start only with 32 waiting, and every waiting request is answered.
    assert.ok(answered.length >= 32, `${answered.length} answered, fewer than the queue holds`);
    const m = await client.metrics();
    assert.equal(m.queued + m.running + m.prefilling, 0, 'nothing left behind');
    const after = await run({ requests: [ask(1), ask(2)], concurrent: true });
    for (const r of after.results) assert.ok(!r.error, JSON.stringify(r));
  });
});
