// End to end in a real VS Code: the packaged VSIX installed into code-server
// (VS Code in a browser, from npm), driven by Debian's chromium through
// playwright-core, answering with the real engine and the default model.
// The tools come from scripts/e2e-setup.mjs (run by `npm run test:e2e`).
//
//   package -> install into code-server -> Explorer: select 2 files and a
//   folder, right-click, Ask About Files… -> a question -> rows stream into the
//   results webview and end with answers; the status bar shows tok/s -> a
//   click on a row opens its file -> a second run, cancelled -> Reload Window:
//   the panel comes back with the finished results -> Run Benchmark (quick
//   check): its charts draw in the benchmark webview -> Show Benchmark Report
//   reopens it.
//
// Screenshots of every step go to test-artifacts/e2e/; on a failure also
// failure.png and code-server's logs (test-artifacts/e2e/logs/).
// Everything started here (code-server, chromium) is stopped by PID.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { DEFAULT_MODEL, ROOT } from '../support/fixtures.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- playwright-core lives in the e2e cache, outside node_modules */
type Page = any;
type FrameLocator = any;

interface E2ePaths {
  node: string;
  codeServer: string;
  playwrightCore: string;
  chromium: string;
}

const ARTIFACTS = path.join(ROOT, 'test-artifacts', 'e2e');
const QUESTION = 'Who is the lead maintainer?';
const SECOND_QUESTIONS = ['What is the request timeout in seconds?', 'Which currency is used for matching?'];
/** The first run: 4 jobs on 2 CPU cores with the default model. */
const RUN_TIMEOUT_MS = 6 * 60_000;
const FINAL_STATES = ['found', 'not_found', 'truncated', 'error', 'cancelled'];

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-batch-e2e-'));
const started: ChildProcess[] = [];
// Started detached (their own groups), so neither the terminal's Ctrl-C nor
// a killed test process reaches them: stop them from this process's exit.
process.once('exit', () => {
  for (const child of started) {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch { /* gone */ }
    }
  }
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));
let paths: E2ePaths;
let page: Page;
let browser: any;
let codeServerLog = '';
let failed = false;
let shot = 0;

// ---------------------------------------------------------------------------
// Helpers.

function log(msg: string): void {
  console.error(`[e2e ${new Date().toISOString().slice(11, 19)}] ${msg}`);
}

async function screenshot(name: string): Promise<void> {
  if (!page) return;
  shot++;
  const file = path.join(ARTIFACTS, `${String(shot).padStart(2, '0')}-${name}.png`);
  try {
    await page.screenshot({ path: file, timeout: 15_000 });
    log(`screenshot ${path.relative(ROOT, file)}`);
  } catch (e) {
    log(`screenshot ${name} failed: ${(e as Error).message}`);
  }
}

