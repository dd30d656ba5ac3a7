// Tokenizer: @huggingface/tokenizers over a model folder's tokenizer.json, or
// over the equivalent tokenizer.json rebuilt from a GGUF file's metadata; chat
// templates rendered with @huggingface/jinja as transformers renders them.
import fs from 'node:fs';
import path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { pythonJinja } from './jinja-python.js';
import { ggufArray, ggufBool, ggufNumber, ggufString, readGgufFile, type GgufFile } from './gguf-metadata.js';

export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

export interface ChatTemplateOptions {
  /** Append the assistant header so the model answers next (default true). */
  addGenerationPrompt?: boolean;
  tools?: unknown[];
  documents?: unknown[];
  /** Extra variables for the template (e.g. enable_thinking). */
  extra?: Record<string, unknown>;
}

export interface StreamDecoder {
  /** Takes the next token id; returns the text completed by it (possibly ''). */
  push(id: number): string;
  /** Returns whatever is still held back (an incomplete character at the end). */
  flush(): string;
}

type Json = Record<string, unknown>;

function tokenizerError(where: string, what: string): Error {
  return new Error(`[tokenizer] ${where}: ${what}`);
}

/** An AddedToken entry of tokenizer.json. */
interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

interface TokenizerParts {
  json: Json;
  config: Json;
  chatTemplate?: string;
  eosIds: Set<number>;
  bosToken?: string;
  eosToken?: string;
  unkToken?: string;
  padToken?: string;
  /** What may make ids differ from the model's own tokenizer (an unknown pre-tokenizer). */
  warnings?: string[];
}

// A trailing U+FFFD means the last token ended inside a UTF-8 sequence (or a
// byte-fallback run); hold it back until the character completes, but not
// forever: a model may really emit U+FFFD.
const REPLACEMENT = '\uFFFD';
const MAX_HELD_TOKENS = 8;

/** GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for U+0100 onwards. */
const BYTE_OF_CHAR: Map<string, number> = (() => {
  const map = new Map<string, number>();
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    map.set(String.fromCharCode(printable ? b : next++), b);
  }
  return map;
})();

/** Fill-in-the-middle tokens: prefix, suffix, middle. */
const FIM_SPELLINGS: Array<[string, string, string]> = [
  ['<fim_prefix>', '<fim_suffix>', '<fim_middle>'],
  ['<|fim_prefix|>', '<|fim_suffix|>', '<|fim_middle|>'],
];

export class Tokenizer {
  /**
   * Every token id that ends generation: eos_token_id (an int or a list) of
   * config.json and generation_config.json and tokenizer_config's eos_token;
   * for a GGUF its eos/eot/eom ids plus, as llama.cpp does, the usual
   * end-of-turn control tokens it has (<|im_end|>, <|eot_id|>, <end_of_turn>...).
   */
  readonly eosTokenIds: Set<number>;
  /** Number of token ids the tokenizer knows (highest id + 1). */
  readonly vocabSize: number;
  readonly chatTemplate?: string;
  /** Said once at load (the engine log): what may make ids differ from the model's own tokenizer. */
  readonly warnings: string[];
  readonly bosToken?: string;
  readonly eosToken?: string;
  private readonly unkToken?: string;
  private readonly padToken?: string;
  private readonly hf: HfTokenizer;
  private readonly specialIds: Set<number>;
  private compiled?: Template;
  private longestToken?: number;
  private addedTextSet?: Set<string>;
  /** Byte-level BPE (GPT-2 style): each character of a token spells one byte. */
  private readonly byteLevel: boolean;

  private constructor(
    private readonly source: string,
    parts: TokenizerParts,
  ) {
    try {
      this.hf = new HfTokenizer(parts.json, parts.config);
      keepByteOrderMarks(this.hf.decoder);
    } catch (e) {
      throw tokenizerError(source, `cannot build the tokenizer: ${(e as Error).message}`);
    }
    this.chatTemplate = parts.chatTemplate;
    this.bosToken = parts.bosToken;
    this.eosToken = parts.eosToken;
    this.unkToken = parts.unkToken;
    this.padToken = parts.padToken;
    this.eosTokenIds = parts.eosIds;
    this.warnings = parts.warnings ?? [];
    const model = this.hf.model as unknown as { vocab: Array<string | undefined> };
    this.vocabSize = model.vocab.length;
    this.specialIds = new Set([...this.hf.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id));
    this.byteLevel = JSON.stringify((parts.json as { decoder?: unknown }).decoder ?? null).includes('"ByteLevel"');
  }

