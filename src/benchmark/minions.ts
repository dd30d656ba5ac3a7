// The seed benchmark's runs: N questions about one generated document, asked
// two ways through any AskBackend (the built-in engine one row at a time or
// batched, or an OpenAI-compatible server):
//   packed   - all N questions in one message, answered as one JSON list (the seed's way);
//   channels - one question per decoding channel through the ask pipeline's
//              job code, the document a shared prefix (this product's way).
import type { AskBackend, Completion } from '../ask/backend.js';
import { runAsk } from '../ask/pipeline.js';
import { extractJsonObject } from '../ask/prompt.js';
import type { MinionAnswer, MinionMode, MinionRun } from './types.js';
import { minionDocument, scoreAnswer, type MinionDocument } from './workload.js';

export type { MinionAnswer, MinionMode, MinionRun } from './types.js';

/** As in the seed: 1000 tokens per channel, 1000 x N for a packed reply. */
export const TOKENS_PER_ANSWER = 1000;
/** Room left in the context beyond the counted prompt (a server's count is an estimate). */
const CONTEXT_MARGIN = 32;

const PACKED_SYSTEM = 'You read a document and answer every numbered question about it, using only the document. Reply in JSON: ' +
  '{"answers": [{"answer": ...}, ...]} with one entry per question, in order. "answer" is the short answer, or null when the document does not say.';

export function packedMessages(doc: MinionDocument, questions: string[]) {
  const numbered = questions.map((q, i) => `${i + 1}. ${q}`).join('\n');
  return [
    { role: 'system' as const, content: PACKED_SYSTEM },
    { role: 'user' as const, content: `Document:\n${doc.text}\n\nQuestions:\n${numbered}` },
  ];
}

export function packedSchema(n: number): Record<string, unknown> {
  return {
    type: 'object',
    properties: {
      answers: {
        type: 'array', minItems: n, maxItems: n,
        items: {
          // No maxLength: xgrammar unrolls it into states it precomputes masks for (4-5 s a schema here, and one schema per N).
          type: 'object', properties: { answer: { anyOf: [{ type: 'string' }, { type: 'null' }] } },
          required: ['answer'], additionalProperties: false,
        },
      },
    },
    required: ['answers'], additionalProperties: false,
  };
}

/** The answers of a packed reply, or undefined when it is not the JSON asked for. */
export function parsePacked(text: string, n: number): Array<string | null> | undefined {
  const json = extractJsonObject(text);
  if (json === undefined) return undefined;
  try {
    const value = JSON.parse(json) as { answers?: unknown };
    if (!Array.isArray(value.answers) || value.answers.length !== n) return undefined;
    const out: Array<string | null> = [];
    for (const item of value.answers) {
      const a = item && typeof item === 'object' ? (item as { answer?: unknown }).answer : undefined;
      if (a !== null && typeof a !== 'string') return undefined;
      out.push(a);
    }
    return out;
  } catch {
    return undefined;
  }
}

/** Median; NaN for no values. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Nearest-rank percentile. */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)];
}

function summarize(client: string, mode: MinionMode, doc: MinionDocument, wall: number,
  requests: MinionRun['requests'], answers: MinionAnswer[]): MinionRun {
  const sum = (k: keyof MinionRun['requests'][number]) => requests.reduce((n, r) => n + r[k], 0);
  const usage = { prompt: sum('prompt_tokens'), cached: sum('cached_tokens'), generated: sum('generated_tokens') };
  return {
    client, mode, context: doc.sentences.length, size: answers.length, wall_s: wall,
    prompt_tokens: usage.prompt, cached_tokens: usage.cached, prefilled_tokens: usage.prompt - usage.cached,
    generated_tokens: usage.generated, tokens_per_s: usage.generated / wall,
    latency_p50_s: percentile(answers.map((a) => a.latency_s), 50),
    latency_p95_s: percentile(answers.map((a) => a.latency_s), 95),
    json_valid_rate: answers.filter((a) => a.valid).length / answers.length,
    accuracy: answers.filter((a) => a.correct).length / answers.length,
    answers,
    requests,
  };
}

