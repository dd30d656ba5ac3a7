// npm run eval:ask [-- --variants a,b --repeat-files]
//
// Answer quality of the ask pipeline on the labelled fixture set
// (test/fixtures/ask/labels.json): for each prompt variant, on the default
// model through the sidecar, greedy:
//   accuracy    answerable questions whose found answer contains the expected text;
//   abstention  unanswerable questions answered null, or with an unverified quote;
//   verified    found answers whose quote was located in the file.
// test/ask-quality.test.ts asserts a floor just below the chosen variant's figures.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

import type { AskBackend } from '../src/ask/backend.js';
import { SidecarBackend } from '../src/ask/backends/sidecar.js';
import { runAsk } from '../src/ask/pipeline.js';
import { PROMPT_VARIANTS, type PromptVariant } from '../src/ask/prompt.js';
import type { JobResult } from '../src/ask/report.js';
import { SidecarClient } from '../src/engine/client.js';
import { projectRoot } from '../src/engine/native.js';

const ROOT = projectRoot(__dirname);
export const LABELS_DIR = path.join(ROOT, 'test', 'fixtures', 'ask');

interface Label {
  file: string;
  question: string;
  expected: string | null;
}

export interface QualityScore {
  variant: string;
  answerable: number;
  correct: number;
  unanswerable: number;
  abstained: number;
  found: number;
  verified: number;
  accuracy: number;
  abstention: number;
  verifiedRate: number;
  seconds: number;
  /** Each label with what the pipeline answered. */
  rows: Array<Label & { state: string; answer: string | null; verified: boolean; ok: boolean }>;
}

export function loadLabels(): Label[] {
  return (JSON.parse(fs.readFileSync(path.join(LABELS_DIR, 'labels.json'), 'utf8')) as { items: Label[] }).items;
}

const norm = (s: string) => s.toLowerCase().replace(/\s+/g, ' ').trim();

/** Is `result` right for `label`: the expected text found in the answer, or a null / unverified answer where there is none. */
export function isCorrect(label: Label, result: JobResult): boolean {
  if (label.expected === null) return result.state === 'not_found' || (result.state === 'found' && !result.verified);
  return result.state === 'found' && result.answer !== null && norm(result.answer).includes(norm(label.expected));
}

export async function evaluate(backend: AskBackend, variant: PromptVariant): Promise<QualityScore> {
  const labels = loadLabels();
  const files = [...new Set(labels.map((l) => l.file))];
  const started = performance.now();
  // Every file's questions at once: one run per file, all in flight together.
  const runs = await Promise.all(files.map(async (file) => {
    const mine = labels.filter((l) => l.file === file);
    const report = await runAsk(backend, {
      questions: mine.map((l) => l.question),
      sources: [{ path: file, text: fs.readFileSync(path.join(LABELS_DIR, file), 'utf8') }],
      prompt: variant,
    });
    return mine.map((label, i) => ({ label, result: report.questions[i].results[0] }));
  }));
  const rows = runs.flat().map(({ label, result }) => ({
    ...label, state: result.state, answer: result.answer, verified: result.verified, ok: isCorrect(label, result),
  }));
  const answerable = rows.filter((r) => r.expected !== null);
  const unanswerable = rows.filter((r) => r.expected === null);
  const found = rows.filter((r) => r.state === 'found');
  const score = {
    variant: variant.name,
    answerable: answerable.length,
    correct: answerable.filter((r) => r.ok).length,
    unanswerable: unanswerable.length,
    abstained: unanswerable.filter((r) => r.ok).length,
    found: found.length,
    verified: found.filter((r) => r.verified).length,
    seconds: (performance.now() - started) / 1000,
    rows,
  };
  return {
    ...score,
    accuracy: score.correct / Math.max(1, score.answerable),
    abstention: score.abstained / Math.max(1, score.unanswerable),
    verifiedRate: score.verified / Math.max(1, score.found),
  };
}

export function qualityTable(scores: QualityScore[]): string {
  const pct = (x: number) => `${Math.round(x * 100)}%`;
  return [
    '| variant | accuracy (answerable) | abstention (unanswerable) | verified rate (found) | seconds |',
    '|---|---:|---:|---:|---:|',
    ...scores.map((s) => `| ${s.variant} | ${pct(s.accuracy)} (${s.correct}/${s.answerable}) | ${pct(s.abstention)} (${s.abstained}/${s.unanswerable}) ` +
      `| ${pct(s.verifiedRate)} (${s.verified}/${s.found}) | ${s.seconds.toFixed(0)} |`),
  ].join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { variants: { type: 'string' }, verbose: { type: 'boolean', default: false } } });
  const names = values.variants?.split(',');
  const variants = names ? PROMPT_VARIANTS.filter((v) => names.includes(v.name)) : [...PROMPT_VARIANTS];
  if (variants.length === 0) throw new Error(`no such variant; known: ${PROMPT_VARIANTS.map((v) => v.name).join(', ')}`);
  const client = new SidecarClient({ maxBatch: 32 }, { sidecarPath: path.join(ROOT, 'dist', 'sidecar.js') });
  try {
    const backend = new SidecarBackend(client, await client.start());
    const scores: QualityScore[] = [];
    for (const v of variants) {
      const s = await evaluate(backend, v);
      scores.push(s);
      process.stderr.write(`${v.name}: accuracy ${s.correct}/${s.answerable}, abstention ${s.abstained}/${s.unanswerable}, verified ${s.verified}/${s.found}\n`);
      if (values.verbose) {
        for (const r of s.rows) process.stderr.write(`  ${r.ok ? 'ok  ' : 'MISS'} ${r.file} | ${r.question} | ${r.state}${r.verified ? '' : ' (unverified)'} | ${r.answer}\n`);
      }
    }
    // Runs accumulate per variant in ask-quality.json, so variants measured in separate runs share one table.
    const jsonFile = path.join(ROOT, 'bench', 'results', 'ask-quality.json');
    const saved: Record<string, QualityScore & { date: string }> = fs.existsSync(jsonFile) ? JSON.parse(fs.readFileSync(jsonFile, 'utf8')) : {};
    const date = new Date().toISOString().slice(0, 10);
    for (const s of scores) saved[s.variant] = { ...s, date };
    fs.writeFileSync(jsonFile, `${JSON.stringify(saved, null, 2)}\n`);
    const all = PROMPT_VARIANTS.map((v) => saved[v.name]).filter((s) => s !== undefined);
    fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'ask-quality.md'), `# Ask answer quality (default model, greedy)\n\n` +
      `Command: \`npm run eval:ask [-- --variants NAME,...]\`. Labels: test/fixtures/ask/labels.json ` +
      `(${loadLabels().length} questions over ${new Set(loadLabels().map((l) => l.file)).size} files). Each row from its own run; seconds are wall time ` +
      `on a shared 2-core machine, not comparable across rows.\n\n${qualityTable(all)}\n`);
    process.stdout.write(`${qualityTable(scores)}\n`);
  } finally {
    await client.stop();
  }
}

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`${(e as Error).stack ?? e}\n`);
    process.exit(1);
  });
}
