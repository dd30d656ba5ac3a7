// The sidecar process: owns the native engine and the scheduler, and serves
// the protocol in protocol.ts over the Node IPC channel. Run as a separate
// process so a model crash, a huge allocation or a slow step can never take
// the VS Code extension host (or the HTTP server) down with it.
import os from 'node:os';
import { createMessageConnection, IPCMessageReader, IPCMessageWriter } from 'vscode-jsonrpc/node';

import { openModel, type ModelSession } from './engine-session.js';
import { JsonSchemaConstraint } from './json-constraint.js';
import { Notifications, Requests, type EngineSettings, type ModelInfo } from './protocol.js';
import { Scheduler } from './scheduler.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
/** The least KV budget a model loads with: one short request (prompt and answer). */
const MIN_KV_BUDGET_TOKENS = 512;

/** A quarter of the machine's memory, within [256 MiB, 16 GiB]. */
export function defaultKvBudget(totalMemory = os.totalmem()): number {
  return Math.round(Math.min(16 * GiB, Math.max(256 * MiB, totalMemory / 4)));
}

/**
 * MLX's buffer cache: freed buffers it keeps for reuse. It hands one back only
 * for a request of nearly its own size. On the GPU, where allocating is dear, a
 * large cache pays. On the CPU the sizes keep changing (a prompt's KV grows, a
 * batch loses rows), so a large cache fills with buffers nothing reuses while
 * every new size takes fresh pages: 16 rows leaving one by one in a fresh
 * process took 2.5 s, nearly all page faults (13 us each on the development
 * machine).
 * There MLX keeps its default 32 MiB and malloc reuses the rest.
 */
export function bufferCacheBytes(device: 'cpu' | 'gpu', kvBudgetBytes: number): number {
  return device === 'cpu' ? 32 * MiB : Math.min(kvBudgetBytes / 2, GiB);
}

if (!process.send) {
  console.error('sidecar.js is started by SidecarClient (src/engine/client.ts) with an IPC channel');
  process.exit(2);
}

const connection = createMessageConnection(new IPCMessageReader(process), new IPCMessageWriter(process));
let session: ModelSession | undefined;
let scheduler: Scheduler | undefined;

function requireScheduler(): Scheduler {
  if (!scheduler) throw new Error('no model is loaded: send model/load first');
  return scheduler;
}

connection.onRequest(Requests.load, async (settings: EngineSettings): Promise<ModelInfo> => {
  if (scheduler) await scheduler.close('the model is being replaced');
  if (session) await session.close();
  // Nothing loaded until the new model is: a failed load must not leave the closed ones in place.
  scheduler = undefined;
  session = undefined;
  session = await openModel(settings.modelPath, { weights: settings.weights, device: settings.device });
  const { spec, tokenizer, engine, loaded } = session;
  const kvBudgetBytes = settings.kvBudgetBytes ?? defaultKvBudget();
  // A budget under one short request's KV would fail every request as if it were too big: refuse it here, named.
  const leastBytes = MIN_KV_BUDGET_TOKENS * loaded.kvBytesPerToken;
  if (kvBudgetBytes < leastBytes) {
    await session.close();
    session = undefined;
    throw new Error(`the KV budget (--kv-budget, mlxBatch.kvBudget) of ${(kvBudgetBytes / MiB).toFixed(1)} MiB holds ` +
      `${Math.floor(kvBudgetBytes / loaded.kvBytesPerToken)} tokens of this model (${loaded.kvBytesPerToken} bytes each); ` +
      `give at least ${Math.ceil(leastBytes / MiB)} MiB (${MIN_KV_BUDGET_TOKENS} tokens)`);
  }
  const prefixCacheBytes = settings.prefixCacheBytes ?? Math.round(kvBudgetBytes / 4);
  // MLX's own limits follow the same budget: weights + KV + saved prefixes, with headroom for activations.
  await engine.setMemoryLimits(loaded.parameterBytes + kvBudgetBytes + prefixCacheBytes + 512 * MiB,
    bufferCacheBytes(loaded.device, kvBudgetBytes));
  const maxBatch = settings.maxBatch ?? 32;
  scheduler = new Scheduler(engine, tokenizer, {
    maxBatch,
    prefillTokensPerStep: settings.prefillTokensPerStep ?? 512,
    kvBudgetBytes,
    kvBytesPerToken: loaded.kvBytesPerToken,
    prefixCacheBytes,
    contextLength: spec.contextLength,
    vocabSize: spec.vocabSize,
    ...(settings.maxQueuedRequests !== undefined ? { maxQueued: settings.maxQueuedRequests } : {}),
  }, (deltas) => void connection.sendNotification(Notifications.tokens, { deltas }),
  async (schema) => (await JsonSchemaConstraint.compile(tokenizer, schema, spec.vocabSize)).createMatcher(),
  (progress) => void connection.sendNotification(Notifications.prefill, { progress }));
  return {
    modelPath: session.modelPath,
    architecture: spec.sourceArchitecture,
    device: loaded.device,
    weights: loaded.weights,
    ...(loaded.weightsNote ? { weightsNote: loaded.weightsNote } : {}),
    contextLength: spec.contextLength,
    vocabSize: spec.vocabSize,
    kvBytesPerToken: loaded.kvBytesPerToken,
    kvBudgetBytes,
    prefixCacheBytes,
    maxBatch,
    loadSeconds: session.loadSeconds,
  };
});

connection.onRequest(Requests.generate, (params) => requireScheduler().submit(params));
connection.onNotification(Notifications.cancel, ({ requestId }) => scheduler?.cancel(requestId));
connection.onRequest(Requests.countTokens, ({ items }) => {
  if (!session) throw new Error('no model is loaded: send model/load first');
  const { tokenizer } = session;
  // Counted as the scheduler will encode them: special-token text in a message or a file is plain text.
  return items.map((item) => 'messages' in item
    ? tokenizer.encodeChat(item.messages, { addGenerationPrompt: true }).length
    : tokenizer.encode(item.text, { addSpecialTokens: false, literal: [[0, item.text.length]] }).length);
});
connection.onRequest(Requests.metrics, () => requireScheduler().metrics());
connection.onRequest(Requests.resetPeakMemory, () => requireScheduler().resetPeakMemory());
connection.onRequest(Requests.shutdown, async () => {
  await scheduler?.close();
  await session?.close();
  setImmediate(() => process.exit(0));
});

// The parent went away: nobody is left to answer. 'disconnect' says so; the
// parent id check catches a parent killed while the channel did not report it.
process.on('disconnect', () => process.exit(0));
// Ctrl-C, a closed terminal and `timeout` signal the whole process group: the
// parent decides what they mean (cancel the rows, keep their text, then shut
// this process down), so here they are ignored.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => {});
const parentPid = process.ppid;
setInterval(() => {
  if (process.ppid !== parentPid) process.exit(0);
}, 2000).unref();
process.on('uncaughtException', (err) => {
  console.error(`[sidecar] fatal: ${err.stack ?? err}`);
  process.exit(70);
});
connection.listen();
