// What one minion job asks and the shape it must answer in.
//
// Prompt order: a fixed system prompt, then the file's path and the chunk,
// then the question last, so every question about one chunk shares one token
// prefix (the sidecar's prefix cache then reads the chunk once). Field order
// in the schema matters to a small model: it decides as it writes. The
// variants below were compared by `npm run eval:ask` on labelled questions
// (README, "Answer quality"); DEFAULT_PROMPT is the one that measured best.
import type { ChatMessage } from '../engine/protocol.js';

export interface PromptVariant {
  name: string;
  system: string;
  schema: Record<string, unknown>;
  /** The user message: file and chunk first, the question last. */
  user(file: string, startLine: number, endLine: number, chunk: string, question: string): string;
}

const MAX_EXPLANATION = 200;
const MAX_CITATION = 160;
const MAX_ANSWER = 120;

const str = (maxLength: number) => ({ type: 'string', maxLength });
const nullableString = (maxLength: number) => ({ anyOf: [str(maxLength), { type: 'null' }] });
const objectOf = (properties: Record<string, unknown>) => ({
  type: 'object', properties, required: Object.keys(properties), additionalProperties: false,
});
const plainUser: PromptVariant['user'] = (file, startLine, endLine, chunk, question) =>
  `File: ${file} (lines ${startLine}-${endLine})\n\n${chunk}\n\nQuestion: ${question}`;
