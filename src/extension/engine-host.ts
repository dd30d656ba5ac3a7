// The extension's one engine: a sidecar started lazily on first use (forked
// with VS Code's own Node, see SidecarClient), replaced when the model or an
// engine setting changes, and stopped on deactivate. Each run leases the
// engine it started on: a replaced engine stops when its last lease ends, so
// a running batch keeps its engine. With the "openai" backend setting, jobs go
// to that server instead and no sidecar runs.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type * as vscode from 'vscode';
import type { AskBackend } from '../ask/backend.js';
import { OpenAiBackend } from '../ask/backends/openai.js';
import { SidecarBackend } from '../ask/backends/sidecar.js';
import { SidecarClient, SidecarState } from '../engine/client.js';
import { DEFAULT_MODEL_FILE } from '../engine/default-model.js';
import type { MetricsSnapshot, ModelInfo } from '../engine/protocol.js';
import type { AssistantSettings } from './settings.js';

/** Where the extension looks for the default model when no model is configured (README, "VS Code extension"). */
export function defaultModelCandidates(extensionPath: string, home = os.homedir()): string[] {
  return [
    path.join(extensionPath, 'models', DEFAULT_MODEL_FILE),
    path.join(home, '.cache', 'mlx-batch-assistant', 'models', DEFAULT_MODEL_FILE),
  ];
}

export class NoModelError extends Error {}

/** One run's hold on a backend: release() when the run ends (a replaced engine then stops). */
export interface EngineLease {
  backend: AskBackend;
  release(): void;
}

/**
 * The "mlxBatch.modelPath" setting as a path the sidecar can open: `~` is the
 * home folder, a relative path is taken from the workspace folder, and a path
 * that does not exist is refused here, naming the setting, before any engine
 * is stopped or started for it.
 */
export function resolveModelSetting(value: string, home = os.homedir(), workspaceFolder?: string): string {
  let resolved = value === '~' || value.startsWith('~/') ? path.join(home, value.slice(1)) : value;
  if (!path.isAbsolute(resolved)) {
    if (!workspaceFolder) throw new NoModelError(`"mlxBatch.modelPath" is the relative path "${value}" and no folder is open to resolve it against: give an absolute path.`);
    resolved = path.resolve(workspaceFolder, resolved);
  }
  if (!fs.existsSync(resolved)) {
    throw new NoModelError(`"mlxBatch.modelPath" is "${value}", and ${resolved} does not exist. Select Model… lists the models on this machine.`);
  }
  return resolved;
}

export interface EngineHostEvents {
  onState: (state: SidecarState, info?: ModelInfo) => void;
  /** A sidecar starts loading this model; undefined: a model switch failed and the old engine stays. */
  onLoading?: (modelPath: string | undefined) => void;
  /** The sidecar died and is being restarted: in-flight jobs ended as errors. */
  onCrashRestart?: (why: string) => void;
  /** The folder a relative "mlxBatch.modelPath" is taken from. */
  workspaceFolder?: () => string | undefined;
  /** The last run holding the current engine has ended. */
  onIdle?: () => void;
}

const REPLACED = 'the engine was stopped or replaced (Restart Engine, Select Model, or a changed engine setting): run the command again';

export class EngineHost {
  private client?: SidecarClient;
  private clientKey?: string;
  /** Runs holding each engine; a replaced one is closed when its count reaches zero. */
  private readonly leases = new Map<SidecarClient, number>();

  constructor(
    private readonly extensionPath: string,
    private readonly log: vscode.LogOutputChannel,
    private readonly events: EngineHostEvents,
  ) {}

  get running(): boolean {
    return this.client?.state === SidecarState.Running;
  }

  /** The model the built-in engine will load: the setting, else the default model where it is found. */
  modelPath(settings: AssistantSettings): string {
    if (settings.modelPath) return resolveModelSetting(settings.modelPath, os.homedir(), this.events.workspaceFolder?.());
    const found = defaultModelCandidates(this.extensionPath).find((p) => fs.existsSync(p));
    if (!found) {
      throw new NoModelError(`No model is configured and the default model is not installed. Set "mlxBatch.modelPath" ` +
        `(Select Model… lists the GGUF files and MLX folders on this machine), or put ${DEFAULT_MODEL_FILE} at ` +
        `${defaultModelCandidates(this.extensionPath)[1]} (see the README). In a remote window (Remote SSH, code-server) ` +
        `"mlxBatch.modelPath" is a machine setting: set it in the Remote settings; a user setting does not apply there.`);
    }
    return found;
  }

