// JSON-schema constrained decoding: xgrammar (@mlc-ai/web-xgrammar, WASM)
// compiles a schema to a grammar over the model's vocabulary and gives, per
// step, the bitmask of tokens that keep the output a valid prefix of a JSON
// value matching the schema. The engine applies the mask to a row's logits
// before sampling (native.ts: `decode({masks})`, prefill `firstTokenMask`).
// Once the JSON is complete only the model's end-of-sequence ids are allowed,
// so a constrained row ends with finish reason 'stop'.
//
// The output format is fixed, one line, `{"a": 1, "b": [true, false]}`: no
// free whitespace, which small models otherwise emit without end, and only the
// properties the schema lists, in its order.
import Module from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import Ajv, { type ValidateFunction } from 'ajv';
import Ajv2020 from 'ajv/dist/2020';
import type { Tokenizer } from './tokenizer.js';

/** One row's grammar state. Not thread-safe; one per sequence. */
export interface JsonMatcher {
  /**
   * Allowed next tokens: ceil(modelVocabSize / 32) words, bit (t & 31) of word
   * (t >> 5) set = token t allowed. Shared until the next accept(): do not modify.
   */
  bitmask(): Int32Array;
  /** Advances by `token`; false (and no change) if the token was not allowed. */
  accept(token: number): boolean;
  /** True once an end-of-sequence token was accepted after complete JSON. */
  isTerminated(): boolean;
  /** True once the JSON is complete: only end-of-sequence ids may follow. */
  isComplete(): boolean;
  /** Frees the WASM state; the matcher is unusable afterwards. Idempotent. */
  dispose(): void;
}

export type JsonValidation = { ok: true; value: unknown } | { ok: false; error: string };

// ---------------------------------------------------------------------------
// Loading xgrammar. Its lib/index.js is a UMD bundle inside a package marked
// "type": "module", so Node's ESM loader runs it without `exports` and a plain
// import gets nothing; we compile the file's source as CommonJS instead. One
// textual patch hands the Emscripten factory our own module object, which (a)
// routes its stderr (the "[FATAL] ..." text of a failed schema conversion) to
// us, and (b) becomes the embind binding, for synchronous calls the public
// wrappers only offer as async (matcher creation, bitmask).

/* eslint-disable @typescript-eslint/no-explicit-any */
interface EmbindHandle {
  delete(): void;
  clone(): any;
}

interface XgrammarLib {
  TokenizerInfo: { createTokenizerInfo(vocab: string[], type: string, prependSpace: boolean, vocabSize: number, stop: number[]): Promise<{ handle: any }> };
  GrammarCompiler: { createGrammarCompiler(info: { handle: any }, cacheEnabled: boolean): Promise<{ handle: any }> };
  Testings: { _jsonSchemaToEBNF(schema: string, anyWhitespace?: boolean, indent?: number): Promise<string> };
}

interface Xgrammar {
  lib: XgrammarLib;
  /** The Emscripten module: embind classes and helpers. */
  binding: any;
}

const XGRAMMAR_FILE = '@mlc-ai/web-xgrammar/lib/index.js';
const PATCH_FROM = 'binding = await Module();';
const PATCH_TO = 'binding = await Module(exports.__moduleArg);';

/** stderr lines of the WASM module while a call runs under captureStderr(). */
let stderrSink: string[] | undefined;
let xgrammarPromise: Promise<Xgrammar> | undefined;

function loadXgrammar(): Promise<Xgrammar> {
  if (xgrammarPromise) return xgrammarPromise;
  const loading = (async () => {
    let filename: string;
    try {
      filename = require.resolve(XGRAMMAR_FILE);
    } catch {
      throw new Error(`[json-schema] cannot find ${XGRAMMAR_FILE}: is @mlc-ai/web-xgrammar installed?`);
    }
    const source = fs.readFileSync(filename, 'utf8');
    if (!source.includes(PATCH_FROM)) {
      throw new Error(`[json-schema] unexpected build of @mlc-ai/web-xgrammar at ${filename} (expected 0.1.27)`);
    }
    const mod = new Module(filename, module) as Module & { _compile(src: string, file: string): void };
    mod.filename = filename;
    mod.paths = (Module as unknown as { _nodeModulePaths(dir: string): string[] })._nodeModulePaths(path.dirname(filename));
    const moduleArg: Record<string, unknown> = {
      print: (s: string) => console.error(s), // stdout may carry the CLI's output
      printErr: (s: string) => (stderrSink ? stderrSink.push(s) : console.error(s)),
    };
    mod.exports.__moduleArg = moduleArg;
    mod._compile(source.replace(PATCH_FROM, PATCH_TO), filename);
    const lib = mod.exports as XgrammarLib;
    // Any call instantiates the WASM (once); the module object then is the binding.
    await lib.Testings._jsonSchemaToEBNF('{"type": "null"}', false, -1);
    const binding = moduleArg as any;
    for (const name of ['GrammarMatcher', 'vecIntToView', 'vecIntFromJSArray']) {
      if (binding[name] === undefined) throw new Error(`[json-schema] @mlc-ai/web-xgrammar lacks ${name} (expected 0.1.27)`);
    }
    return { lib, binding };
  })();
  xgrammarPromise = loading;
  loading.catch(() => {
    if (xgrammarPromise === loading) xgrammarPromise = undefined;
  });
  return loading;
}