  /** Loads the tokenizer of a model folder (tokenizer.json) or of a .gguf file. */
  static async fromModel(modelPath: string): Promise<Tokenizer> {
    let stat: fs.Stats;
    try {
      stat = await fs.promises.stat(modelPath);
    } catch {
      throw tokenizerError(modelPath, 'not found (give a .gguf file or a model folder)');
    }
    if (stat.isDirectory()) return new Tokenizer(modelPath, folderParts(modelPath));
    const file = await readGgufFile(modelPath);
    return new Tokenizer(file.path, ggufParts(file));
  }

  /**
   * Token ids of `text`; `addSpecialTokens` (default true) adds BOS/EOS as the
   * model's post-processor says. A special token's text inside a `literal`
   * span ([start, end) offsets) is encoded as the plain text it is, not as
   * the control token: a file or message that holds "<|im_end|>" must not end
   * its own turn. Text without such occurrences encodes exactly as without spans.
   */
  encode(text: string, opts: { addSpecialTokens?: boolean; literal?: ReadonlyArray<readonly [number, number]> } = {}): number[] {
    const encode = () => this.hf.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
    const internals = this.hfInternals;
    const splitter = internals.splitter_unnormalized;
    if (!opts.literal?.length || typeof splitter?.split !== 'function') return encode();
    const literal = opts.literal;
    internals.splitter_unnormalized = {
      split: (t: string) => {
        // Sections cover the text in order: plain text and added tokens. A special
        // token inside a literal span becomes plain text, joined to its neighbours.
        const merged: string[] = [];
        const plain: boolean[] = [];
        let at = 0;
        for (const section of splitter.split(t)) {
          const isPlain = !this.addedTexts.has(section) ||
            (this.isSpecialText(section) && literal.some(([a, b]) => at >= a && at + section.length <= b));
          if (isPlain && plain[plain.length - 1]) merged[merged.length - 1] += section;
          else {
            merged.push(section);
            plain.push(isPlain);
          }
          at += section.length;
        }
        // A plain piece that is exactly a token's text would be taken as that token
        // again (the library looks pieces up by value): a String object is not found.
        // eslint-disable-next-line no-new-wrappers
        return merged.map((m, i) => (plain[i] && this.addedTexts.has(m) ? (new String(m) as unknown as string) : m));
      },
    };
    try {
      return encode();
    } finally {
      internals.splitter_unnormalized = splitter;
    }
  }

  /**
   * Ids of the chat prompt of `messages`: only the template's own markers are
   * special; special-token text inside a message is plain text. Messages that
   * spell no special token (nearly all) encode exactly as the rendered text does.
   */
  encodeChat(messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): number[] {
    const rendered = this.applyChatTemplate([...messages], opts);
    // A template writes its own BOS; the plain transcript of a model without one gets it as a raw prompt does.
    const addSpecialTokens = this.chatTemplate === undefined;
    if (!messages.some((m) => typeof m.content === 'string' && this.spellsSpecialToken(m.content))) {
      return this.encode(rendered, { addSpecialTokens });
    }
    return this.encode(rendered, { addSpecialTokens, literal: this.messageSpans(rendered, messages, opts) });
  }

  /**
   * Where each message's text is in `rendered`. The template is rendered once
   * more with a placeholder for each text, so spans are exact however it orders
   * messages (Mistral's puts the system text in the last user turn). A template
   * that changes the text (trims it) falls back to finding each text in order.
   */
  private messageSpans(rendered: string, messages: readonly ChatMessage[], opts: ChatTemplateOptions): Array<[number, number]> {
    const placeholder = (i: number) => `\uE000${i}\uE001`;
    const held = this.applyChatTemplate(messages.map((m, i) => (typeof m.content === 'string' ? { ...m, content: placeholder(i) } : m)), opts);
    const spans: Array<[number, number]> = [];
    let rebuilt = '';
    let last = 0;
    for (const m of held.matchAll(/\uE000(\d+)\uE001/g)) {
      const text = messages[Number(m[1])]?.content;
      if (typeof text !== 'string') break;
      rebuilt += held.slice(last, m.index);
      spans.push([rebuilt.length, rebuilt.length + text.length]);
      rebuilt += text;
      last = m.index! + m[0].length;
    }
    rebuilt += held.slice(last);
    if (rebuilt === rendered) return spans;
    const found: Array<[number, number]> = [];
    let from = 0;
    for (const m of messages) {
      if (typeof m.content !== 'string' || m.content.trim() === '') continue;
      const text = rendered.includes(m.content) ? m.content : m.content.trim();
      const at = rendered.indexOf(text, from);
      if (at < 0) continue;
      found.push([at, at + text.length]);
      from = at + text.length;
    }
    return found;
  }

