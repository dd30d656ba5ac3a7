// The engine sweep's runs (bench:engine, bench:gpu): short chat prompts, every
// row decoding a fixed number of tokens.
import type { NativeEngine } from '../src/engine/native.js';
import type { Tokenizer } from '../src/engine/tokenizer.js';
import { median } from '../src/benchmark/minions.js';
import { DEFAULT_SAMPLING } from '../src/engine/scheduler.js';

export const QUESTIONS = [
  'What is the capital of France?', 'Write a haiku about rain.', 'Explain what a hash map is.',
  'List three primary colors.', 'Why is the sky blue?', 'Summarize the plot of Hamlet in two sentences.',
  'What does HTTP stand for?', 'Give me a tip for writing clean code.', 'How many legs does a spider have?',
  'Translate "good morning" into Spanish.', 'What is 12 times 12?', 'Name a famous physicist.',
  'Describe a cat in one sentence.', 'What is the boiling point of water?', 'Suggest a name for a pet turtle.',
  'What is recursion?', 'Who wrote Pride and Prejudice?', 'What is the largest planet?',
  'Write a short greeting for a birthday card.', 'What is photosynthesis?', 'Explain what an API is.',
  'What is the speed of light?', 'Give an example of a prime number.', 'What language is spoken in Brazil?',
  'How do you make tea?', 'What is a binary tree?', 'Name a mammal that can fly.', 'What is gravity?',
  'Write one line of Python that prints hello.', 'What causes rain?', 'What is the tallest mountain?',
  'Explain version control briefly.',
];

/** QUESTIONS as chat prompts, token ids. */
export function questionPrompts(tokenizer: Tokenizer): number[][] {
  return QUESTIONS.map((q) => tokenizer.encode(
    tokenizer.applyChatTemplate([{ role: 'user', content: q }], { addGenerationPrompt: true }), { addSpecialTokens: false }));
}

/** `batch` prompts, cycling through `prompts`. */
export function promptsForBatch(prompts: number[][], batch: number): number[][] {
  return Array.from({ length: batch }, (_, i) => prompts[i % prompts.length]);
}

export interface SweepRun { decode_tps: number; prefill_tps: number; peak_memory_bytes: number; generated_tokens: number; wall_s: number }

export async function sweepOnce(engine: NativeEngine, prompts: number[][], maxTokens: number): Promise<SweepRun> {
  await engine.resetPeakMemory();
  const start = performance.now();
  let promptTokens = 0;
  for (const [id, p] of prompts.entries()) {
    await engine.addSequence(id, DEFAULT_SAMPLING, undefined, p.length);
    await engine.prefill(id, Int32Array.from(p), true);
    promptTokens += p.length;
  }
  const prefillEnd = performance.now();
  // Every row decodes exactly maxTokens (EOS ignored, as in the mlx-lm run):
  // one token comes from prefill, the rest from batched decode steps.
  let decoded = 0;
  for (let step = 1; step < maxTokens; step++) decoded += (await engine.decode()).tokens.length;
  const end = performance.now();
  const peak = (await engine.stats()).peakMemory;
  for (const id of prompts.keys()) await engine.remove(id);
  return {
    decode_tps: decoded / ((end - prefillEnd) / 1000),
    prefill_tps: promptTokens / ((prefillEnd - start) / 1000),
    peak_memory_bytes: peak,
    generated_tokens: decoded + prompts.length,
    wall_s: (end - start) / 1000,
  };
}

/**
 * `repeats` runs of the batch, each followed by one row of it, so the scaling
 * over batch 1 compares runs seconds apart: a shared machine's speed drifts by
 * tens of percent over the minutes a sweep takes. `scaling` is per repeat.
 */
export async function pairedBatchRuns(engine: NativeEngine, batchPrompts: number[][], maxTokens: number, repeats: number) {
  const runs: SweepRun[] = [];
  const scaling: number[] = [];
  await sweepOnce(engine, batchPrompts, 4); // warm this batch shape
  for (let r = 0; r < repeats; r++) {
    const run = await sweepOnce(engine, batchPrompts, maxTokens);
    runs.push(run);
    const single = batchPrompts.length === 1 ? run : await sweepOnce(engine, batchPrompts.slice(0, 1), maxTokens);
    scaling.push(run.decode_tps / single.decode_tps);
  }
  return { runs, scaling, decode_tps: median(runs.map((r) => r.decode_tps)), scaling_vs_batch1: median(scaling) };
}