/** Runs `fn` (synchronous WASM work) collecting what the module prints to stderr. */
function captureStderr<T>(fn: () => T): { value?: T; error?: unknown; stderr: string[] } {
  const lines: string[] = [];
  const outer = stderrSink;
  stderrSink = lines;
  try {
    return { value: fn(), stderr: lines };
  } catch (error) {
    return { error, stderr: lines };
  } finally {
    stderrSink = outer;
  }
}

// ---------------------------------------------------------------------------
// Per-tokenizer state: one TokenizerInfo and GrammarCompiler per
// (tokenizer, model vocabulary size), and a small LRU of compiled grammars.

interface TokenizerState {
  xg: Xgrammar;
  compiler: any;
  /** Stop tokens: the tokenizer's end-of-sequence ids the model can produce; and as a mask. */
  eosIds: number[];
  eosMask: Int32Array;
  tokenizerVocab: number;
  modelVocabSize: number;
  words: number;
  /** Schema JSON -> CompiledGrammar handle (owned by the cache). */
  grammars: Map<string, EmbindHandle>;
  /** Each token's bytes, and the string characters it adds inside a JSON string (see StringLengths). */
  lengths: TokenLengths;
}

const GRAMMAR_CACHE_SIZE = 32;
let states = new WeakMap<Tokenizer, Map<number, Promise<TokenizerState>>>();
/** Schema JSON -> why xgrammar could not compile it (not retried: each failure costs an instance). */
const failedSchemas = new Map<string, string>();

/**
 * A schema xgrammar cannot convert ends in an Emscripten abort(), which does not
 * unwind the WASM stack: after a couple dozen the instance breaks ("null
 * function or function signature mismatch"). So after one, new work goes to a
 * fresh instance; constraints and matchers already made keep the old one.
 */
function retireXgrammar(): void {
  xgrammarPromise = undefined;
  states = new WeakMap();
}

/**
 * How xgrammar must decode the vocabulary's token strings, told from how the
 * tokenizer spells "a b\n": GPT-2 byte-level (Ġ, Ċ), SentencePiece (▁, <0x0A>),
 * or plain text.
 */
export function detectVocabType(tokenizer: Tokenizer): { vocabType: 'byte_level' | 'byte_fallback' | 'raw'; prependSpace: boolean } {
  const pieces = tokenizer.encode('a b\n', { addSpecialTokens: false }).map((id) => tokenizer.idToToken(id) ?? '');
  const joined = pieces.join('');
  if (joined.includes('\u2581') || /<0x[0-9A-Fa-f]{2}>/.test(joined)) {
    return { vocabType: 'byte_fallback', prependSpace: (pieces[0] ?? '').startsWith('\u2581') };
  }
  if (joined.includes('\u0120') || joined.includes('\u010A')) return { vocabType: 'byte_level', prependSpace: false };
  return { vocabType: 'raw', prependSpace: false };
}