  /**
   * The library's split of a text around its added tokens (an internal of
   * @huggingface/tokenizers, pinned in package-lock; the tests fail should it move).
   */
  private get hfInternals(): { splitter_unnormalized?: { split(t: string): string[] } } {
    return this.hf as unknown as { splitter_unnormalized?: { split(t: string): string[] } };
  }

  /** Whether `text` holds a special token's text, as the tokenizer would split it out. */
  private spellsSpecialToken(text: string): boolean {
    const splitter = this.hfInternals.splitter_unnormalized;
    if (typeof splitter?.split !== 'function') return false;
    return splitter.split(text).some((section) => this.isSpecialText(section));
  }

  /** The texts of the added tokens, which the tokenizer splits out before its model sees the rest. */
  private get addedTexts(): Set<string> {
    this.addedTextSet ??= new Set([...this.hf.get_added_tokens_decoder().values()].map((t) => t.content));
    return this.addedTextSet;
  }

  /** Whether `text` is exactly a special (control) token's text. */
  private isSpecialText(text: string): boolean {
    const id = this.hf.token_to_id(text);
    return id !== undefined && this.specialIds.has(id) && this.hf.id_to_token(id) === text;
  }

  /**
   * Text of `ids`. Ids the tokenizer does not know (padding rows of a larger
   * embedding) decode to nothing. No clean-up of spaces is applied, so the
   * text is exactly what the tokens spell.
   */
  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    const known = ids.filter((id) => this.idToToken(id) !== undefined);
    if (known.length === 0) return '';
    return this.hf.decode(known, {
      skip_special_tokens: opts.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: false,
    });
  }

  /**
   * The most characters one token's text can have: the longest spelling in
   * the vocabulary (byte-level tokens spell one character per byte,
   * SentencePiece ones spell their text), added tokens included. A text of
   * n characters therefore needs at least n / longestTokenChars tokens.
   */
  get longestTokenChars(): number {
    if (this.longestToken === undefined) {
      let longest = 1;
      const model = this.hf.model as unknown as { vocab: Array<string | undefined> };
      for (const t of model.vocab) if (t && t.length > longest) longest = t.length;
      for (const [, t] of this.hf.get_added_tokens_decoder()) if (t.content.length > longest) longest = t.content.length;
      this.longestToken = longest;
    }
    return this.longestToken;
  }

  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  /**
   * The UTF-8 bytes token `id` stands for (OpenAI's logprobs `bytes`): a
   * token may hold part of a character, which its decoded text cannot show.
   */
  tokenBytes(id: number): number[] {
    const piece = this.idToToken(id);
    if (piece === undefined) return [];
    if (this.specialIds.has(id)) return [...Buffer.from(piece, 'utf8')];
    const fallback = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
    if (fallback) return [parseInt(fallback[1], 16)];
    if (this.byteLevel) {
      const bytes = [...piece].map((c) => BYTE_OF_CHAR.get(c));
      if (bytes.every((b) => b !== undefined)) return bytes as number[];
      return [...Buffer.from(this.decode([id]), 'utf8')];
    }
    // SentencePiece spells a space as ▁; decode([id]) would strip a leading one.
    return [...Buffer.from(piece.replace(/\u2581/g, ' '), 'utf8')];
  }

  /** The fill-in-the-middle token ids, when the vocabulary has a known set (StarCoder/SmolLM or Qwen spelling). */
  fimTokens(): { prefix: number; suffix: number; middle: number } | undefined {
    for (const [pre, suf, mid] of FIM_SPELLINGS) {
      const prefix = this.tokenToId(pre);
      const suffix = this.tokenToId(suf);
      const middle = this.tokenToId(mid);
      if (prefix !== undefined && suffix !== undefined && middle !== undefined) return { prefix, suffix, middle };
    }
    return undefined;
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /**
   * Incremental detokenizer for streaming: push ids one at a time and get only
   * the newly completed text. The concatenation of every push() and the final
   * flush() equals decode(all ids). Decodes a few already-emitted tokens as left
   * context, so SentencePiece's leading-space rules apply as in decode(all).
   */
  createStreamDecoder(opts: { skipSpecialTokens?: boolean } = {}): StreamDecoder {
    const skip = opts.skipSpecialTokens ?? false;
    let context: number[] = [];
    let contextText = '';
    let pending: number[] = [];
    let heldBack = false; // contextText lacks the context's last U+FFFD

    const emit = (force: boolean): string => {
      if (pending.length === 0 && !heldBack) return '';
      const all = context.concat(pending);
      const text = this.decode(all, { skipSpecialTokens: skip });
      const unfinished = !force && text.endsWith(REPLACEMENT);
      if (unfinished && pending.length < MAX_HELD_TOKENS) return '';
      // Held long enough: what came before is final, but the last U+FFFD may
      // still be an unfinished character, so it stays back.
      const final = unfinished ? text.slice(0, -1) : text;
      let common = 0;
      if (final.startsWith(contextText)) common = contextText.length;
      else while (common < final.length && common < contextText.length && final[common] === contextText[common]) common++;
      const out = final.slice(common);
      pending = [];
      // Next context: the shortest tail that decodes cleanly on its own, or,
      // inside a run of broken bytes, the last few tokens (their text's
      // beginning no longer changes as tokens are added).
      const tailOf = (k: number) => all.slice(-Math.min(k, all.length));
      let clean = false;
      for (let k = 1; k <= Math.min(4, all.length) && !clean; k++) {
        context = tailOf(k);
        contextText = this.decode(context, { skipSpecialTokens: skip });
        clean = !contextText.includes(REPLACEMENT);
      }
      if (!clean) {
        context = tailOf(MAX_HELD_TOKENS);
        contextText = this.decode(context, { skipSpecialTokens: skip });
      }
      heldBack = unfinished && contextText.endsWith(REPLACEMENT);
      if (heldBack) contextText = contextText.slice(0, -1);
      return out;
    };

    return {
      push: (id: number) => {
        if (skip && this.specialIds.has(id)) return '';
        pending.push(id);
        return emit(false);
      },
      flush: () => emit(true),
    };
  }

  /**
   * Renders chat messages to a prompt string with the model's chat template
   * (tokenizer_config.json / chat_template.jinja, or the GGUF's
   * tokenizer.chat_template), passing bos_token, eos_token, unk_token and
   * pad_token as transformers does. A model without a template gets a plain
   * transcript instead: "System: ...\nUser: ...\nAssistant: ...\n" and a final
   * "Assistant:" when addGenerationPrompt is set.
   */
  applyChatTemplate(messages: ChatMessage[], opts: ChatTemplateOptions = {}): string {
    const addGenerationPrompt = opts.addGenerationPrompt ?? true;
    if (!this.chatTemplate) {
      const label = (role: string) => role.charAt(0).toUpperCase() + role.slice(1);
      const lines = messages.map((m) => `${label(m.role)}: ${m.content}\n`);
      return lines.join('') + (addGenerationPrompt ? 'Assistant:' : '');
    }
    pythonJinja(); // str.strip(chars) and == as Python's Jinja has them
    try {
      this.compiled ??= new Template(this.chatTemplate);
    } catch (e) {
      throw tokenizerError(this.source, `cannot parse the chat template: ${(e as Error).message}`);
    }
    const vars: Record<string, unknown> = {
      messages,
      add_generation_prompt: addGenerationPrompt,
      // transformers passes None for these when absent; null is jinja's none here too.
      tools: opts.tools ?? null,
      documents: opts.documents ?? null,
      ...opts.extra,
    };
    for (const [name, value] of Object.entries({
      bos_token: this.bosToken,
      eos_token: this.eosToken,
      unk_token: this.unkToken,
      pad_token: this.padToken,
    })) {
      if (value !== undefined) vars[name] = value;
    }
    try {
      return this.compiled.render(vars);
    } catch (e) {
      throw tokenizerError(this.source, `chat template failed: ${(e as Error).message}`);
    }
  }
}