  /** A backend for one run; starts the sidecar (and loads the model) when needed. */
  async lease(settings: AssistantSettings): Promise<EngineLease> {
    if (settings.backend === 'openai') {
      const backend = new OpenAiBackend({
        url: settings.serverUrl,
        model: settings.serverModel,
        apiKey: process.env.MLX_BATCH_API_KEY || process.env.OPENAI_API_KEY,
        concurrency: settings.serverConcurrency,
        contextLength: settings.serverContextLength,
      });
      return { backend, release: () => {} };
    }
    const client = this.clientFor(settings);
    this.leases.set(client, (this.leases.get(client) ?? 0) + 1);
    let held = true;
    const release = () => {
      if (!held) return;
      held = false;
      const left = this.leases.get(client)! - 1;
      if (left > 0) return void this.leases.set(client, left);
      this.leases.delete(client);
      if (client !== this.client) void client.close(REPLACED);
      else this.events.onIdle?.();
    };
    try {
      return { backend: new SidecarBackend(client, await client.start()), release };
    } catch (e) {
      release();
      throw e;
    }
  }

  /** Loads `modelPath` in a new sidecar; the old one keeps serving unless the new one loads. */
  async trySwitchModel(modelPath: string, settings: AssistantSettings): Promise<ModelInfo> {
    const candidate = this.makeClient({ ...settings, modelPath });
    this.events.onLoading?.(modelPath);
    try {
      const info = await candidate.start();
      // The new engine first: a batch started while the old one closes gets the new one.
      const old = this.client;
      this.adopt(candidate, this.keyOf({ ...settings, modelPath }));
      this.events.onState(SidecarState.Running, info);
      await this.retire(old);
      return info;
    } catch (e) {
      await candidate.close(REPLACED);
      this.events.onLoading?.(undefined);
      throw e;
    }
  }

  /** After a settings change: a running sidecar whose settings no longer match is restarted. True if it was. */
  async applySettings(settings: AssistantSettings): Promise<boolean> {
    if (!this.client || settings.backend !== 'builtin') return false;
    // A model path that cannot be used throws here, naming the setting, and the running engine stays.
    const key = this.keyOf(settings);
    if (key === this.clientKey) return false;
    await this.stop();
    await this.clientFor(settings).start();
    return true;
  }

  async restart(settings: AssistantSettings): Promise<ModelInfo> {
    await this.stop();
    return this.clientFor(settings).start();
  }

  async metrics(): Promise<MetricsSnapshot | undefined> {
    if (!this.running) return undefined;
    try {
      return await this.client!.metrics();
    } catch {
      return undefined;
    }
  }

  /** Stops the engine, and any replaced one a run still holds. */
  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.clientKey = undefined;
    if (client) this.events.onState(SidecarState.Stopped);
    const retiring = [...this.leases.keys()].filter((c) => c !== client);
    await Promise.all([client, ...retiring].map((c) => c?.close(REPLACED)));
  }

  // -------------------------------------------------------------------------

  private keyOf(settings: AssistantSettings): string {
    return JSON.stringify([this.modelPath(settings), settings.maxParallelChannels, settings.kvBudgetBytes ?? null]);
  }

  private clientFor(settings: AssistantSettings): SidecarClient {
    const key = this.keyOf(settings);
    if (this.client && this.clientKey === key && this.client.state !== SidecarState.Failed) return this.client;
    void this.retire(this.client);
    const modelPath = this.modelPath(settings);
    this.adopt(this.makeClient({ ...settings, modelPath }), key);
    return this.client!;
  }

  /** A replaced engine: closed now, or, while runs hold it, when the last one ends. */
  private async retire(client: SidecarClient | undefined): Promise<void> {
    if (!client) return;
    if (this.leases.has(client)) {
      this.log.info(`the replaced engine (${client.settings.modelPath}) stops when its running batch ends`);
      return;
    }
    await client.close(REPLACED);
  }

  private adopt(client: SidecarClient, key: string): void {
    this.client = client;
    this.clientKey = key;
    client.on('state', (state: SidecarState) => {
      if (client !== this.client) return;
      if (state === SidecarState.Starting) this.events.onLoading?.(client.settings.modelPath);
      this.events.onState(state, client.info);
    });
    client.on('restart', (why: string) => {
      this.log.warn(`engine restarting: ${why}`);
      if (client === this.client) this.events.onCrashRestart?.(why);
    });
  }

  private makeClient(settings: AssistantSettings): SidecarClient {
    this.log.info(`starting the engine with ${settings.modelPath}`);
    return new SidecarClient({
      modelPath: settings.modelPath,
      maxBatch: settings.maxParallelChannels,
      ...(settings.kvBudgetBytes !== undefined ? { kvBudgetBytes: settings.kvBudgetBytes } : {}),
    }, {
      sidecarPath: path.join(this.extensionPath, 'dist', 'sidecar.js'),
      log: (line) => this.log.info(line),
    });
  }
}