function tokenizerState(tokenizer: Tokenizer, modelVocabSize: number): Promise<TokenizerState> {
  let byVocab = states.get(tokenizer);
  if (!byVocab) states.set(tokenizer, (byVocab = new Map()));
  let state = byVocab.get(modelVocabSize);
  if (!state) {
    state = (async () => {
      const xg = await loadXgrammar();
      const tokenizerVocab = Math.min(tokenizer.vocabSize, modelVocabSize);
      const eosIds = [...tokenizer.eosTokenIds].filter((id) => id >= 0 && id < tokenizerVocab).sort((a, b) => a - b);
      if (eosIds.length === 0) throw new Error('[json-schema] the tokenizer has no end-of-sequence token the model can produce');
      // Special tokens (<|im_start|>, ...) spell text in a byte-level vocabulary;
      // empty strings make xgrammar treat them as special, never allowed.
      const vocab: string[] = new Array(tokenizerVocab);
      for (let id = 0; id < tokenizerVocab; id++) vocab[id] = tokenizer.isSpecial(id) || tokenizer.eosTokenIds.has(id) ? '' : (tokenizer.idToToken(id) ?? '');
      const { vocabType, prependSpace } = detectVocabType(tokenizer);
      const info = await xg.lib.TokenizerInfo.createTokenizerInfo(vocab, vocabType, prependSpace, modelVocabSize, eosIds);
      // Our LRU caches; xgrammar's own cache would keep a half-built entry after a failed compile.
      const compiler = await xg.lib.GrammarCompiler.createGrammarCompiler(info, false);
      const words = Math.ceil(modelVocabSize / 32);
      const eosMask = new Int32Array(words);
      for (const id of eosIds) eosMask[id >> 5] |= 1 << (id & 31);
      return { xg, compiler: compiler.handle, eosIds, eosMask, tokenizerVocab, modelVocabSize, words, grammars: new Map(), lengths: new TokenLengths(tokenizer, tokenizerVocab, words) };
    })();
    state.catch(() => byVocab!.delete(modelVocabSize));
    byVocab.set(modelVocabSize, state);
  }
  return state;
}

function compileError(why: string): Error {
  return new Error(`[json-schema] cannot compile the schema to a grammar: ${why}`);
}

function compileGrammar(state: TokenizerState, schemaJson: string): EmbindHandle {
  const cached = state.grammars.get(schemaJson);
  if (cached) {
    state.grammars.delete(schemaJson);
    state.grammars.set(schemaJson, cached);
    return cached;
  }
  // CompileJSONSchema(schema, anyWhitespace, indent (undefined: one line), separators (default ", " ": "), strictMode, maxWhitespace)
  const r = captureStderr(() => state.compiler.CompileJSONSchema(schemaJson, false, undefined, undefined, true, undefined) as EmbindHandle);
  if (r.error !== undefined || !r.value) {
    const fatal = r.stderr.find((l) => l.includes('[FATAL]')) ?? r.stderr.find((l) => l.trim() && l.trim() !== 'Aborted()');
    const why = fatal
      ? fatal.replace(/^\[FATAL\]\s*\S*?:\d+:\s*/, '').replace(/^Check failed: \(.*?\) is false:\s*/, '').trim()
      : String((r.error as Error)?.message ?? r.error);
    failedSchemas.set(schemaJson, why);
    while (failedSchemas.size > GRAMMAR_CACHE_SIZE) failedSchemas.delete(failedSchemas.keys().next().value as string);
    retireXgrammar();
    throw compileError(why);
  }
  state.grammars.set(schemaJson, r.value);
  while (state.grammars.size > GRAMMAR_CACHE_SIZE) {
    const [oldest, handle] = state.grammars.entries().next().value as [string, EmbindHandle];
    state.grammars.delete(oldest);
    handle.delete(); // constraints and matchers made from it hold their own references
  }
  return r.value;
}

// Handles whose JS owner was dropped without dispose().
const finalizer = new FinalizationRegistry<{ handle: EmbindHandle | undefined }>((box) => {
  try {
    box.handle?.delete();
  } catch {
    // already deleted
  }
});

export class JsonSchemaConstraint {
  private readonly box: { handle: EmbindHandle | undefined };

  private constructor(
    private readonly state: TokenizerState,
    compiled: EmbindHandle,
    /** The schema, as JSON. */
    readonly schemaJson: string,
    /** maxLength of plain strings by where they sit (pathKey), enforced by the matcher rather than the grammar. */
    private readonly limits?: Map<string, number>,
  ) {
    this.box = { handle: compiled.clone() as EmbindHandle };
    finalizer.register(this, this.box);
  }

  /**
   * Compiles `schema` for `tokenizer`'s vocabulary, padded to the model's
   * `modelVocabSize` logits (ids past the tokenizer's vocabulary are never
   * allowed). Cached per tokenizer by schema text. Throws
   * `Error('[json-schema] ...')` for a schema that is not valid JSON Schema or
   * that xgrammar cannot turn into a grammar.
   */
  static async compile(tokenizer: Tokenizer, schema: Record<string, unknown>, modelVocabSize: number,
    options: { lengthsInGrammar?: boolean } = {}): Promise<JsonSchemaConstraint> {
    if (!Number.isInteger(modelVocabSize) || modelVocabSize <= 0) throw new Error(`[json-schema] bad model vocabulary size ${modelVocabSize}`);
    const schemaJson = schemaToJson(schema);
    checkSchema(schema, schemaJson);
    const failed = failedSchemas.get(schemaJson);
    if (failed !== undefined) throw compileError(failed);
    const state = await tokenizerState(tokenizer, modelVocabSize);
    // lengthsInGrammar: every maxLength in the grammar, as before (tests compare the two).
    const split = options.lengthsInGrammar ? undefined : splitStringLimits(schema, state.lengths.maxChars);
    const grammar = compileGrammar(state, split ? schemaToJson(split.grammarSchema) : schemaJson);
    return new JsonSchemaConstraint(state, grammar, schemaJson, split?.limits);
  }