// ---------------------------------------------------------------- folders

/**
 * The library's byte-fallback decoder reads each run of byte tokens with a
 * fresh TextDecoder, which drops a U+FEFF at the start of the run; the
 * model's own tokenizer keeps it.
 */
function keepByteOrderMarks(decoder: unknown): void {
  const d = decoder as { text_decoder?: unknown; decoders?: unknown[] } | null;
  if (!d) return;
  if (d.text_decoder instanceof TextDecoder && !d.text_decoder.ignoreBOM) d.text_decoder = new TextDecoder('utf-8', { ignoreBOM: true });
  for (const inner of d.decoders ?? []) keepByteOrderMarks(inner);
}

function readJsonFile(file: string, required: boolean): Json | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' && !required) return undefined;
    throw tokenizerError(file, (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : String(e));
  }
  try {
    const value = JSON.parse(text) as unknown;
    if (!value || typeof value !== 'object' || Array.isArray(value)) throw new Error('expected a JSON object');
    return value as Json;
  } catch (e) {
    throw tokenizerError(file, `invalid JSON (${(e as Error).message})`);
  }
}

/** tokenizer_config.json spells special tokens as strings or as AddedToken objects. */
function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return undefined;
}

function idList(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  return [];
}

function folderParts(dir: string): TokenizerParts {
  const tokenizerFile = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(tokenizerFile)) {
    throw tokenizerError(dir, 'no tokenizer.json (a folder model needs a fast tokenizer; tokenizer.model alone is not supported)');
  }
  const json = readJsonFile(tokenizerFile, true)!;
  const config = readJsonFile(path.join(dir, 'tokenizer_config.json'), false) ?? {};
  const modelConfig = readJsonFile(path.join(dir, 'config.json'), false) ?? {};
  const generation = readJsonFile(path.join(dir, 'generation_config.json'), false) ?? {};

  const bosToken = tokenString(config.bos_token);
  const eosToken = tokenString(config.eos_token);
  const parts: TokenizerParts = {
    json,
    config,
    chatTemplate: folderChatTemplate(dir, config),
    eosIds: new Set(),
    bosToken,
    eosToken,
    unkToken: tokenString(config.unk_token),
    padToken: tokenString(config.pad_token),
  };

  // transformers rebuilds the post-processor when tokenizer_config.json states
  // add_bos_token / add_eos_token explicitly.
  if ('add_bos_token' in config || 'add_eos_token' in config) {
    const addBos = config.add_bos_token === true && bosToken !== undefined;
    const addEos = config.add_eos_token === true && eosToken !== undefined;
    json.post_processor = templateProcessing(addBos ? bosToken : undefined, addEos ? eosToken : undefined, json);
  }

  // transformers makes every named special token an added special token (so the
  // text "</s>" is that one token) even when tokenizer.json lists it as plain vocabulary.
  const added = (json.added_tokens ??= []) as AddedTokenJson[];
  const vocab = ((json.model as Json | undefined)?.vocab ?? {}) as Record<string, number>;
  const extra = [config.additional_special_tokens, config.extra_special_tokens].flatMap((v) =>
    Array.isArray(v) ? v : v && typeof v === 'object' ? Object.values(v) : [],
  );
  for (const content of [bosToken, eosToken, parts.unkToken, parts.padToken, ...extra.map(tokenString)]) {
    if (content === undefined || added.some((t) => t.content === content)) continue;
    const id = Array.isArray(vocab) ? undefined : vocab[content];
    if (typeof id === 'number') added.push(addedToken(id, content, true));
  }

  const ids = [
    ...idList(modelConfig.eos_token_id),
    ...idList((modelConfig.text_config as Json | undefined)?.eos_token_id),
    ...idList(generation.eos_token_id),
  ];
  if (eosToken !== undefined) {
    const id = added.find((t) => t.content === eosToken)?.id;
    if (id !== undefined) ids.push(id);
  }
  parts.eosIds = new Set(ids);
  return parts;
}