export interface MinionCase {
  client: string;
  backend: AskBackend;
  mode: MinionMode;
  context: number;
  size: number;
  seed: number;
  /** Output cap per answer (packed: this times the questions); the seed's is TOKENS_PER_ANSWER. */
  tokensPerAnswer?: number;
  signal?: AbortSignal;
}

/** One (client, mode, context, size) cell of the sweep. */
export async function runMinionCase(c: MinionCase): Promise<MinionRun> {
  const doc = minionDocument(c.seed, c.context, c.size);
  const questions = doc.questions.map((q) => q.question);
  const cap = c.tokensPerAnswer ?? TOKENS_PER_ANSWER;
  const start = performance.now();
  if (c.mode === 'packed') {
    const messages = packedMessages(doc, questions);
    // The seed's cap, as far as the model's context goes (1000 x 20 does not fit in 8,192).
    const [promptTokens] = await c.backend.countTokens([{ messages }]);
    const maxTokens = Math.max(1, Math.min(cap * c.size, c.backend.contextLength - promptTokens - CONTEXT_MARGIN));
    const reply: Completion = await c.backend.complete({
      id: `minions:packed:${c.seed}:${c.context}:${c.size}`, messages, maxTokens, temperature: 0, jsonSchema: packedSchema(c.size), signal: c.signal,
    });
    const wall = (performance.now() - start) / 1000;
    if (reply.finishReason === 'cancelled') throw new Error('cancelled');
    const parsed = reply.finishReason === 'error' || reply.finishReason === 'loop' ? undefined : parsePacked(reply.text, c.size);
    const answers = doc.questions.map((q, i) => ({
      question: q.question, expected: q.expected, answer: parsed ? parsed[i] : null, valid: parsed !== undefined,
      ended: reply.finishReason === 'length' || reply.finishReason === 'loop' || reply.finishReason === 'stop' ? reply.finishReason : 'error' as const,
      correct: parsed !== undefined && scoreAnswer(q, parsed[i]), latency_s: wall,
      ...(parsed === undefined ? { error: reply.error ?? 'the reply is not the JSON list asked for' } : {}),
    }));
    return summarize(c.client, 'packed', doc, wall,
      [{ prompt_tokens: reply.promptTokens, cached_tokens: reply.cachedTokens, generated_tokens: reply.generatedTokens }], answers);
  }
  const ended = new Map<string, number>();
  const report = await runAsk(c.backend, {
    questions, sources: [{ path: 'document.txt', text: doc.text }], maxTokens: cap, temperature: 0, signal: c.signal,
    onJob: (u) => {
      if (u.result) ended.set(u.id, (performance.now() - start) / 1000);
    },
  });
  const wall = (performance.now() - start) / 1000;
  if (report.cancelled) throw new Error('cancelled');
  const answers = doc.questions.map((q, i) => {
    const jobs = report.questions[i].results;
    // A short document is one chunk: one job per question.
    const r = jobs[0];
    const valid = r !== undefined && (r.state === 'found' || r.state === 'not_found');
    const answer = r?.state === 'found' ? r.answer : null;
    const how = r?.state === 'truncated' ? r.truncated_by ?? 'length'
      : r?.state === 'error' && !/not valid JSON|not a JSON object/.test(r.error ?? '') ? 'error' as const : 'stop' as const;
    return {
      question: q.question, expected: q.expected, answer, valid, ended: how, correct: valid && scoreAnswer(q, answer), latency_s: r ? ended.get(r.id) ?? wall : wall,
      ...(valid ? {} : { error: r?.error ?? (r ? r.state : 'no job ran') }),
    };
  });
  const requests = report.questions.flatMap((q) => q.results).map((r) => ({
    prompt_tokens: r.prompt_tokens, cached_tokens: r.cached_tokens, generated_tokens: r.generated_tokens,
  }));
  return summarize(c.client, 'channels', doc, wall, requests, answers);
}
