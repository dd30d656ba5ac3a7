// Starts and supervises the sidecar process, and speaks protocol.ts to it.
// Used the same way by the CLI, the HTTP server and the VS Code extension.
import { fork, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { createMessageConnection, IPCMessageReader, IPCMessageWriter, type MessageConnection } from 'vscode-jsonrpc/node';

import { projectRoot } from './native.js';
import {
  Notifications, Requests, type EngineSettings, type GenerateParams, type GenerateResult, type MetricsSnapshot,
  type ModelInfo, type PrefillProgress, type TokenCountItem, type TokenDelta,
} from './protocol.js';

export enum SidecarState { Stopped = 'stopped', Starting = 'starting', Running = 'running', Failed = 'failed' }

export interface SidecarClientOptions {
  /** Give up restarting after this many crashes within crashWindowMs. */
  maxCrashes?: number;
  crashWindowMs?: number;
  /** Lines the sidecar prints (native code included) and supervision events. */
  log?: (line: string) => void;
  /** The sidecar script; default dist/sidecar.js of this checkout or extension. */
  sidecarPath?: string;
}

export interface GenerateHandlers {
  onDelta?: (delta: TokenDelta) => void;
  /** While the prompt is being read: how far it is. */
  onPrefill?: (progress: PrefillProgress) => void;
  signal?: AbortSignal;
}

interface InFlight {
  params: GenerateParams;
  handlers: GenerateHandlers;
  resolve: (r: GenerateResult) => void;
}

const STOP_TIMEOUT_MS = 5000;
const LOG_TAIL_LINES = 20;

export class SidecarClient extends EventEmitter {
  state = SidecarState.Stopped;
  info?: ModelInfo;
  /** Why the sidecar is not running, once it gave up. */
  failure?: string;
  private child?: ChildProcess;
  private connection?: MessageConnection;
  private starting?: Promise<ModelInfo>;
  private readonly inFlight = new Map<string, InFlight>();
  private readonly crashes: number[] = [];
  private readonly logTail: string[] = [];
  private stopping = false;
  /** Set by close(): why this client will not start a sidecar again. */
  private closed?: string;
  /** Sidecars this client ended itself (a failed load): their exit is no crash. */
  private readonly endedOnPurpose = new WeakSet<ChildProcess>();

  constructor(
    readonly settings: EngineSettings,
    private readonly options: SidecarClientOptions = {},
  ) {
    super();
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Starts the sidecar and loads the model (once; later calls wait for the same start). */
  start(): Promise<ModelInfo> {
    if (this.closed) return Promise.reject(new Error(this.closed));
    if (this.state === SidecarState.Running && this.info) return Promise.resolve(this.info);
    this.starting ??= this.spawn().finally(() => {
      this.starting = undefined;
    });
    return this.starting;
  }

  /** Ends in done, cancelled or error, with a reason; never rejects. */
  async generate(request: Omit<GenerateParams, 'requestId'> & { requestId?: string }, handlers: GenerateHandlers = {}): Promise<GenerateResult> {
    const params: GenerateParams = { ...request, requestId: request.requestId ?? randomUUID() };
    if (handlers.signal?.aborted) return this.endedEarly(params, 'cancelled', 'cancelled before it started');
    try {
      await this.start();
    } catch (e) {
      return this.endedEarly(params, 'error', (e as Error).message);
    }
    // Aborted while the sidecar started: the abort event has fired already, so
    // a listener added now would never hear it.
    if (handlers.signal?.aborted) return this.endedEarly(params, 'cancelled', 'cancelled while the engine started');
    // The id routes streamed tokens and cancels: a second request under it would take over the first's.
    if (this.inFlight.has(params.requestId)) return this.endedEarly(params, 'error', `request id ${params.requestId} is already in flight`);
    return new Promise<GenerateResult>((resolve) => {
      const entry: InFlight = { params, handlers, resolve };
      this.inFlight.set(params.requestId, entry);
      const onAbort = () => this.connection?.sendNotification(Notifications.cancel, { requestId: params.requestId });
      handlers.signal?.addEventListener('abort', onAbort, { once: true });
      const done = (r: GenerateResult) => {
        handlers.signal?.removeEventListener('abort', onAbort);
        if (this.inFlight.get(params.requestId) === entry) this.inFlight.delete(params.requestId);
        resolve(r);
      };
      entry.resolve = done;
      this.connection!.sendRequest(Requests.generate, params).then(done, (e: Error) => {
        // A closed connection is reported by the exit handler with the reason.
        if (this.inFlight.get(params.requestId) === entry) done(this.errorResult(params, e.message));
      });
    });
  }

  cancel(requestId: string): void {
    void this.connection?.sendNotification(Notifications.cancel, { requestId });
  }

  /** Token counts with the loaded model's tokenizer, in `items` order. */
  async countTokens(items: TokenCountItem[]): Promise<number[]> {
    await this.start();
    return this.connection!.sendRequest(Requests.countTokens, { items });
  }

  async metrics(): Promise<MetricsSnapshot> {
    await this.start();
    return this.connection!.sendRequest(Requests.metrics);
  }

  async resetPeakMemory(): Promise<void> {
    await this.start();
    await this.connection!.sendRequest(Requests.resetPeakMemory);
  }

  /** After giving up on crashes: try again from a clean slate. */
  async restart(): Promise<ModelInfo> {
    const loading = this.starting;
    await this.stop();
    await loading?.catch(() => undefined); // a load the stop ended settles before the new one starts
    this.crashes.length = 0;
    this.failure = undefined;
    return this.start();
  }

  /**
   * Stops the sidecar for good: later requests end with `reason` instead of
   * starting a new one (a replaced engine must not come back behind its owner).
   */
  async close(reason: string): Promise<void> {
    this.closed = reason;
    await this.stop();
  }

  /** Graceful shutdown raced against a timeout, then kill. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child) {
      this.setState(SidecarState.Stopped);
      return;
    }
    this.stopping = true;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const timeout = new Promise<void>((resolve) => setTimeout(resolve, STOP_TIMEOUT_MS).unref());
    this.connection?.sendRequest(Requests.shutdown).catch(() => undefined);
    await Promise.race([exited, timeout]);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
    this.stopping = false;
  }

  // -------------------------------------------------------------------------

  private sidecarPath(): string {
    const file = this.options.sidecarPath ?? path.join(projectRoot(), 'dist', 'sidecar.js');
    if (!fs.existsSync(file)) throw new Error(`sidecar not found at ${file}: run \`npm run build\``);
    return file;
  }

  private async spawn(): Promise<ModelInfo> {
    if (this.state === SidecarState.Failed) throw new Error(this.failure);
    this.failure = undefined;
    this.setState(SidecarState.Starting);
    const script = this.sidecarPath();
    // In VS Code, process.execPath is Electron: ELECTRON_RUN_AS_NODE makes it a
    // plain Node (the plugin helper on macOS, which may load our libraries).
    const child = fork(script, [], {
      execPath: process.execPath,
      execArgv: script.endsWith('.ts') ? ['--import', 'tsx'] : [],
      env: { ...process.env, ELECTRON_RUN_AS_NODE: '1' },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    this.child = child;
    for (const stream of [child.stdout!, child.stderr!]) {
      let partial = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        const lines = (partial + chunk).split('\n');
        partial = lines.pop()!;
        for (const line of lines) this.log(line);
      });
    }
    const connection = createMessageConnection(new IPCMessageReader(child), new IPCMessageWriter(child));
    this.connection = connection;
    connection.onNotification(Notifications.tokens, ({ deltas }) => {
      for (const d of deltas) this.inFlight.get(d.requestId)?.handlers.onDelta?.(d);
    });
    connection.onNotification(Notifications.prefill, ({ progress }) => {
      for (const p of progress) this.inFlight.get(p.requestId)?.handlers.onPrefill?.(p);
    });
    connection.listen();
    child.once('exit', (code, signal) => this.onExit(child, code, signal));
    try {
      this.info = await connection.sendRequest(Requests.load, this.settings);
    } catch (e) {
      // Stopped or closed while loading: not a load failure, and a later start may load again.
      if (this.stopping || this.closed) {
        this.setState(SidecarState.Stopped);
        throw new Error(this.closed ?? 'the engine was stopped while its model loaded');
      }
      const reason = child.exitCode !== null || child.signalCode !== null ? this.exitReason(child.exitCode, child.signalCode) : '';
      // Not a crash to restart from: a restart would load the same model and fail the same way.
      this.endedOnPurpose.add(child);
      child.kill('SIGKILL');
      this.failure = `loading the model failed: ${withoutRpcWrapper((e as Error).message)}${reason ? ` (${reason})` : ''}`;
      this.note(this.failure);
      this.setState(SidecarState.Failed);
      throw new Error(this.failure);
    }
    this.setState(SidecarState.Running);
    this.note(`sidecar ${child.pid} running ${this.info.modelPath} on ${this.info.device} (${this.info.weights})` +
      (this.info.weightsNote ? `; ${this.info.weightsNote}` : ''));
    return this.info;
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (child !== this.child) return;
    this.connection?.dispose();
    this.connection = undefined;
    this.child = undefined;
    const expected = this.stopping || this.endedOnPurpose.has(child);
    const reason = this.exitReason(code, signal);
    const message = expected ? 'the sidecar was stopped' : `the sidecar exited unexpectedly (${reason})`;
    const output = this.logTail.length ? `; its last output: ${this.logTail.slice(-3).join(' | ')}` : '';
    for (const entry of [...this.inFlight.values()]) {
      entry.resolve(this.errorResult(entry.params, `${message} while this request was running${output}`));
    }
    this.inFlight.clear();
    if (expected || this.state === SidecarState.Starting) {
      if (this.state !== SidecarState.Failed) this.setState(SidecarState.Stopped);
      return;
    }
    const now = Date.now();
    const window = this.options.crashWindowMs ?? 180_000;
    this.crashes.push(now);
    while (this.crashes.length > 0 && now - this.crashes[0] > window) this.crashes.shift();
    const maxCrashes = this.options.maxCrashes ?? 3;
    this.note(message);
    if (this.crashes.length >= maxCrashes) {
      const crashed = this.crashes.length === 1 ? 'crashed' : `crashed ${this.crashes.length} times in ${Math.round(window / 60000)} minutes`;
      this.failure = `the sidecar ${crashed}; not restarting it (last: ${reason})`;
      this.note(this.failure);
      this.setState(SidecarState.Failed);
      return;
    }
    this.setState(SidecarState.Stopped);
    this.emit('restart', message);
    this.start().catch((e) => this.note(`restart failed: ${(e as Error).message}`));
  }

  private exitReason(code: number | null, signal: NodeJS.Signals | null): string {
    return signal ? `killed by ${signal}` : `exit code ${code}`;
  }

  private errorResult(params: GenerateParams, error: string): GenerateResult {
    return {
      requestId: params.requestId, text: '', finishReason: 'error', error, errorType: 'server',
      promptTokens: 0, cachedPromptTokens: 0, generatedTokens: 0, timings: { queuedMs: 0, firstTokenMs: 0, totalMs: 0 },
    };
  }

  private endedEarly(params: GenerateParams, reason: 'cancelled' | 'error', error: string): GenerateResult {
    return { ...this.errorResult(params, error), finishReason: reason };
  }

  private setState(state: SidecarState): void {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state);
  }

  /** A line the sidecar printed (kept for crash reports). */
  private log(line: string): void {
    this.logTail.push(line);
    if (this.logTail.length > LOG_TAIL_LINES) this.logTail.shift();
    this.options.log?.(line);
  }

  /** A supervision event of our own. */
  private note(line: string): void {
    this.options.log?.(`[client] ${line}`);
  }
}

/** A request's error as the sidecar threw it: JSON-RPC prefixes "Request <method> failed with message: ". */
function withoutRpcWrapper(message: string): string {
  return message.replace(/^Request \S+ failed with message: /, '');
}
