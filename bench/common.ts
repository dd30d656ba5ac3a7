// What both benchmarks report the same way.
import fs from 'node:fs';
import path from 'node:path';
import type { Tokenizer } from '../src/engine/tokenizer.js';
import { median } from '../src/benchmark/minions.js';
import { mulberry32 } from '../src/benchmark/workload.js';

export { median, mulberry32 };

/** Which BLAS the venv's libmlx uses: setup replaces the wheel's reference BLAS with a link to OpenBLAS. */
export function blasDescription(root: string): string {
  const libs = path.join(root, '.venv', 'lib');
  const found = fs.existsSync(libs)
    ? fs.readdirSync(libs).map((py) => path.join(libs, py, 'site-packages', 'mlx_cpu.libs')).find((d) => fs.existsSync(d))
    : undefined;
  if (!found) return 'platform BLAS';
  const blas = fs.readdirSync(found).find((f) => /^libblas-.*\.so[.\d]*$/.test(f));
  if (!blas) return 'unknown BLAS';
  const full = path.join(found, blas);
  return fs.lstatSync(full).isSymbolicLink() ? `OpenBLAS (${fs.readlinkSync(full)})` : 'reference BLAS bundled in the wheel';
}


const NOUNS = ['order', 'invoice', 'customer', 'ticket', 'session', 'payment', 'report', 'shipment', 'account', 'budget', 'cart', 'coupon'];
const VERBS = ['load', 'save', 'validate', 'merge', 'format', 'archive', 'refund', 'schedule', 'cancel', 'export', 'audit', 'notify'];

/** A deterministic TypeScript-like source file of about `targetTokens` tokens; its function names. */
export function syntheticFile(seed: number, targetTokens: number, tokenizer: Tokenizer): { text: string; functions: string[]; tokens: number } {
  const rand = mulberry32(seed);
  const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)];
  const lines = [`// ${pick(NOUNS)}-service.ts: generated for the shared-prefix benchmark (seed ${seed})`, `import { db } from './db';`, ''];
  const functions: string[] = [];
  const used = new Set<string>();
  let text = lines.join('\n');
  while (tokenizer.encode(text).length < targetTokens) {
    let name: string;
    do name = `${pick(VERBS)}${pick(NOUNS)[0].toUpperCase()}${pick(NOUNS).slice(1)}${Math.floor(rand() * 100)}`;
    while (used.has(name));
    used.add(name);
    const noun = pick(NOUNS);
    const limit = 1 + Math.floor(rand() * 500);
    functions.push(name);
    lines.push(
      `/** ${pick(VERBS)}s the ${noun} records whose total is above ${limit}, then ${pick(VERBS)}s them. */`,
      `export async function ${name}(id: string, limit = ${limit}): Promise<number> {`,
      `  const rows = await db.${noun}s.where({ id }).limit(limit);`,
      `  let total = 0;`,
      `  for (const row of rows) {`,
      `    if (row.amount > ${Math.floor(rand() * 1000)}) total += row.amount * ${(1 + rand()).toFixed(2)};`,
      `    else await db.${pick(NOUNS)}s.${pick(VERBS)}(row.id);`,
      `  }`,
      `  return total;`,
      `}`,
      '',
    );
    text = lines.join('\n');
  }
  return { text, functions, tokens: tokenizer.encode(text).length };
}

export { freePort } from '../src/benchmark/mlx-lm-server.js';