function folderChatTemplate(dir: string, config: Json): string | undefined {
  // transformers >= 4.43 saves the template beside the config; it wins over the config entry.
  const jinjaFile = path.join(dir, 'chat_template.jinja');
  if (fs.existsSync(jinjaFile)) return fs.readFileSync(jinjaFile, 'utf8');
  const jsonFile = readJsonFile(path.join(dir, 'chat_template.json'), false);
  const fromJson = jsonFile?.chat_template;
  return pickTemplate(fromJson ?? config.chat_template);
}

/** A template is a string, or a list of {name, template} where "default" is the one to use. */
function pickTemplate(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    const entries = v as Array<{ name?: string; template?: string }>;
    return (entries.find((e) => e.name === 'default') ?? entries[0])?.template;
  }
  return undefined;
}

function templateProcessing(bos: string | undefined, eos: string | undefined, json: Json): Json {
  const idOf = (token: string): number | undefined => {
    const added = ((json.added_tokens ?? []) as AddedTokenJson[]).find((t) => t.content === token);
    if (added) return added.id;
    const vocab = (json.model as Json | undefined)?.vocab;
    return vocab && !Array.isArray(vocab) ? (vocab as Record<string, number>)[token] : undefined;
  };
  const piece = (id: string, typeId: number) => ({ SpecialToken: { id, type_id: typeId } });
  const seq = (id: 'A' | 'B', typeId: number) => ({ Sequence: { id, type_id: typeId } });
  const single = [...(bos ? [piece(bos, 0)] : []), seq('A', 0), ...(eos ? [piece(eos, 0)] : [])];
  const pair = [...single, ...(bos ? [piece(bos, 1)] : []), seq('B', 1), ...(eos ? [piece(eos, 1)] : [])];
  const special_tokens: Json = {};
  for (const t of [bos, eos]) {
    if (t !== undefined) special_tokens[t] = { id: t, ids: [idOf(t) ?? 0], tokens: [t] };
  }
  return { type: 'TemplateProcessing', single, pair, special_tokens };
}