  /** A fresh matcher at the start of the JSON value. */
  createMatcher(): JsonMatcher {
    if (!this.box.handle) throw new Error('[json-schema] constraint already released');
    const { binding } = this.state.xg;
    // (compiled grammar, override stop tokens: the TokenizerInfo's, terminate without stop token, max rollback)
    const handle = new binding.GrammarMatcher(this.box.handle, undefined, false, -1) as EmbindHandle;
    return new XgrammarMatcher(this.state, handle, this.limits && new StringLengths(this.state.lengths, this.limits));
  }

  /** validateJson against this schema. */
  validate(text: string): JsonValidation {
    return validateJson(JSON.parse(this.schemaJson) as Record<string, unknown>, text);
  }
}

class XgrammarMatcher implements JsonMatcher {
  private readonly box: { handle: any };
  private mask: Int32Array | undefined;
  private terminated = false;
  /** Where the output is in strings and UTF-8 sequences (see stringStep). */
  private stringState = STRING_OUTSIDE;

  constructor(
    private readonly state: TokenizerState,
    handle: EmbindHandle,
    private readonly lengths?: StringLengths,
  ) {
    this.box = { handle };
    finalizer.register(this, this.box, this);
  }

  private get handle(): any {
    if (!this.box.handle) throw new Error('[json-schema] matcher used after dispose()');
    return this.box.handle;
  }

  bitmask(): Int32Array {
    const handle = this.handle; // throws after dispose()
    if (this.mask) return this.mask;
    const { words, tokenizerVocab, eosIds } = this.state;
    const out = new Int32Array(words);
    if (this.terminated) {
      for (const id of eosIds) out[id >> 5] |= 1 << (id & 31);
    } else {
      const { binding } = this.state.xg;
      const vec = handle.GetNextTokenBitmask(this.state.modelVocabSize);
      try {
        const view = binding.vecIntToView(vec) as Int32Array;
        out.set(view.length > words ? view.subarray(0, words) : view);
      } finally {
        vec.delete();
      }
      // Padding ids of a larger embedding: never.
      if (tokenizerVocab < words * 32) {
        const first = tokenizerVocab >> 5;
        if (tokenizerVocab & 31) out[first] &= (1 << (tokenizerVocab & 31)) - 1;
        out.fill(0, (tokenizerVocab + 31) >> 5);
      }
      this.lengths?.restrict(out);
      const stringSafe = this.state.lengths.stringSafe(this.stringState);
      for (let w = 0; w < words; w++) out[w] &= stringSafe[w];
    }
    this.mask = out;
    return out;
  }

  accept(token: number): boolean {
    if (this.terminated || !Number.isInteger(token) || token < 0 || token >= this.state.tokenizerVocab) return false;
    const mask = this.bitmask();
    if (((mask[token >> 5] >>> (token & 31)) & 1) === 0) return false;
    const ok = this.handle.AcceptToken(token, false) as boolean;
    if (ok) {
      this.lengths?.accept(token);
      this.stringState = Math.max(STRING_OUTSIDE, scanString(this.stringState, this.state.lengths.bytes[token] ?? []));
      this.mask = undefined;
      this.terminated = this.handle.IsTerminated() as boolean;
    }
    return ok;
  }

  isTerminated(): boolean {
    return this.terminated;
  }

  isComplete(): boolean {
    if (this.terminated) return true;
    const mask = this.bitmask();
    const eos = this.state.eosMask;
    let anyEos = false;
    for (let w = 0; w < mask.length; w++) {
      if (mask[w] & ~eos[w]) return false;
      if (mask[w]) anyEos = true;
    }
    return anyEos;
  }

  dispose(): void {
    if (!this.box.handle) return;
    finalizer.unregister(this);
    this.box.handle.delete();
    this.box.handle = undefined;
    this.mask = undefined;
  }
}