/** A fence longer than any backtick run in the chunk, so a Markdown file's own ``` does not end it early. */
const fenceFor = (chunk: string) => '`'.repeat((chunk.match(/`+/g) ?? []).reduce((n, run) => Math.max(n, run.length + 1), 3));
const fencedUser: PromptVariant['user'] = (file, startLine, endLine, chunk, question) => {
  const fence = fenceFor(chunk);
  return `File: ${file} (lines ${startLine}-${endLine})\n\n${fence}\n${chunk}\n${fence}\n\nQuestion: ${question}`;
};

const READ_ONE_EXCERPT = 'You read one excerpt of a file and answer one question about it, using only the excerpt. Reply in JSON. ';

/** minions' worker shape: explanation, then a verbatim citation, then the answer (null = not in this chunk). */
export const EXPLAIN_CITE_ANSWER: PromptVariant = {
  name: 'explain-cite-answer',
  system: READ_ONE_EXCERPT +
    '"explanation": what the excerpt says about the question, in one sentence. ' +
    '"citation": copy, word for word, the shortest line or sentence of the excerpt that contains the answer. ' +
    '"answer": the short answer; null when the excerpt does not contain it.',
  schema: objectOf({ explanation: str(MAX_EXPLANATION), citation: str(MAX_CITATION), answer: nullableString(MAX_ANSWER) }),
  user: plainUser,
};

/** The same with the chunk in a code fence, which marks where the file text ends. */
export const EXPLAIN_CITE_ANSWER_FENCED: PromptVariant = { ...EXPLAIN_CITE_ANSWER, name: 'explain-cite-answer-fenced', user: fencedUser };

/** No explanation: quote, then answer. Fewer tokens per job. */
export const CITE_ANSWER: PromptVariant = {
  name: 'cite-answer',
  system: READ_ONE_EXCERPT +
    '"citation": copy, word for word, the line of the excerpt that answers the question. ' +
    '"answer": the short answer taken from that line; null when the excerpt does not answer the question.',
  schema: objectOf({ citation: str(MAX_CITATION), answer: nullableString(MAX_ANSWER) }),
  user: fencedUser,
};

/** Answer first (null = not here), then the line it came from. */
export const ANSWER_CITE: PromptVariant = {
  name: 'answer-cite',
  system: READ_ONE_EXCERPT +
    '"answer": the short answer; null when the excerpt does not contain it. ' +
    '"citation": copy, word for word, the line of the excerpt that contains the answer.',
  schema: objectOf({ answer: nullableString(MAX_ANSWER), citation: str(MAX_CITATION) }),
  user: fencedUser,
};

/** answer-cite, then a one-sentence explanation: written last, so it cannot sway the answer or the quote. */
export const ANSWER_CITE_EXPLAIN: PromptVariant = {
  name: 'answer-cite-explain',
  system: ANSWER_CITE.system + ' "explanation": one short sentence on how the line answers the question.',
  schema: objectOf({ answer: nullableString(MAX_ANSWER), citation: str(MAX_CITATION), explanation: str(MAX_EXPLANATION) }),
  user: fencedUser,
};

/** answer -> citation with short caps: a small model rambles less when the answer must fit 60 characters. */
export const SHORT_ANSWER_CITE: PromptVariant = {
  name: 'short-answer-cite',
  system: READ_ONE_EXCERPT +
    '"answer": the answer in a few words; null when the excerpt does not contain it. ' +
    '"citation": copy, word for word, the one line of the excerpt that contains the answer.',
  schema: objectOf({ answer: nullableString(60), citation: str(120) }),
  user: fencedUser,
};

/** explanation -> answer -> citation: reason first, commit, then show where. */
export const EXPLAIN_ANSWER_CITE: PromptVariant = {
  name: 'explain-answer-cite',
  system: READ_ONE_EXCERPT +
    '"explanation": what the excerpt says about the question, in one sentence. ' +
    '"answer": the short answer; null when the excerpt does not contain it. ' +
    '"citation": copy, word for word, the one line of the excerpt that contains the answer.',
  schema: objectOf({ explanation: str(MAX_EXPLANATION), answer: nullableString(MAX_ANSWER), citation: str(MAX_CITATION) }),
  user: fencedUser,
};

/** explanation -> citation -> answer with one worked example of each outcome in the (shared) system prompt. */
export const EXAMPLES_EXPLAIN_CITE_ANSWER: PromptVariant = {
  name: 'examples-explain-cite-answer',
  system: EXPLAIN_CITE_ANSWER.system + '\n\nExample excerpt:\n```\nretries: 3\ntimeout: 45\n```\n' +
    'Question: How many retries?\n{"explanation":"The excerpt sets retries to 3.","citation":"retries: 3","answer":"3"}\n' +
    'Question: Who wrote it?\n{"explanation":"The excerpt names no author.","citation":"","answer":null}',
  schema: EXPLAIN_CITE_ANSWER.schema,
  user: fencedUser,
};

export const PROMPT_VARIANTS: readonly PromptVariant[] = [
  EXPLAIN_CITE_ANSWER, EXPLAIN_CITE_ANSWER_FENCED, CITE_ANSWER, ANSWER_CITE, EXAMPLES_EXPLAIN_CITE_ANSWER, SHORT_ANSWER_CITE,
  EXPLAIN_ANSWER_CITE, ANSWER_CITE_EXPLAIN,
];
/**
 * Chosen by `npm run eval:ask` (README, "Answer quality"): answer-first
 * variants verify four times as many quotes as explain-first ones at about
 * the same accuracy, and the trailing explanation costs nothing measured.
 */
export const DEFAULT_PROMPT = ANSWER_CITE_EXPLAIN;

export function jobMessages(variant: PromptVariant, file: string, startLine: number, endLine: number, chunk: string, question: string): ChatMessage[] {
  return [
    { role: 'system', content: variant.system },
    { role: 'user', content: variant.user(file, startLine, endLine, chunk, question) },
  ];
}

export interface ParsedAnswer {
  explanation: string;
  citation: string;
  /** null: the model says the chunk does not answer the question. */
  answer: string | null;
  /** With a null answer: the words the model wrote ("None", "N/A"), which can also be the value itself. */
  abstention?: string;
}

// Small models often write an abstention out in words instead of null.
const ABSTENTION = /^(null|none|n\/?a|unknown|not (found|mentioned|specified|stated|given|provided)( in (the |this )?(excerpt|file|text|document|chunk))?|(the )?(excerpt|file|text|document) does not (say|mention|contain|specify|state)\b.*|no (information|answer)\b.*)\.?$/i;

/** Parses a job's reply; throws with the reason when it is not the expected JSON. */
export function parseAnswer(text: string): ParsedAnswer {
  const json = extractJsonObject(text);
  if (json === undefined) throw new Error(`the reply is not a JSON object: ${preview(text)}`);
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (e) {
    throw new Error(`the reply is not valid JSON (${(e as Error).message}): ${preview(text)}`);
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new Error(`the reply is not a JSON object: ${preview(text)}`);
  const o = value as Record<string, unknown>;
  const field = (name: string): string => {
    const v = o[name];
    if (v === undefined || v === null) return '';
    if (typeof v !== 'string') throw new Error(`"${name}" is not a string in the reply: ${preview(text)}`);
    return v.trim();
  };
  if (!('answer' in o)) throw new Error(`the reply has no "answer": ${preview(text)}`);
  if (o.answer !== null && typeof o.answer !== 'string') {
    throw new Error(`"answer" is neither a string nor null in the reply: ${preview(text)}`);
  }
  const answer = typeof o.answer === 'string' ? o.answer.trim() : '';
  const parsed: ParsedAnswer = { explanation: field('explanation'), citation: field('citation'), answer: answer || null };
  if (answer && ABSTENTION.test(answer)) {
    parsed.answer = null;
    parsed.abstention = answer;
  }
  return parsed;
}

/**
 * The JSON object in a reply: the first balanced {...} that parses (servers
 * without constrained output wrap JSON in prose or fences, and prose may hold
 * braces of its own).
 */
export function extractJsonObject(text: string): string | undefined {
  let first: string | undefined;
  for (let start = text.indexOf('{'); start >= 0; start = text.indexOf('{', start + 1)) {
    const candidate = balancedObjectAt(text, start);
    if (candidate === undefined) break; // never closes: whatever follows is inside it
    first ??= candidate;
    try {
      JSON.parse(candidate);
      return candidate;
    } catch {
      // prose in braces: try the next one
    }
  }
  return first; // none parses: the caller reports the first one's error
}

function balancedObjectAt(text: string, start: number): string | undefined {
  let depth = 0;
  let inString = false;
  for (let i = start; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') {
      inString = true;
    } else if (c === '{') {
      depth++;
    } else if (c === '}' && --depth === 0) {
      return text.slice(start, i + 1);
    }
  }
  return undefined;
}

function preview(text: string, max = 120): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return JSON.stringify(flat.length > max ? `${flat.slice(0, max)}…` : flat);
}

/** One more local call per question: a summary over the found answers that cites files and lines. */
export function synthesisMessages(question: string, findings: Array<{ file: string; lines: string; answer: string; verified: boolean }>): ChatMessage[] {
  const list = findings
    .map((f) => `- ${f.file}:${f.lines}${f.verified ? '' : ' (quote not found in the file)'}: ${f.answer}`)
    .join('\n');
  return [
    {
      role: 'system',
      content: 'You combine findings from several files into one short answer to a question. ' +
        'Use only the findings. Cite each file you rely on as path:lines, as written in the findings.',
    },
    { role: 'user', content: `Question: ${question}\n\nFindings:\n${list}\n\nAnswer:` },
  ];
}