// ---------------------------------------------------------------- GGUF
//
// The tokenizer.json a GGUF implies, built as transformers builds it from the
// same metadata (AutoTokenizer.from_pretrained(dir, gguf_file=...)), with one
// deliberate difference: for the pre-tokenizer names transformers has no rule
// for but llama.cpp does (smollm, starcoder...), digits are isolated first as
// llama.cpp and those models' own tokenizer.json do; transformers would use the
// plain GPT-2 split. SentencePiece vocabularies follow transformers (a leading
// ▁ only at the very start of the text), where llama.cpp also prefixes one after
// every special token (the legacy Llama 2 / Mistral v0.1 behaviour).

// llama.cpp's token types.
const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

// Pre-tokenizer split patterns, by the `tokenizer.ggml.pre` names llama.cpp writes.
const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// Mistral's tekken (Nemo, Small 3): case changes and every digit split words.
const TEKKEN_SPLIT =
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+" +
  "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*" +
  "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN35_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const GPT4O_SPLIT =
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?" +
  "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?" +
  "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const SPLIT_BY_PRE: Record<string, string> = {
  llama3: LLAMA3_SPLIT,
  'llama-v3': LLAMA3_SPLIT,
  'llama-bpe': LLAMA3_SPLIT,
  falcon3: LLAMA3_SPLIT,
  'smaug-bpe': LLAMA3_SPLIT,
  dbrx: LLAMA3_SPLIT,
  qwen2: QWEN2_SPLIT,
  'deepseek-r1-qwen': QWEN2_SPLIT,
  megrez: QWEN2_SPLIT,
  'gpt-4o': GPT4O_SPLIT,
  llama4: GPT4O_SPLIT,
  tekken: TEKKEN_SPLIT,
  'falcon-h1': LLAMA3_SPLIT,
  'midm-2.0': LLAMA3_SPLIT,
  lfm2: LLAMA3_SPLIT,
  kormo: QWEN2_SPLIT,
  f2llmv2: QWEN2_SPLIT,
  qwen35: QWEN35_SPLIT,
  kanana2: GPT4O_SPLIT,
  talkie: GPT4O_SPLIT,
  'minimax-m2': GPT4O_SPLIT,
};
// Pre-tokenizer names whose split is GPT-2's own: no warning for these.
const GPT2_SPLIT_PRE = new Set(['default', 'gpt2', 'gpt-2', 'mpt', 'olmo']);
// llama.cpp isolates every digit (\p{N}) first for these, then splits as GPT-2
// does; the models' own tokenizer.json has the same Digits + ByteLevel pair.
const DIGIT_SPLIT_PRE = new Set(['smollm', 'starcoder', 'refact', 'codeshell', 'command-r', 'exaone', 'minerva']);
// Pre-tokenizers whose merges were learned without merging across whole words.
const IGNORE_MERGES_PRE = new Set(['llama3', 'llama-v3', 'llama-bpe']);

// Turn-ending tokens llama.cpp also treats as end of generation when the
// vocabulary has them as control tokens.
const EOG_TOKEN_NAMES = [
  '<|eot_id|>',
  '<|im_end|>',
  '<|end|>',
  '<end_of_turn>',
  '<|endoftext|>',
  '<|eom_id|>',
  '<EOT>',
  '<|end_of_text|>',
];

let byteEncoder: string[] | undefined;
/** GPT-2's byte-to-printable-character table: byte-level BPE vocabularies are spelled in it. */
function bytesToUnicode(): string[] {
  if (byteEncoder) return byteEncoder;
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const table: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) table.push(String.fromCodePoint(printable(b) ? b : 256 + extra++));
  byteEncoder = table;
  return table;
}

function splitMerge(m: string): [string, string] {
  const i = m.indexOf(' ');
  return i < 0 ? [m, ''] : [m.slice(0, i), m.slice(i + 1)];
}

/**
 * BPE merges implied by a SentencePiece vocabulary: every split of a token into
 * two vocabulary pieces, best score first (then longer left, longer right).
 */
function mergesFromScores(scores: Map<string, number>, vocab: Map<string, number>): Array<[string, string]> {
  const merges: Array<{ l: string; r: string; score: number; ll: number; rl: number }> = [];
  for (const [token, score] of scores) {
    const chars = Array.from(token);
    const local: typeof merges = [];
    for (let i = 1; i < chars.length; i++) {
      const l = chars.slice(0, i).join('');
      const r = chars.slice(i).join('');
      if (vocab.has(l) && vocab.has(r)) local.push({ l, r, score, ll: i, rl: chars.length - i });
    }
    local.sort((a, b) => vocab.get(a.l)! - vocab.get(b.l)! || vocab.get(a.r)! - vocab.get(b.r)!);
    merges.push(...local);
  }
  // Stable sort, descending on (score, left length, right length).
  merges.sort((a, b) => b.score - a.score || b.ll - a.ll || b.rl - a.rl);
  return merges.map((m) => [m.l, m.r]);
}