/** Polls `check` until it returns a truthy value; fails with `what` and the last value seen. */
async function waitFor<T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs: number, everyMs = 500): Promise<T> {
  const t0 = Date.now();
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
      last = v;
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what} (last: ${JSON.stringify(last)?.slice(0, 500)})`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

function httpOk(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(url, (res) => {
      res.resume();
      resolve((res.statusCode ?? 500) < 500);
    });
    req.on('error', () => resolve(false));
    req.setTimeout(2000, () => {
      req.destroy();
      resolve(false);
    });
  });
}

/** A process of our own, in its own process group (its children are stopped with it). */
function startProcess(cmd: string, args: string[], env: NodeJS.ProcessEnv, name: string): ChildProcess {
  const child = spawn(cmd, args, { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(child);
  const sink = fs.createWriteStream(path.join(tmp, `${name}.log`));
  child.stdout!.pipe(sink);
  child.stderr!.pipe(sink);
  return child;
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  for (const [signal, waitMs] of [['SIGTERM', 5000], ['SIGKILL', 5000]] as const) {
    try {
      process.kill(-child.pid, signal); // the group we started
    } catch {
      return;
    }
    if (await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), waitMs))])) return;
  }
}

/** The Isolated HOME and XDG folders code-server and chromium write into. */
function isolatedEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('XDG_') || k.startsWith('VSCODE_')) delete env[k];
  const dirs: Record<string, string> = {
    HOME: 'home', XDG_CONFIG_HOME: 'xdg/config', XDG_DATA_HOME: 'xdg/data', XDG_CACHE_HOME: 'xdg/cache',
    XDG_STATE_HOME: 'xdg/state', XDG_RUNTIME_DIR: 'xdg/runtime',
  };
  for (const [k, d] of Object.entries(dirs)) {
    env[k] = path.join(tmp, d);
    fs.mkdirSync(env[k]!, { recursive: true, mode: 0o700 });
  }
  env.EXTENSIONS_GALLERY = '{"serviceUrl":""}';
  delete env.MLX_BATCH_ADDON;
  delete env.LD_LIBRARY_PATH;
  return env;
}

function findFiles(dir: string, name: RegExp): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? findFiles(p, name) : name.test(e.name) ? [p] : [];
  });
}

const webview = (): FrameLocator => page.frameLocator('iframe.webview').frameLocator('iframe#active-frame');

/** The jobs the results webview shows: [file, state or phase]. */
async function rows(): Promise<Array<{ file: string; state: string | null; phase: string | null }>> {
  return webview().locator('article.job').evaluateAll((els: HTMLElement[]) => els.map((e) => ({
    file: e.closest('[data-file]')?.getAttribute('data-file') ?? '',
    state: e.getAttribute('data-state'),
    phase: e.getAttribute('data-phase'),
  })));
}

async function commandPalette(command: string): Promise<void> {
  await page.keyboard.press('F1');
  const input = page.locator('.quick-input-widget input');
  await input.waitFor({ state: 'visible', timeout: 15_000 });
  await input.fill(`>${command}`);
  const item = page.locator('.quick-input-list .monaco-list-row', { hasText: command }).first();
  await item.waitFor({ state: 'visible', timeout: 15_000 });
  await page.keyboard.press('Enter');
}

/** Explorer: click the first, ctrl+click the others, right-click, Ask About Files…, the questions, Enter on an empty box. */
async function askAboutFiles(names: string[], questions: string[]): Promise<void> {
  const item = (name: string) => page.locator(`.explorer-folders-view .monaco-list-row[aria-label="${name}"]`).first();
  const selected = (): Promise<string[]> => page.locator('.explorer-folders-view .monaco-list-row.selected').evaluateAll(
    (els: HTMLElement[]) => els.map((e) => e.getAttribute('aria-label') ?? ''));
  // A click on a file opens it, and an editor opening late may still move the
  // Explorer's selection: wait for that tab, check the selection, and start
  // over (at most 3 times) if it is not what was clicked.
  for (let attempt = 1; ; attempt++) {
    try {
      for (const [i, name] of names.entries()) {
        await item(name).waitFor({ state: 'visible', timeout: 30_000 });
        await item(name).click({ modifiers: i === 0 ? [] : ['Control'] });
        if (i === 0 && name.includes('.')) {
          await page.locator('.tabs-container .tab', { hasText: name }).first().waitFor({ state: 'visible', timeout: 15_000 });
        }
        await waitFor(`the Explorer to select ${names.slice(0, i + 1).join(', ')}`, async () => {
          const now = await selected();
          return names.slice(0, i + 1).every((n) => now.includes(n)) && now;
        }, 5_000, 200);
      }
      break;
    } catch (e) {
      if (attempt === 3) throw e;
      log(`selecting in the Explorer, attempt ${attempt}: ${(e as Error).message}; again`);
      await page.keyboard.press('Escape');
    }
  }
  await item(names[names.length - 1]).click({ button: 'right' });
  const menuItem = page.locator('.monaco-menu .action-item', { hasText: 'Ask About Files…' }).first();
  await menuItem.waitFor({ state: 'visible', timeout: 15_000 });
  await screenshot('context-menu');
  await menuItem.click();
  const input = page.locator('.quick-input-widget input');
  await input.waitFor({ state: 'visible', timeout: 30_000 });
  for (const q of questions) {
    await input.fill(q);
    await page.locator('.quick-input-list .monaco-list-row', { hasText: q }).first().waitFor({ state: 'visible', timeout: 10_000 });
    await page.keyboard.press('Enter');
    await page.locator('.quick-input-list .monaco-list-row', { hasText: 'added' }).filter({ hasText: q }).first()
      .waitFor({ state: 'visible', timeout: 10_000 });
  }
  await screenshot('questions');
  await input.fill('');
  await page.keyboard.press('Enter');
  await page.locator('.quick-input-widget').waitFor({ state: 'hidden', timeout: 10_000 });
}

/** The benchmark webview's frame (beside the results one, so found by its body class), or undefined. */
async function benchmarkFrame(): Promise<any | undefined> {
  for (const f of page.frames()) {
    if (await f.evaluate(() => document.body?.classList.contains('mlx-bench')).catch(() => false)) return f;
  }
  return undefined;
}

/** What the benchmark webview shows: status text, runs drawn in the charts, charts with an SVG, table rows. */
async function benchmarkView(): Promise<{ status: string; drawn: number; charts: string[]; rows: number } | undefined> {
  const f = await benchmarkFrame();
  return f?.evaluate(() => ({
    status: document.querySelector('.bench-status')?.textContent ?? '',
    drawn: Number(document.body.dataset.chartsDrawn ?? -1),
    charts: [...document.querySelectorAll<HTMLElement>('figure.bench-chart')].filter((e) => e.querySelector('svg g.mark-rect path')).map((e) => e.dataset.chart ?? ''),
    rows: document.querySelectorAll('.bench-runs tbody tr').length,
  })).catch(() => undefined);
}

async function statusBarText(): Promise<string> {
  return (await page.locator('.statusbar-item', { hasText: /tok\/s|SmolLM2|starting|no model/ }).allInnerTexts()).join(' | ');
}

/** Runs `fn` as a step; after a failed step the rest are skipped (they would only fail the same way). */
function step(name: string, fn: () => Promise<void>, timeout = 120_000): void {
  test(name, { timeout }, async (t) => {
    if (failed) {
      t.skip('an earlier step failed');
      return;
    }
    try {
      await fn();
    } catch (e) {
      failed = true;
      await screenshot(`failure-${name.replace(/\W+/g, '-').slice(0, 40)}`);
      throw e;
    }
  });
}

// ---------------------------------------------------------------------------

const setupCheck = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'e2e-setup.mjs'), '--check'], { encoding: 'utf8' });
const skip = setupCheck.status !== 0
  ? `the e2e tools are not installed (run \`node scripts/e2e-setup.mjs\`, or \`npm run test:e2e\`): ${setupCheck.stderr.trim()}`
  : !fs.existsSync(DEFAULT_MODEL) ? `${DEFAULT_MODEL} is missing (npm run setup)` : false;

describe('the extension in code-server', { skip }, () => {
  const workspace = path.join(tmp, 'workspace');
  const userData = path.join(tmp, 'user-data');
  const extensions = path.join(tmp, 'extensions');
  let env: NodeJS.ProcessEnv;
  let url = '';

  before(() => {
    paths = JSON.parse(setupCheck.stdout) as E2ePaths;
    fs.rmSync(ARTIFACTS, { recursive: true, force: true });
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    env = isolatedEnv();
    log(`temp folder ${tmp}`);
  });

  after(async () => {
    // The extension's own log, always; everything else only on a failure.
    const logs = path.join(userData, 'logs');
    for (const f of findFiles(logs, /^(MLX Batch Assistant|remoteexthost)\.log$/)) {
      fs.copyFileSync(f, path.join(ARTIFACTS, path.relative(logs, f).split(path.sep).join('_').replace(/ /g, '-')));
    }
    if (failed) {
      // What the editor and the extension logged, for the failure report.
      if (fs.existsSync(logs)) fs.cpSync(logs, path.join(ARTIFACTS, 'logs'), { recursive: true });
      for (const f of fs.readdirSync(tmp).filter((n) => n.endsWith('.log'))) fs.copyFileSync(path.join(tmp, f), path.join(ARTIFACTS, f));
      if (codeServerLog) log(`code-server log: ${codeServerLog}`);
    }
    try {
      await browser?.close();
    } catch { /* stopped below */ }
    for (const child of started.reverse()) await stopProcess(child);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  step('1. packages the VSIX and installs it into code-server', async () => {
    const vsix = path.join(tmp, 'mlx-batch-assistant.vsix');
    const pack = spawnSync('npm', ['run', 'package', '--', '--out', vsix], { cwd: ROOT, encoding: 'utf8' });
    assert.equal(pack.status, 0, `npm run package failed:\n${pack.stdout}\n${pack.stderr}`);
    const install = spawnSync(paths.node, [paths.codeServer, '--user-data-dir', userData, '--extensions-dir', extensions, '--install-extension', vsix],
      { env, encoding: 'utf8', timeout: 120_000 });
    assert.equal(install.status, 0, `--install-extension failed:\n${install.stdout}\n${install.stderr}`);
    assert.match(install.stdout, /successfully installed/);
    const settings = {
      'mlxBatch.modelPath': DEFAULT_MODEL,
      'mlxBatch.maxTokens': 96,
      'mlxBatch.chunkTokens': 512,
      'workbench.startupEditor': 'none',
      'security.workspace.trust.enabled': false,
      'workbench.tips.enabled': false,
      'extensions.autoCheckUpdates': false,
      'extensions.autoUpdate': false,
      'telemetry.telemetryLevel': 'off',
      'update.mode': 'none',
      'chat.disableAIFeatures': true,
      'window.commandCenter': false,
      // The Explorer follows the active editor otherwise, which can move its selection while the test clicks.
      'explorer.autoReveal': false,
    };
    // User settings; code-server is a remote window, where user values of
    // machine-scoped settings (mlxBatch.modelPath is machine-overridable) are
    // not applied: those go into the remote's own (Machine) settings too.
    for (const scope of ['User', 'Machine']) {
      fs.mkdirSync(path.join(userData, scope), { recursive: true });
      fs.writeFileSync(path.join(userData, scope, 'settings.json'), JSON.stringify(settings, null, 2));
    }
    // The workspace: the ask fixtures, and a folder of two more files.
    fs.mkdirSync(path.join(workspace, 'team'), { recursive: true });
    for (const f of fs.readdirSync(path.join(ROOT, 'test', 'fixtures', 'ask', 'docs'))) {
      fs.copyFileSync(path.join(ROOT, 'test', 'fixtures', 'ask', 'docs', f), path.join(workspace, f));
    }
    fs.writeFileSync(path.join(workspace, 'team', 'owners.md'), '# Owners\n\nThe billing service is owned by the payments team.\nIts on-call rotation changes every Monday.\n');
    fs.writeFileSync(path.join(workspace, 'team', 'contacts.md'), '# Contacts\n\nQuestions about invoices go to billing-help, a shared mailbox.\n');
  }, 240_000);

  step('2. starts code-server and opens the workspace in chromium', async () => {
    const port = await freePort();
    const config = path.join(tmp, 'code-server.yaml');
    fs.writeFileSync(config, `bind-addr: 127.0.0.1:${port}\nauth: none\ncert: false\n`);
    codeServerLog = path.join(tmp, 'code-server.log');
    startProcess(paths.node, [paths.codeServer, '--config', config, '--bind-addr', `127.0.0.1:${port}`, '--auth', 'none',
      '--disable-telemetry', '--disable-update-check', '--disable-workspace-trust', '--disable-getting-started-override',
      '--user-data-dir', userData, '--extensions-dir', extensions, workspace], env, 'code-server');
    url = `http://127.0.0.1:${port}/`;
    await waitFor(`code-server to answer on ${url}healthz`, () => httpOk(`${url}healthz`), 60_000);

    // Chromium of our own (its PID is ours to stop), driven over CDP.
    const profile = path.join(tmp, 'chromium-profile');
    fs.mkdirSync(profile);
    const chromium = startProcess(paths.chromium, ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
      '--window-size=1600,1000', `--user-data-dir=${profile}`, '--remote-debugging-address=127.0.0.1', '--remote-debugging-port=0',
      'about:blank'], env, 'chromium');
    const endpoint = await new Promise<string>((resolve, reject) => {
      let text = '';
      const timer = setTimeout(() => reject(new Error(`chromium did not print its DevTools endpoint in 30 s: ${text.slice(-1000)}`)), 30_000);
      chromium.stderr!.on('data', (d: Buffer) => {
        text += d.toString();
        const m = /DevTools listening on (ws:\/\/\S+)/.exec(text);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      chromium.once('exit', (code) => reject(new Error(`chromium exited (${code}): ${text.slice(-1000)}`)));
    });
    const { chromium: pw } = require(paths.playwrightCore) as { chromium: { connectOverCDP(url: string): Promise<any> } };
    browser = await pw.connectOverCDP(endpoint);
    const context = browser.contexts()[0];
    page = context.pages()[0] ?? (await context.newPage());
    await page.setViewportSize({ width: 1600, height: 1000 });
    page.setDefaultTimeout(30_000);
    await page.goto(`${url}?folder=${encodeURIComponent(workspace)}`);
    await page.locator('.monaco-workbench').waitFor({ state: 'visible', timeout: 90_000 });
    // The Explorer shows the workspace.
    await page.locator('.explorer-folders-view .monaco-list-row[aria-label="billing.py"]').waitFor({ state: 'visible', timeout: 60_000 });
    await screenshot('workbench');
  }, 180_000);

  step('3-6. asks about 2 files and a folder: rows stream in, end with answers; the status bar shows tok/s', async () => {
    await askAboutFiles(['project-notes.md', 'config.yaml', 'team'], [QUESTION]);
    const frame = webview();
    await waitFor('the results panel to show the run', () => frame.locator('article.job').count(), 90_000);
    await screenshot('rows-streaming');
    // While the run goes: the status bar's throughput item.
    const statusTexts = new Set<string>();
    let sawTokS = '';
    let sawStreaming = false;
    const t0 = Date.now();
    const final = await waitFor('every row of the first run to reach a final state', async () => {
      const text = await statusBarText().catch(() => '');
      if (text) statusTexts.add(text);
      // The live item: "<n> tok/s · <channels> ch", with a rate above zero once rows decode.
      if (!sawTokS && /[1-9]\d* tok\/s · \d+ ch/.test(text)) {
        sawTokS = text;
        await screenshot('status-bar-tok-s');
      }
      const r = await rows();
      if (r.some((x) => x.phase === 'generating' || x.phase === 'reading')) sawStreaming = true;
      return r.length >= 4 && r.every((x) => x.state && FINAL_STATES.includes(x.state)) && r;
    }, RUN_TIMEOUT_MS, 250);
    log(`first run: ${final.length} rows in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${final.map((x) => `${x.file}=${x.state}`).join(', ')}; status bar: ${sawTokS}`);
    await screenshot('first-run-done');
    assert.deepEqual([...new Set(final.map((x) => x.file))].sort(), ['config.yaml', 'project-notes.md', 'team/contacts.md', 'team/owners.md']);
    assert.ok(final.some((x) => x.state === 'found' || x.state === 'not_found'), `no row was answered: ${JSON.stringify(final)}`);
    assert.ok(final.every((x) => x.state !== 'error'), `a row ended in error: ${JSON.stringify(final)}`);
    assert.ok(sawStreaming, 'no row was seen reading or generating');
    assert.match(sawTokS, /tok\/s/, `the status bar never showed a decode rate during the run; it showed: ${[...statusTexts].join(' / ')}`);
    // The answer from the file that holds it.
    const notes = frame.locator('section.file-group[data-file="project-notes.md"] article.job');
    assert.equal(await notes.getAttribute('data-state'), 'found', `project-notes.md: ${await notes.innerText()}`);
    assert.match(await notes.innerText(), /Dana Okafor/);
  }, RUN_TIMEOUT_MS + 180_000);

  step('7. a click on a row opens its file in the editor', async () => {
    const frame = webview();
    const row = frame.locator('section.file-group[data-file="config.yaml"] article.job').first();
    await row.locator('.loc').first().click();
    const tab = page.locator('.tabs-container .tab.active', { hasText: 'config.yaml' });
    await tab.first().waitFor({ state: 'visible', timeout: 20_000 });
    // The editor's title bar offers Ask About This File.
    await page.locator('.editor-actions .action-label[aria-label^="Ask About This File"]').first().waitFor({ state: 'visible', timeout: 20_000 });
    // A citation, where the model gave one, opens its file the same way.
    const cite = frame.locator('section.file-group[data-file="project-notes.md"] .citation').first();
    if (await cite.count()) {
      await cite.click();
      await page.locator('.tabs-container .tab.active', { hasText: 'project-notes.md' }).first().waitFor({ state: 'visible', timeout: 20_000 });
    }
    await screenshot('file-opened');
  });

  step('8. a second run is cancelled: its rows end as cancelled', async () => {
    await page.locator('.explorer-folders-view .monaco-list-row[aria-label="billing.py"]').first().click();
    await askAboutFiles(['billing.py', 'CHANGELOG.md', 'team'], SECOND_QUESTIONS);
    const frame = webview();
    // The panel switches to the new run: 2 questions x 4 files.
    await waitFor('the second run\'s rows', async () => {
      const r = await rows();
      return r.length === 8 && r.some((x) => !x.state) && r;
    }, 60_000, 200);
    await screenshot('second-run-started');
    await commandPalette('MLX Batch: Cancel Batch');
    const final = await waitFor('the second run to end with cancelled rows', async () => {
      const r = await rows();
      const status = await frame.locator('.status-pill').first().innerText().catch(() => '');
      return r.length === 8 && r.every((x) => x.state) && /cancelled/i.test(status) && r;
    }, 60_000, 250);
    log(`second run: ${final.map((x) => `${x.file}=${x.state}`).join(', ')}`);
    assert.ok(final.some((x) => x.state === 'cancelled'), `no row was cancelled: ${JSON.stringify(final)}`);
    assert.ok(final.every((x) => x.state === 'cancelled' || x.state === 'found' || x.state === 'not_found'), JSON.stringify(final));
    await screenshot('second-run-cancelled');
  }, 180_000);

  step('9. Reload Window: the results panel is restored with the finished results', async () => {
    const before = await rows();
    await commandPalette('Developer: Reload Window');
    await page.waitForEvent('load', { timeout: 60_000 }).catch(() => undefined);
    await page.locator('.monaco-workbench').waitFor({ state: 'visible', timeout: 90_000 });
    const restored = await waitFor('the restored results panel to show the finished rows', async () => {
      const r = await rows();
      return r.length === before.length && r.every((x) => x.state) && r;
    }, 120_000, 500);
    assert.deepEqual(restored.map((x) => `${x.file}=${x.state}`).sort(), before.map((x) => `${x.file}=${x.state}`).sort());
    // Both runs are still there to pick.
    const options = await webview().locator('.run-picker option, .run-picker vscode-option').count();
    assert.ok(options >= 2, `the run picker lists ${options} runs`);
    await screenshot('restored-after-reload');
  }, 240_000);

  step('10. Run Benchmark, quick check: the charts and the table fill in as runs end, drawn under the webview CSP', async () => {
    await commandPalette('MLX Batch: Run Benchmark…');
    const input = page.locator('.quick-input-widget input');
    await input.waitFor({ state: 'visible', timeout: 15_000 });
    await page.locator('.quick-input-list .monaco-list-row', { hasText: 'Quick check' }).first().click();
    // 2 clients (one at a time, batched) x 2 sizes x 2 modes.
    await waitFor('the first benchmark run in the charts', async () => {
      const v = await benchmarkView();
      return v && v.drawn > 0 && v.drawn < 8 && v;
    }, 8 * 60_000, 500);
    await screenshot('benchmark-running');
    const done = await waitFor('the benchmark to end with 8 runs drawn', async () => {
      const v = await benchmarkView();
      return v && /^Done/.test(v.status) && v.drawn === 8 && v;
    }, 12 * 60_000, 1000);
    log(`benchmark: ${JSON.stringify(done)}`);
    assert.deepEqual(done.charts, ['context_sweep', 'long_context_clients', 'batch_size_sweep']);
    assert.equal(done.rows, 8);
    await screenshot('benchmark-done');
  }, 22 * 60_000);

  step('11. Show Benchmark Report reopens the last report', async () => {
    await page.keyboard.press('Escape');
    await commandPalette('View: Close All Editors');
    await waitFor('the benchmark panel to close', async () => !(await benchmarkFrame()), 20_000, 250);
    await commandPalette('MLX Batch: Show Benchmark Report');
    const shown = await waitFor('the saved report with its charts', async () => {
      const v = await benchmarkView();
      return v && /^Done/.test(v.status) && v.drawn === 8 && v.charts.length === 3 && v;
    }, 60_000, 500);
    assert.equal(shown.rows, 8);
    await screenshot('benchmark-report-reopened');
  }, 120_000);
});