// ---------------------------------------------------------------------------
// maxLength outside the grammar. xgrammar spells a string of at most N
// characters as N optional character rules, and computes token masks for each:
// the ask prompt's three strings (200, 160 and 120) took 9.3 s to compile, and
// each sidecar paid it on its first ask. For top-level string properties the
// matcher counts characters itself and masks tokens that would pass the limit.
// It keeps the grammar's rules exactly, including one: a string with a
// maxLength takes no escapes (xgrammar 0.1.27 refuses the backslash there).
// test/json-constraint.test.ts compares the masks of both, step by step.

const QUOTE = 0x22, BACKSLASH = 0x5c, LETTER_U = 0x75;
const NO_FIT = 0xffff;

/** Characters a limited string gains from `bytes` before its closing quote; NO_FIT if they hold a backslash. */
function charsBeforeClose(bytes: readonly number[]): number {
  let chars = 0;
  for (const b of bytes) {
    if (b === QUOTE) break;
    if (b === BACKSLASH) return NO_FIT;
    if ((b & 0xc0) !== 0x80) chars++; // a UTF-8 continuation byte adds no character
  }
  return Math.min(chars, NO_FIT);
}

// Inside a JSON string a raw control byte (< 0x20) is not allowed, and the
// bytes must be valid UTF-8, but xgrammar lets through control bytes in its
// length-limited strings (minLength, or a maxLength left in the grammar) and
// malformed UTF-8 (overlong forms, surrogates, past U+10FFFF) everywhere: the
// output then fails JSON.parse, or decodes to U+FFFD runs past maxLength.
// Every matcher follows where it is in strings and UTF-8 sequences and masks,
// from there, the tokens that would break either.
const STRING_OUTSIDE = 0, STRING_INSIDE = 1, STRING_ESCAPED = 2;
// Inside a string, within a UTF-8 sequence: continuation bytes still needed,
// and the range of the next one (RFC 3629's table).
const NEED1 = 3, NEED2 = 4, NEED2_E0 = 5, NEED2_ED = 6, NEED3 = 7, NEED3_F0 = 8, NEED3_F4 = 9;

/** The next string state after byte `b`, or -1 if `b` breaks the string (a control byte, malformed UTF-8). */
function stringStep(state: number, b: number): number {
  if (state === STRING_OUTSIDE) return b === QUOTE ? STRING_INSIDE : STRING_OUTSIDE;
  if (state === STRING_ESCAPED) return b < 0x20 || b >= 0x80 ? -1 : STRING_INSIDE;
  if (state === STRING_INSIDE) {
    if (b < 0x20) return -1;
    if (b === QUOTE) return STRING_OUTSIDE;
    if (b === BACKSLASH) return STRING_ESCAPED;
    if (b < 0x80) return STRING_INSIDE;
    if (b >= 0xc2 && b <= 0xdf) return NEED1;
    if (b === 0xe0) return NEED2_E0;
    if (b === 0xed) return NEED2_ED;
    if (b >= 0xe1 && b <= 0xef) return NEED2;
    if (b === 0xf0) return NEED3_F0;
    if (b === 0xf4) return NEED3_F4;
    if (b >= 0xf1 && b <= 0xf3) return NEED3;
    return -1; // a stray continuation byte, C0, C1, F5-FF
  }
  const [lo, hi] = state === NEED2_E0 ? [0xa0, 0xbf] : state === NEED2_ED ? [0x80, 0x9f]
    : state === NEED3_F0 ? [0x90, 0xbf] : state === NEED3_F4 ? [0x80, 0x8f] : [0x80, 0xbf];
  if (b < lo || b > hi) return -1;
  if (state === NEED1) return STRING_INSIDE;
  return state === NEED3 || state === NEED3_F0 || state === NEED3_F4 ? NEED2 : NEED1;
}

/** The string state after `bytes` from `state`, or -1 if they break a string. */
function scanString(state: number, bytes: readonly number[]): number {
  for (const b of bytes) {
    state = stringStep(state, b);
    if (state < 0) return -1;
  }
  return state;
}

/** Per tokenizer: each token's bytes and the characters it adds inside a limited string; masks of tokens adding at most r. */
class TokenLengths {
  readonly bytes: number[][];
  readonly chars: Uint16Array;
  /** Tokens with two quotes or more: the only ones that can leave a string and open another. */
  readonly twoQuotes: number[] = [];
  /** The most characters any token holds: limits at least this long are enforced here. */
  readonly maxChars: number;
  private readonly fits = new Map<number, Int32Array>();
  private readonly stringSafeMasks: Array<Int32Array | undefined> = [];

