// The OpenAI-compatible backend's JSON-schema fallbacks, against a small local
// server (127.0.0.1, stopped by the test) that answers as llama-cpp-python's
// does: response_format json_schema refused (a 500 naming response_format),
// json_object with a schema taken; and one that takes no response_format at all.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { OpenAiBackend } from '../src/ask/backends/openai.js';

const servers: http.Server[] = [];
after(() => {
  for (const s of servers) s.close();
});

/** A server that takes the response_format types in `accepts` (and none: 'none'), recording each request's type. */
async function server(accepts: string[]): Promise<{ url: string; seen: string[] }> {
  const seen: string[] = [];
  const s = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const type: string = JSON.parse(body).response_format?.type ?? 'none';
      seen.push(type);
      if (!accepts.includes(type)) {
        res.writeHead(type === 'json_schema' ? 500 : 400, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ error: { message: `response_format: Input should be ${accepts.join(' or ')}` } }));
        return;
      }
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      for (const piece of ['{"answer": ', '"42"}']) res.write(`data: ${JSON.stringify({ choices: [{ delta: { content: piece } }] })}\n\n`);
      res.write(`data: ${JSON.stringify({ choices: [{ delta: {}, finish_reason: 'stop' }] })}\n\ndata: [DONE]\n\n`);
      res.end();
    });
  });
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(s.address() as AddressInfo).port}/v1`, seen };
}

const request = (id: string) => ({ id, messages: [{ role: 'user' as const, content: 'q' }], maxTokens: 16, temperature: 0, jsonSchema: { type: 'object' } });

describe('OpenAI-compatible backend: how the JSON schema is sent', () => {
  test('json_schema refused, json_object with the schema taken, and remembered for the next request', async () => {
    const s = await server(['json_object']);
    const b = new OpenAiBackend({ url: s.url, model: 'm', concurrency: 1, contextLength: 2048 });
    const first = await b.complete(request('a'));
    assert.deepEqual([first.finishReason, first.text, first.generatedTokens], ['stop', '{"answer": "42"}', 2]);
    await b.complete(request('b'));
    assert.deepEqual(s.seen, ['json_schema', 'json_object', 'json_object']);
  });

  test('a server that takes no response_format: the schema is dropped, the reply still comes', async () => {
    const s = await server(['none']);
    const b = new OpenAiBackend({ url: s.url, model: 'm', concurrency: 1, contextLength: 2048 });
    const reply = await b.complete(request('a'));
    assert.equal(reply.finishReason, 'stop');
    assert.deepEqual(s.seen, ['json_schema', 'json_object', 'none']);
  });

  test('another error is reported, not retried', async () => {
    const s = http.createServer((_req, res) => {
      res.writeHead(500);
      res.end('out of memory');
    });
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const b = new OpenAiBackend({ url: `http://127.0.0.1:${(s.address() as AddressInfo).port}`, model: 'm', concurrency: 1, contextLength: 2048 });
    const reply = await b.complete(request('a'));
    assert.equal(reply.finishReason, 'error');
    assert.match(reply.error ?? '', /500: out of memory/);
  });
});
