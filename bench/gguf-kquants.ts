// npm run bench:gguf-kquants [-- --types Q4_K_M,Q5_K_M,Q6_K,Q3_K_M --tokens 40]
//
// The GGUF files people download, made here: llama.cpp (llama-cpp-python,
// built into .venv-llamacpp on first use, as `bench minions --peers llamacpp`
// does) requantizes the default model into each llama.cpp file type, and our
// engine and llama.cpp then decode the same chat prompt greedily from the same
// file. Reports each file's tensor types as our load describes them, how many
// greedy tokens agree, and where they part, our top-2 logit margin at that
// step: llama.cpp rounds activations to 8 bits in its quantized dot products,
// so the two can only part where the top two logits nearly tie.
// Writes bench/results/gguf-kquants.{json,md}.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { loadModelSpec } from '../src/engine/model-config.js';
import { createNativeEngine, projectRoot } from '../src/engine/native.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { llamaCppPython } from './llamacpp.js';

const ROOT = projectRoot(__dirname);
const DEFAULT_MODEL = path.join(ROOT, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
const RESULTS = path.join(ROOT, 'bench', 'results');
const PEER = path.join(ROOT, 'bench', 'python', 'llamacpp_kquants.py');
const GREEDY = { temperature: 0, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, repetitionContextSize: 20, seed: 0 };
const QUESTION = 'What is the capital of France? Answer in one sentence, then name two rivers there.';

interface Row { type: string; loaded: string; agree: number; tokens: number; margin_at_split: number | null; ours: string; llamacpp: string }

const topTwoMargin = (logits: Float32Array) => {
  let a = -Infinity, b = -Infinity;
  for (const v of logits) if (v > a) [a, b] = [v, a]; else if (v > b) b = v;
  return a - b;
};

/** Our greedy tokens after `prompt`, with the top-2 logit margin of each step. */
async function ours(file: string, prompt: number[], n: number): Promise<{ tokens: number[]; margins: number[]; loaded: string }> {
  const engine = createNativeEngine();
  try {
    const loaded = await engine.load(await loadModelSpec(file), { weights: 'float32', device: 'cpu' });
    await engine.addSequence(1, GREEDY);
    const first = await engine.prefill(1, Int32Array.from(prompt), true, true);
    const tokens = [first.token!], margins = [topTwoMargin(first.logits!)];
    while (tokens.length < n) {
      const r = await engine.decode({ wantLogits: true });
      tokens.push(r.tokens[0]);
      margins.push(topTwoMargin(r.logits!)); // one row: the whole array
    }
    return { tokens, margins, loaded: loaded.weightsNote ?? '' };
  } finally {
    await engine.close();
  }
}

async function main() {
  const { values } = parseArgs({ options: {
    model: { type: 'string', default: DEFAULT_MODEL },
    types: { type: 'string', default: 'Q4_K_M,Q5_K_M,Q6_K,Q3_K_M' },
    tokens: { type: 'string', default: '40' },
    out: { type: 'string', default: RESULTS },
  } });
  const n = Number(values.tokens);
  const python = llamaCppPython(ROOT, (line) => console.error(line));
  const tokenizer = await Tokenizer.fromModel(values.model);
  const prompt = tokenizer.encode(tokenizer.applyChatTemplate([{ role: 'user', content: QUESTION }], { addGenerationPrompt: true }),
    { addSpecialTokens: false });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gguf-kquants-'));
  const rows: Row[] = [];
  try {
    for (const type of values.types.split(',')) {
      const file = path.join(dir, `${path.basename(values.model, '.gguf')}.${type}.gguf`);
      execFileSync(python, [PEER, 'quantize', values.model, file, type], { stdio: ['ignore', 'ignore', 'inherit'] });
      const us = await ours(file, prompt, n);
      const them: number[] = JSON.parse(execFileSync(python, [PEER, 'greedy', file, String(n), JSON.stringify(prompt)], { encoding: 'utf8' }));
      let agree = 0;
      while (agree < n && us.tokens[agree] === them[agree]) agree++;
      rows.push({ type, loaded: us.loaded, agree, tokens: n, margin_at_split: agree < n ? us.margins[agree] : null,
        ours: tokenizer.decode(us.tokens), llamacpp: tokenizer.decode(them) });
      console.error(`${type}: ${agree}/${n} greedy tokens agree`);
      fs.rmSync(file);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  fs.mkdirSync(values.out, { recursive: true });
  fs.writeFileSync(path.join(values.out, 'gguf-kquants.json'), JSON.stringify({ model: path.basename(values.model), question: QUESTION, rows }, null, 2) + '\n');
  const md = [
    `# GGUF K-quant files: our engine against llama.cpp on the same file`,
    '',
    `${path.basename(values.model)} requantized by llama.cpp (llama_model_quantize) into each file type; the same chat prompt ` +
    `("${QUESTION}"), greedy, ${n} tokens, CPU, our weights float32. Where the two part, our top-2 logit margin at that step.`,
    '',
    '| file type | tensors as our load reports them | greedy tokens that agree | top-2 margin where they part |',
    '|---|---|---:|---:|',
    ...rows.map((r) => `| ${r.type} | ${r.loaded} | ${r.agree} / ${r.tokens} | ${r.margin_at_split === null ? '-' : r.margin_at_split.toFixed(3)} |`),
    '',
    ...rows.flatMap((r) => [`**${r.type}**, ours: ${JSON.stringify(r.ours)}`, '', `llama.cpp: ${JSON.stringify(r.llamacpp)}`, '']),
  ].join('\n');
  fs.writeFileSync(path.join(values.out, 'gguf-kquants.md'), md);
  console.log(md);
}

void main();
