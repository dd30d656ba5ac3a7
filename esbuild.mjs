// Bundles the TypeScript entry points into dist/. Add an entry to ENTRIES for
// each new bundle (extension, sidecar, ...); they share one base config.
//   node esbuild.mjs            build once
//   node esbuild.mjs --watch    rebuild on change
import * as esbuild from 'esbuild';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(fileURLToPath(import.meta.url));

/** @type {Array<{ in: string, out: string, options?: import('esbuild').BuildOptions }>} */
export const ENTRIES = [
  { in: 'src/cli.ts', out: 'cli' },
  { in: 'src/extension/extension.ts', out: 'extension' },
  { in: 'src/engine/sidecar.ts', out: 'sidecar' },
  // The results webview's script (media/results.ts; its stylesheet media/results.css is served as is).
  { in: 'media/results.ts', out: 'webview', options: { platform: 'browser', format: 'iife', target: 'es2022' } },
  // The benchmark webview's script, with vega, vega-lite and vega-interpreter inlined (media/benchmark.css as is).
  { in: 'media/benchmark.ts', out: 'benchmark-webview', options: { platform: 'browser', format: 'iife', target: 'es2022', external: [] } },
];

/** @type {import('esbuild').BuildOptions} */
const base = {
  absWorkingDir: root,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  sourcemap: true,
  outdir: 'dist',
  logLevel: 'warning',
  // vscode is provided by the host; the native addon is loaded at run time from
  // native/build (see src/engine/native.ts), never bundled. @huggingface/*
  // bundle cleanly (their CommonJS builds), so they are inlined.
  // @mlc-ai/web-xgrammar: src/engine/json-constraint.ts reads its file from node_modules at run time.
  // Bench charts load from node_modules when drawn: @resvg/resvg-js is a prebuilt addon per
  // platform, and vega's ESM build awaits an optional canvas at top level, which CommonJS cannot.
  external: ['vscode', '*.node', '@mlc-ai/web-xgrammar', '@resvg/resvg-js', 'vega', 'vega-lite'],
};

/** `only`: the `out` names to build (all when absent), e.g. `build({ only: ['webview'] })` from a test. */
export async function build({ watch = false, only = undefined } = {}) {
  const entries = only ? ENTRIES.filter((e) => only.includes(e.out)) : ENTRIES;
  const contexts = await Promise.all(
    entries.map((e) => esbuild.context({ ...base, ...e.options, entryPoints: [{ in: e.in, out: e.out }] })),
  );
  if (watch) {
    await Promise.all(contexts.map((c) => c.watch()));
    console.log(`[esbuild] watching ${entries.map((e) => e.in).join(', ')}`);
    return;
  }
  try {
    const results = await Promise.all(contexts.map((c) => c.rebuild()));
    const errors = results.reduce((n, r) => n + r.errors.length, 0);
    if (errors) throw new Error(`${errors} esbuild error(s)`);
  } finally {
    await Promise.all(contexts.map((c) => c.dispose()));
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  build({ watch: process.argv.includes('--watch') }).catch((e) => {
    console.error(e.message);
    process.exit(1);
  });
}