  constructor(tokenizer: Tokenizer, vocab: number, private readonly words: number) {
    this.bytes = new Array(vocab);
    this.chars = new Uint16Array(vocab);
    let max = 0;
    for (let id = 0; id < vocab; id++) {
      const bytes = tokenizer.isSpecial(id) || tokenizer.eosTokenIds.has(id) ? [] : tokenizer.tokenBytes(id);
      this.bytes[id] = bytes;
      let all = 0;
      for (const b of bytes) if ((b & 0xc0) !== 0x80) all++;
      max = Math.max(max, all);
      this.chars[id] = charsBeforeClose(bytes);
      if (bytes.indexOf(QUOTE) !== bytes.lastIndexOf(QUOTE)) this.twoQuotes.push(id);
    }
    this.maxChars = max;
  }

  /** Tokens that keep strings valid (no raw control byte, well-formed UTF-8), from string state `state`. */
  stringSafe(state: number): Int32Array {
    let mask = this.stringSafeMasks[state];
    if (!mask) {
      mask = new Int32Array(this.words).fill(-1);
      for (let id = 0; id < this.bytes.length; id++) if (scanString(state, this.bytes[id]) < 0) mask[id >> 5] &= ~(1 << (id & 31));
      this.stringSafeMasks[state] = mask;
    }
    return mask;
  }

  /** Tokens that fit in `r` more characters of a limited string. */
  fitting(r: number): Int32Array {
    r = Math.min(r, this.maxChars);
    let mask = this.fits.get(r);
    if (!mask) {
      mask = new Int32Array(this.words);
      for (let id = 0; id < this.chars.length; id++) if (this.chars[id] <= r) mask[id >> 5] |= 1 << (id & 31);
      this.fits.set(r, mask);
    }
    return mask;
  }
}

/** Where a string sits: property names from the top, null for an array's items. Its JSON is the limits' key. */
type StringPath = Array<string | null>;
const pathKey = (path: StringPath) => JSON.stringify(path);

/** An open object or array: in an object, whether a key comes next and the last key read. */
interface Frame {
  array: boolean;
  expectKey: boolean;
  key: string;
}

interface LengthState {
  frames: Frame[];
  inString: 'no' | 'key' | 'value';
  keyBytes: number[];
  limit: number | undefined;
  chars: number;
  escape: number; // 0 none, -1 after the backslash, n > 0 hex digits left
  broken: boolean; // a limited string got a backslash or went past its limit
}

const copyState = (st: LengthState): LengthState => ({ ...st, frames: st.frames.map((f) => ({ ...f })), keyBytes: [...st.keyBytes] });

/**
 * Follows the JSON text a matcher accepts, byte by byte: the open objects and
 * arrays, whether the next string is a key or a value, and inside a limited
 * value string its characters so far.
 */
class StringLengths {
  private state: LengthState = { frames: [], inString: 'no', keyBytes: [], limit: undefined, chars: 0, escape: 0, broken: false };

  constructor(private readonly tokens: TokenLengths, private readonly limits: Map<string, number>) {}

  accept(token: number): void {
    feed(this.state, this.tokens.bytes[token] ?? [], this.limits);
  }

  /** Clears the tokens the grammar would refuse for a limit. */
  restrict(mask: Int32Array): void {
    const st = this.state;
    if (st.inString === 'value' && st.limit !== undefined) {
      const fits = this.tokens.fitting(st.limit - st.chars);
      for (let w = 0; w < mask.length; w++) mask[w] &= fits[w];
      return;
    }
    // Elsewhere a token breaks a limit only by opening a limited string (or
    // the key before it) in the same token: try those the grammar allows.
    const breaks = (id: number) => {
      const copy = copyState(st);
      feed(copy, this.tokens.bytes[id] ?? [], this.limits);
      return copy.broken;
    };
    if (st.inString !== 'no') {
      for (const id of this.tokens.twoQuotes) if (((mask[id >> 5] >>> (id & 31)) & 1) !== 0 && breaks(id)) mask[id >> 5] &= ~(1 << (id & 31));
      return;
    }
    for (let w = 0; w < mask.length; w++) {
      for (let bits = mask[w]; bits !== 0; bits &= bits - 1) {
        const bit = 31 - Math.clz32(bits & -bits);
        if (breaks(w * 32 + bit)) mask[w] &= ~(1 << bit);
      }
    }
  }
}