function ggufParts(file: GgufFile): TokenizerParts {
  const where = file.path;
  const kind = ggufString(file, 'tokenizer.ggml.model');
  const tokens = ggufArray(file, 'tokenizer.ggml.tokens')?.map(String);
  if (!kind || !tokens) throw tokenizerError(where, 'no tokenizer in the GGUF metadata (tokenizer.ggml.model / tokens)');
  const types = ggufArray(file, 'tokenizer.ggml.token_type')?.map(Number) ?? [];
  const arch = ggufString(file, 'general.architecture') ?? '';
  const idKey = (k: string) => {
    const id = ggufNumber(file, `tokenizer.ggml.${k}`);
    return id !== undefined && id >= 0 && id < tokens.length ? id : undefined;
  };
  const bosId = idKey('bos_token_id');
  const eosId = idKey('eos_token_id');
  const unkId = idKey('unknown_token_id');
  const padId = idKey('padding_token_id');
  const named = (id: number | undefined) => (id === undefined ? undefined : tokens[id]);

  let json: Json;
  let addBos: boolean;
  const warnings: string[] = [];
  if (kind === 'gpt2') {
    json = byteLevelJson(file, tokens, types);
    const pre = ggufString(file, 'tokenizer.ggml.pre') ?? 'default';
    if (!SPLIT_BY_PRE[pre] && !DIGIT_SPLIT_PRE.has(pre) && !GPT2_SPLIT_PRE.has(pre)) {
      warnings.push(`${where}: the pre-tokenizer '${pre}' (tokenizer.ggml.pre) has no split rule here; ` +
        "GPT-2's is used, so some token ids may differ from the model's own tokenizer");
    }
    addBos = ggufBool(file, 'tokenizer.ggml.add_bos_token') ?? false;
  } else if (kind === 'llama') {
    json = sentencePieceJson(file, arch, tokens, types, named(unkId));
    // llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise.
    addBos = ggufBool(file, 'tokenizer.ggml.add_bos_token') ?? true;
  } else {
    throw tokenizerError(where, `tokenizer model '${kind}' is not supported (gpt2, llama)`);
  }

  // Named special tokens are special added tokens, as transformers makes them.
  const added = json.added_tokens as AddedTokenJson[];
  const addedIds = new Set(added.map((t) => t.id));
  for (const id of [bosId, eosId, unkId, padId]) {
    if (id !== undefined && !addedIds.has(id)) {
      added.push(addedToken(id, tokens[id], true));
      addedIds.add(id);
    }
  }
  added.sort((a, b) => a.id - b.id);

  const addEos = ggufBool(file, 'tokenizer.ggml.add_eos_token') ?? false;
  json.post_processor = templateProcessing(
    addBos ? named(bosId) : undefined,
    addEos ? named(eosId) : undefined,
    json,
  );

  const eosIds = new Set<number>();
  for (const k of ['eos_token_id', 'eot_token_id', 'eom_token_id']) {
    const id = idKey(k);
    if (id !== undefined) eosIds.add(id);
  }
  for (const name of EOG_TOKEN_NAMES) {
    const id = tokens.indexOf(name);
    if (id >= 0 && (types[id] === TOKEN_TYPE.control || types[id] === TOKEN_TYPE.userDefined)) eosIds.add(id);
  }

  return {
    json,
    config: {},
    chatTemplate: ggufString(file, 'tokenizer.chat_template'),
    eosIds,
    bosToken: named(bosId),
    eosToken: named(eosId),
    unkToken: named(unkId),
    padToken: named(padId),
    warnings,
  };
}

function addedToken(id: number, content: string, special: boolean): AddedTokenJson {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special };
}

