// The sidecar process under its client: streaming, cancellation through the
// RPC, and what happens when the sidecar dies mid-run.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';

import { SidecarClient, SidecarState } from '../src/engine/client.js';
import { startOpenAiServer } from '../src/engine/http-server.js';

const clients: SidecarClient[] = [];
after(async () => {
  for (const c of clients) await c.stop();
});

function client(maxCrashes = 3) {
  const c = new SidecarClient({ maxBatch: 8 }, { maxCrashes });
  clients.push(c);
  return c;
}

const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const waitFor = async (cond: () => boolean, what: string, ms = 120_000) => {
  const t = Date.now();
  while (!cond()) {
    if (Date.now() - t > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

describe('sidecar client', () => {
  test('streams deltas that add up to the final text, and cancels through the RPC', async () => {
    const c = client();
    await c.start();
    let streamed = '';
    const r = await c.generate({ messages: [{ role: 'user', content: 'What is the capital of France?' }], maxTokens: 24 },
      { onDelta: (d) => { streamed += d.text; } });
    assert.match(r.text, /Paris/);
    assert.equal(streamed, r.text);

    const abort = new AbortController();
    let tokens = 0;
    const pending = c.generate({ messages: [{ role: 'user', content: 'Write a long story.' }], maxTokens: 300 },
      { signal: abort.signal, onDelta: (d) => { tokens += d.tokens; if (tokens >= 5) abort.abort(); } });
    const cancelled = await pending;
    assert.equal(cancelled.finishReason, 'cancelled');
    assert.ok(cancelled.generatedTokens < 300);
    const m = await c.metrics();
    assert.equal(m.running + m.prefilling + m.queued, 0);
    assert.equal(m.requests.cancelled, 1);
  });

  test('a request aborted while the sidecar starts ends cancelled, not at max_tokens', async () => {
    const c = client();
    const abort = new AbortController();
    const pending = c.generate({ messages: [{ role: 'user', content: 'Write a long story about a dragon.' }], maxTokens: 400 },
      { signal: abort.signal });
    assert.equal(c.state, SidecarState.Starting);
    abort.abort();
    const r = await pending;
    assert.equal(r.finishReason, 'cancelled');
    assert.equal(r.generatedTokens, 0);
  });

  test('killing the sidecar ends in-flight requests as errors; the next request is served by a restarted one', async () => {
    const c = client();
    await c.start();
    const firstPid = c.pid!;
    let started = 0;
    const inFlight = [1, 2].map(() => c.generate({ messages: [{ role: 'user', content: 'Write a long story about a ship.' }], maxTokens: 400 },
      { onDelta: () => { started++; } }));
    await waitFor(() => started >= 4, 'both requests to stream');
    process.kill(firstPid, 'SIGKILL');
    const results = await Promise.all(inFlight);
    for (const r of results) {
      assert.equal(r.finishReason, 'error');
      assert.match(r.error!, /sidecar exited unexpectedly \(killed by SIGKILL\) while this request was running/);
    }
    const next = await c.generate({ messages: [{ role: 'user', content: 'Say hi.' }], maxTokens: 8 });
    assert.notEqual(next.finishReason, 'error', next.error);
    assert.ok(c.pid && c.pid !== firstPid, 'a new sidecar process');
    assert.equal(c.state, SidecarState.Running);
  });

  test('after N crashes in the window the client gives up and says so', async () => {
    const c = client(2);
    for (let crash = 1; crash <= 2; crash++) {
      await c.start();
      const pid = c.pid!;
      process.kill(pid, 'SIGKILL');
      await waitFor(() => !isAlive(pid) && c.pid !== pid, 'the sidecar to exit');
    }
    await waitFor(() => c.state === SidecarState.Failed, 'the client to give up');
    const r = await c.generate({ messages: [{ role: 'user', content: 'Say hi.' }], maxTokens: 4 });
    assert.equal(r.finishReason, 'error');
    assert.match(r.error!, /crashed 2 times in 3 minutes; not restarting/);
  });

  test('a model that fails to load is reported with its load error, once: no restart loop', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-load-'));
    const bad = path.join(dir, 'notes.gguf');
    fs.writeFileSync(bad, 'just some text, not a model\n'.repeat(10));
    const c = new SidecarClient({ modelPath: bad, maxBatch: 2 }, { maxCrashes: 3 });
    clients.push(c);
    const states: string[] = [];
    let restarts = 0;
    c.on('state', (state: string) => states.push(state));
    c.on('restart', () => restarts++);
    try {
      await assert.rejects(c.start(), /loading the model failed: .*notes\.gguf: not a GGUF file/);
      // Time for an exit handler to take the killed sidecar for a crash and start another.
      await new Promise((r) => setTimeout(r, 2000));
      assert.equal(restarts, 0, 'no restart');
      assert.deepEqual(states.filter((s) => s === SidecarState.Starting), [SidecarState.Starting], `one start: ${states}`);
      assert.equal(c.state, SidecarState.Failed);
      assert.match(c.failure!, /not a GGUF file/);
      assert.doesNotMatch(c.failure!, /SIGKILL|crashed/);
      const r = await c.generate({ messages: [{ role: 'user', content: 'Say hi.' }], maxTokens: 4 });
      assert.equal(r.finishReason, 'error');
      assert.match(r.error!, /loading the model failed: .*not a GGUF file/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('once the client has given up, the HTTP server answers 503 saying why', async () => {
    const c = client(1);
    await c.start();
    const server = await startOpenAiServer({ client: c, port: 0, token: 'tok', modelId: 'm' });
    try {
      const pid = c.pid!;
      process.kill(pid, 'SIGKILL');
      await waitFor(() => c.state === SidecarState.Failed, 'the client to give up');
      const reply = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = http.request(`${server.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: 'Bearer tok', 'content-type': 'application/json' },
        }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (chunk) => (body += chunk));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.end(JSON.stringify({ messages: [{ role: 'user', content: 'Say hi.' }], max_tokens: 4 }));
      });
      assert.equal(reply.status, 503, reply.body);
      const error = JSON.parse(reply.body).error;
      assert.equal(error.code, 'engine_unavailable');
      assert.match(error.message, /the engine is not running: the sidecar crashed; not restarting it .*killed by SIGKILL/);
    } finally {
      await server.close();
    }
  });

  test('stopped or closed while its model loads: the start ends with that reason, not as a load failure, and restart() loads again', async () => {
    const c = client();
    const first = c.start().then(() => 'loaded', (e: Error) => e.message);
    await waitFor(() => c.pid !== undefined, 'the sidecar to start');
    const info = await c.restart();
    assert.equal(await first, 'the engine was stopped while its model loaded');
    assert.equal(c.state, SidecarState.Running);
    assert.ok(info.modelPath);
    const r = await c.generate({ prompt: 'Hi', maxTokens: 2 });
    assert.notEqual(r.finishReason, 'error', r.error);

    const d = client();
    const waiting = d.generate({ prompt: 'Hi', maxTokens: 2 });
    await waitFor(() => d.pid !== undefined, 'the sidecar to start');
    await d.close('replaced by a new engine');
    const ended = await waiting;
    assert.equal(ended.finishReason, 'error');
    assert.equal(ended.error, 'replaced by a new engine');
  });

  test("Ctrl-C, SIGTERM and SIGHUP sent to the process group leave the sidecar to its parent", async () => {
    const c = client();
    await c.start();
    const pid = c.pid!;
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.kill(pid, signal);
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(isAlive(pid), 'the sidecar is still running');
    const r = await c.generate({ prompt: 'Hi', maxTokens: 2 });
    assert.notEqual(r.finishReason, 'error', r.error);
    await c.stop();
    assert.ok(!isAlive(pid));
  });

  test('stop() ends the sidecar process', async () => {
    const c = client();
    await c.start();
    const pid = c.pid!;
    await c.stop();
    assert.equal(isAlive(pid), false);
    assert.equal(c.state, SidecarState.Stopped);
  });

  test('a closed client ends requests with its reason and starts no sidecar behind its owner', async () => {
    const c = client();
    await c.start();
    const pid = c.pid!;
    await c.close('the engine was replaced');
    assert.equal(isAlive(pid), false);
    const r = await c.generate({ messages: [{ role: 'user', content: 'Say hi.' }], maxTokens: 4 });
    assert.equal(r.finishReason, 'error');
    assert.equal(r.error, 'the engine was replaced');
    assert.equal(c.pid, undefined, 'no new sidecar');
    await assert.rejects(c.metrics(), /the engine was replaced/);
  });

  test('a second request under an id in flight is refused; the first keeps its stream', async () => {
    const c = client();
    await c.start();
    let streamed = '';
    const first = c.generate({ requestId: 'same', messages: [{ role: 'user', content: 'Write a story about a ship.' }], maxTokens: 24 },
      { onDelta: (d) => { streamed += d.text; } });
    await waitFor(() => streamed.length > 0, 'the first request to stream');
    const second = await c.generate({ requestId: 'same', messages: [{ role: 'user', content: 'Say hi.' }], maxTokens: 4 });
    assert.equal(second.finishReason, 'error');
    assert.match(second.error!, /request id same is already in flight/);
    const r = await first;
    assert.notEqual(r.finishReason, 'error', r.error);
    assert.equal(streamed, r.text, 'every token of the first reached its handler');
  });
});