function feed(st: LengthState, bytes: readonly number[], limits: Map<string, number>): void {
  for (const b of bytes) {
    const top = st.frames[st.frames.length - 1];
    if (st.inString !== 'no') {
      if (st.inString === 'key') st.keyBytes.push(b);
      if (st.escape === -1) st.escape = b === LETTER_U ? 4 : 0;
      else if (st.escape > 0) st.escape--;
      else if (b === QUOTE) {
        if (st.inString === 'key' && top) {
          st.keyBytes.pop(); // the closing quote
          try {
            top.key = JSON.parse(`"${Buffer.from(st.keyBytes).toString('utf8')}"`) as string;
          } catch {
            top.key = '';
          }
        }
        st.inString = 'no';
      } else if (b === BACKSLASH) {
        st.escape = -1;
        if (st.limit !== undefined) st.broken = true;
      } else if ((b & 0xc0) !== 0x80 && st.limit !== undefined && ++st.chars > st.limit) st.broken = true;
      continue;
    }
    if (b === QUOTE) {
      st.inString = top && !top.array && top.expectKey ? 'key' : 'value';
      st.limit = st.inString === 'value' ? limits.get(pathKey(st.frames.map((f) => (f.array ? null : f.key)))) : undefined;
      st.chars = 0;
      st.keyBytes = [];
    } else if (b === 0x7b || b === 0x5b) { // { [
      st.frames.push({ array: b === 0x5b, expectKey: b === 0x7b, key: '' });
    } else if (b === 0x7d || b === 0x5d) { // } ]
      st.frames.pop();
    } else if (top && !top.array && b === 0x3a) { // :
      top.expectKey = false;
    } else if (top && !top.array && b === 0x2c) { // ,
      top.expectKey = true;
    }
  }
}

// minLength stays in the grammar, where it is cheap (xgrammar's cost is a rule
// per character up to maxLength); pydantic writes it beside maxLength.
const PLAIN_STRING_KEYS = new Set(['type', 'maxLength', 'minLength', 'description', 'title']);

/**
 * A schema whose maxLength keywords are all on plain strings (`{"type":
 * "string", "maxLength": N}`, alone or in an anyOf) that sit in properties and
 * array items, at any depth: the schema without them, and the limits by where
 * the strings sit. Undefined for any other schema (a maxLength left elsewhere,
 * in $defs say), two limits at one place, or a limit under `minLimit` (one
 * token could cross it before the string has begun): the grammar then
 * enforces them as before.
 */
export function splitStringLimits(schema: Record<string, unknown>, minLimit: number):
  { grammarSchema: Record<string, unknown>; limits: Map<string, number> } | undefined {
  const copy = inlineLocalRefs(JSON.parse(JSON.stringify(schema)) as Record<string, unknown>);
  if (!copy) return undefined;
  const limits = new Map<string, number>();
  const take = (s: unknown, path: StringPath): boolean => {
    if (typeof s !== 'object' || s === null || Array.isArray(s)) return true;
    const o = s as Record<string, unknown>;
    if (Array.isArray(o.anyOf)) {
      // Limits are kept by place, not by branch: an anyOf may hold one limited
      // string beside non-strings (null), and no object or array with limits
      // (another branch could reach the same place without them).
      const typeOf = (m: unknown) => (m as { type?: unknown } | null)?.type;
      const mayBeString = (m: unknown) => typeOf(m) === 'string' || typeOf(m) === undefined ||
        (Array.isArray(typeOf(m)) && (typeOf(m) as unknown[]).includes('string'));
      const limited = JSON.stringify(o.anyOf).includes('"maxLength"');
      if (limited && o.anyOf.filter(mayBeString).length > 1) return false;
      for (const m of o.anyOf) {
        if (typeOf(m) === 'string') {
          if (!take(m, path)) return false;
        } else if (JSON.stringify(m).includes('"maxLength"')) {
          return false;
        }
      }
    }
    if (o.type === 'string' && o.maxLength !== undefined) {
      if (!Object.keys(o).every((k) => PLAIN_STRING_KEYS.has(k))) return false;
      const n = o.maxLength;
      const key = pathKey(path);
      if (typeof n !== 'number' || !Number.isInteger(n) || n < minLimit || limits.has(key)) return false;
      limits.set(key, n);
      delete o.maxLength;
      return true;
    }
    if (o.type === 'object' && typeof o.properties === 'object' && o.properties !== null && !Array.isArray(o.properties)) {
      for (const [name, p] of Object.entries(o.properties as Record<string, unknown>)) if (!take(p, [...path, name])) return false;
    }
    if (o.type === 'array' && typeof o.items === 'object' && o.items !== null && !Array.isArray(o.items)) {
      if (!take(o.items, [...path, null])) return false;
    }
    return true;
  };
  if (!take(copy, []) || limits.size === 0 || JSON.stringify(copy).includes('"maxLength"')) return undefined;
  return { grammarSchema: copy, limits };
}