/** tokenizer.json of a byte-level BPE vocabulary (tokenizer.ggml.model = gpt2). */
function byteLevelJson(file: GgufFile, tokens: string[], types: number[]): Json {
  const encoder = bytesToUnicode();
  const alphabet = new Set(encoder);
  const inAlphabet = (t: string) => Array.from(t).every((c) => alphabet.has(c));
  const utf8 = new TextEncoder();
  // Tokens outside the byte alphabet (raw special strings) are respelled so the
  // vocabulary stays byte-level; control tokens keep their raw text as added tokens.
  const vocab: Record<string, number> = {};
  tokens.forEach((t, id) => {
    const spelled = inAlphabet(t) ? t : Array.from(utf8.encode(t), (b) => encoder[b]).join('');
    vocab[spelled] = id;
  });
  const added: AddedTokenJson[] = [];
  tokens.forEach((t, id) => {
    // By id, in their raw text: DeepSeek's <｜User｜> is outside the byte alphabet, and llama.cpp matches it whole.
    if (types[id] === TOKEN_TYPE.control) added.push(addedToken(id, t, true));
    else if (types[id] === TOKEN_TYPE.userDefined) added.push(addedToken(id, t, false));
  });
  const merges = (ggufArray(file, 'tokenizer.ggml.merges') ?? []).map((m) => splitMerge(String(m)));
  const pre = ggufString(file, 'tokenizer.ggml.pre') ?? 'default';

  const byteLevel = (useRegex: boolean) => ({ type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: useRegex });
  const split = (regex: string) => ({ type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false });
  let preTokenizer: Json = byteLevel(true);
  if (SPLIT_BY_PRE[pre]) {
    preTokenizer = { type: 'Sequence', pretokenizers: [split(SPLIT_BY_PRE[pre]), byteLevel(false)] };
  } else if (DIGIT_SPLIT_PRE.has(pre)) {
    preTokenizer = { type: 'Sequence', pretokenizers: [split('\\p{N}'), byteLevel(true)] };
  }

  return {
    version: '1.0',
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      vocab,
      merges,
      unk_token: null,
      byte_fallback: false,
      ignore_merges: IGNORE_MERGES_PRE.has(pre),
    },
  };
}

/**
 * tokenizer.json of a SentencePiece vocabulary (tokenizer.ggml.model = llama),
 * shaped as transformers shapes it for each architecture: Llama's Metaspace,
 * Gemma's space-to-▁ normalizer, Phi-3's prepend-▁ normalizer.
 */
function sentencePieceJson(file: GgufFile, arch: string, rawTokens: string[], types: number[], unk: string | undefined): Json {
  const gemma = arch.startsWith('gemma');
  const phi3 = arch === 'phi3';
  // Gemma files store runs of spaces as real spaces where the vocabulary means ▁.
  const tokens = gemma ? rawTokens.map((t) => (t.length > 0 && t.trim() === '' && t.includes(' ') ? '▁'.repeat(t.length) : t)) : rawTokens;
  const vocabMap = new Map<string, number>();
  tokens.forEach((t, id) => vocabMap.set(t, id));

  let merges: Array<[string, string]>;
  const fileMerges = ggufArray(file, 'tokenizer.ggml.merges');
  if (fileMerges && fileMerges.length > 0) {
    merges = fileMerges.map((m) => splitMerge(String(m)));
  } else {
    // Gemma's scores do not follow its merge order; its token order does.
    const scores = ggufArray(file, 'tokenizer.ggml.scores')?.map(Number);
    // A duplicate token keeps its first position and its last score, as a Python dict would.
    const byScore = new Map<string, number>();
    tokens.forEach((t, id) => byScore.set(t, gemma || !scores ? -id : scores[id]));
    merges = mergesFromScores(byScore, vocabMap);
  }

  const added: AddedTokenJson[] = [];
  tokens.forEach((t, id) => {
    if (types[id] === TOKEN_TYPE.control) added.push(addedToken(id, t, true));
    else if (types[id] === TOKEN_TYPE.userDefined && vocabMap.get(t) === id) added.push(addedToken(id, t, false));
  });

  const addSpacePrefix = ggufBool(file, 'tokenizer.ggml.add_space_prefix') ?? true;
  const replace = (from: string, to: string) => ({ type: 'Replace', pattern: { String: from }, content: to });
  let normalizer: Json | null = null;
  let preTokenizer: Json | null = null;
  if (gemma) {
    normalizer = replace(' ', '▁');
  } else if (phi3) {
    normalizer = { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, replace(' ', '▁')] };
  } else {
    preTokenizer = { type: 'Metaspace', replacement: '▁', prepend_scheme: addSpacePrefix ? 'first' : 'never', split: false };
  }
  const decoders: Json[] = [replace('▁', ' '), { type: 'ByteFallback' }, { type: 'Fuse' }];
  if (!gemma && addSpacePrefix) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });

  return {
    version: '1.0',
    added_tokens: added,
    normalizer,
    pre_tokenizer: preTokenizer,
    post_processor: null,
    decoder: { type: 'Sequence', decoders },
    model: {
      type: 'BPE',
      vocab: Object.fromEntries(vocabMap),
      merges,
      unk_token: unk ?? '<unk>',
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
    },
  };
}