const MAX_INLINED_NODES = 20_000;

/**
 * The schema with its local `$ref`s to `$defs` (or `definitions`) written in
 * place, as pydantic's nested models come: their limits can then be counted.
 * Undefined when no definition holds a maxLength (nothing to gain), for a
 * recursive definition, a missing one, a `$ref` with other keywords beside it
 * than a description or title, or one that would grow past MAX_INLINED_NODES.
 */
function inlineLocalRefs(schema: Record<string, unknown>): Record<string, unknown> | undefined {
  const defs = (schema.$defs ?? schema.definitions) as Record<string, unknown> | undefined;
  if (defs === undefined) return schema;
  if (typeof defs !== 'object' || defs === null || Array.isArray(defs) || !JSON.stringify(defs).includes('"maxLength"')) return undefined;
  // A definition that uses the next one twice, and so on, doubles at each step: stop well before that costs time.
  let nodes = 0;
  const resolve = (node: unknown, seen: readonly string[]): unknown => {
    if (++nodes > MAX_INLINED_NODES) throw new Error('too large to inline');
    if (Array.isArray(node)) return node.map((n) => resolve(n, seen));
    if (typeof node !== 'object' || node === null) return node;
    const o = node as Record<string, unknown>;
    if (o.$ref !== undefined) {
      const m = typeof o.$ref === 'string' ? /^#\/(?:\$defs|definitions)\/([^/]+)$/.exec(o.$ref) : null;
      const name = m ? decodeURIComponent(m[1]) : undefined;
      if (name === undefined || seen.includes(name) || !(name in defs)) throw new Error('not inlinable');
      if (!Object.keys(o).every((k) => k === '$ref' || k === 'description' || k === 'title')) throw new Error('not inlinable');
      return resolve(defs[name], [...seen, name]);
    }
    return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, resolve(v, seen)]));
  };
  const { $defs: _defs, definitions: _definitions, ...rest } = schema;
  try {
    return resolve(rest, []) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// Schema checks and output validation (ajv).

function schemaToJson(schema: unknown): string {
  if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) {
    throw new Error(`[json-schema] the schema must be a JSON object, got ${Array.isArray(schema) ? 'an array' : schema === null ? 'null' : typeof schema}`);
  }
  try {
    return JSON.stringify(schema);
  } catch (e) {
    throw new Error(`[json-schema] the schema cannot be written as JSON: ${(e as Error).message}`);
  }
}

const VALIDATOR_CACHE_SIZE = 64;
const validators = new Map<string, ValidateFunction>();
let ajvDraft7: Ajv | undefined;
let ajv2020: Ajv2020 | undefined;

function ajvFor(schema: Record<string, unknown>): Ajv {
  const draft = typeof schema.$schema === 'string' ? schema.$schema : '';
  // Formats are not checked (the grammar does not enforce them either); unknown keywords are allowed.
  const options = { allErrors: true, strict: false, validateFormats: false, logger: false as const };
  if (draft.includes('2020-12')) return (ajv2020 ??= new Ajv2020(options));
  return (ajvDraft7 ??= new Ajv(options));
}

function validatorFor(schema: Record<string, unknown>, schemaJson: string): ValidateFunction {
  let v = validators.get(schemaJson);
  if (v) {
    validators.delete(schemaJson);
    validators.set(schemaJson, v);
    return v;
  }
  try {
    // ajv keys its own cache by schema object; the text is our key.
    v = ajvFor(schema).compile(JSON.parse(schemaJson));
  } catch (e) {
    throw new Error(`[json-schema] invalid schema: ${(e as Error).message}`);
  }
  validators.set(schemaJson, v);
  while (validators.size > VALIDATOR_CACHE_SIZE) validators.delete(validators.keys().next().value as string);
  return v;
}

function checkSchema(schema: Record<string, unknown>, schemaJson: string): void {
  validatorFor(schema, schemaJson);
}

/**
 * Parses `text` and validates it against `schema`. Throws
 * `Error('[json-schema] ...')` only if the schema itself is invalid.
 */
export function validateJson(schema: Record<string, unknown>, text: string): JsonValidation {
  const schemaJson = schemaToJson(schema);
  const validate = validatorFor(schema, schemaJson);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return { ok: false, error: `not JSON: ${(e as Error).message}` };
  }
  if (validate(value)) return { ok: true, value };
  const errors = (validate.errors ?? []).map((e) => `${e.instancePath || '(root)'} ${e.message ?? 'is invalid'}`);
  return { ok: false, error: errors.join('; ') || 'does not match the schema' };
}
