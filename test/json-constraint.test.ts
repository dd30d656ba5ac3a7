// JSON-schema constrained decoding (src/engine/json-constraint.ts): random walks
// over the allowed tokens must always spell valid JSON of the schema; real
// batched generations of the default model under the masks must parse and
// validate, every one of them; bad schemas fail with a clear message.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { JsonSchemaConstraint, splitStringLimits, validateJson, type JsonMatcher } from '../src/engine/json-constraint.js';
import { loadModelSpec } from '../src/engine/model-config.js';
import { createNativeEngine, type NativeEngine, type SamplingParams } from '../src/engine/native.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { DEFAULT_MODEL } from './support/fixtures.js';
import { mulberry32 as rng } from '../src/benchmark/workload.js';

type Schema = Record<string, unknown>;

const SCHEMAS: Record<string, Schema> = {
  person: {
    type: 'object',
    properties: {
      name: { type: 'string' },
      age: { type: 'integer' },
      student: { type: 'boolean' },
      role: { enum: ['admin', 'user', 'guest'] },
      hobbies: { type: 'array', items: { type: 'string' }, maxItems: 3 },
      nickname: { type: 'string' }, // optional
    },
    required: ['name', 'age', 'student', 'role', 'hobbies'],
  },
  nested: {
    type: 'object',
    properties: {
      title: { type: 'string' },
      year: { type: 'integer' },
      author: {
        type: 'object',
        properties: { name: { type: 'string' }, country: { type: ['string', 'null'] } },
        required: ['name', 'country'],
      },
      ratings: { type: 'array', items: { type: 'number' }, minItems: 1, maxItems: 3 },
    },
    required: ['title', 'year', 'author', 'ratings'],
  },
  // pydantic's nested models: $defs and $ref, min_length/max_length (counted by the matcher once inlined).
  pydantic: {
    $defs: { Author: { type: 'object', properties: { name: { type: 'string', minLength: 1, maxLength: 90 } }, required: ['name'] } },
    type: 'object',
    properties: { title: { type: 'string', maxLength: 95 }, author: { $ref: '#/$defs/Author' } },
    required: ['title', 'author'],
  },
  // The minions worker reply: null means "not in this chunk".
  minions: {
    type: 'object',
    properties: {
      explanation: { type: 'string' },
      citation: { type: ['string', 'null'] },
      answer: { type: ['string', 'null'] },
    },
    required: ['explanation', 'citation', 'answer'],
  },
};


function allowedIds(mask: Int32Array): number[] {
  const ids: number[] = [];
  for (let w = 0; w < mask.length; w++) {
    let bits = mask[w];
    while (bits !== 0) {
      const b = 31 - Math.clz32(bits & -bits);
      ids.push(w * 32 + b);
      bits &= bits - 1;
    }
  }
  return ids;
}

function isAllowed(mask: Int32Array, id: number): boolean {
  return ((mask[id >> 5] >>> (id & 31)) & 1) === 1;
}

let tokenizer: Tokenizer;

before(async () => {
  tokenizer = await Tokenizer.fromModel(DEFAULT_MODEL);
});

describe('JSON constraint without the model', () => {
  test('random walks over allowed tokens always spell valid JSON of the schema', async () => {
    const padded = tokenizer.vocabSize + 40; // a model may have more logits than the tokenizer has tokens
    const eos = [...tokenizer.eosTokenIds].sort((a, b) => a - b);
    // Token strings with a closing character: a walk that has run long prefers them, to end in bounded time.
    const closing = new Uint8Array(tokenizer.vocabSize);
    for (let id = 0; id < tokenizer.vocabSize; id++) if (/["\]}]/.test(tokenizer.idToToken(id) ?? '')) closing[id] = 1;
    const WALKS = 12;
    const MAX_TOKENS = 300;
    const started = performance.now();
    let totalTokens = 0;
    for (const [name, schema] of Object.entries(SCHEMAS)) {
      const constraint = await JsonSchemaConstraint.compile(tokenizer, schema, padded);
      for (let walk = 0; walk < WALKS; walk++) {
        const random = rng(1000 * walk + name.length);
        const m = constraint.createMatcher();
        const ids: number[] = [];
        try {
          while (!m.isTerminated()) {
            assert.ok(ids.length < MAX_TOKENS, `${name} walk ${walk}: no end after ${MAX_TOKENS} tokens: ${tokenizer.decode(ids)}`);
            const mask = m.bitmask();
            assert.equal(mask.length, Math.ceil(padded / 32));
            const allowed = allowedIds(mask);
            assert.ok(allowed.length > 0, `${name} walk ${walk}: nothing allowed after ${JSON.stringify(tokenizer.decode(ids))}`);
            assert.ok(allowed.every((id) => id < tokenizer.vocabSize), 'an id past the tokenizer vocabulary was allowed');
            assert.ok(allowed.every((id) => !tokenizer.isSpecial(id) || tokenizer.eosTokenIds.has(id)), 'a special token was allowed');
            const eosAllowed = allowed.filter((id) => tokenizer.eosTokenIds.has(id));
            if (eosAllowed.length > 0) {
              // The object is complete: only end-of-sequence may follow.
              assert.deepEqual(allowed, eos, `${name}: more than EOS allowed after ${tokenizer.decode(ids)}`);
            }
            let pick: number;
            if (eosAllowed.length > 0 && random() < 0.7) pick = eosAllowed[Math.floor(random() * eosAllowed.length)];
            else {
              const closers = ids.length > 20 && random() < 0.5 ? allowed.filter((id) => closing[id]) : [];
              const pool = closers.length > 0 ? closers : allowed;
              pick = pool[Math.floor(random() * pool.length)];
            }
            assert.ok(m.accept(pick), `allowed token ${pick} was refused`);
            ids.push(pick);
          }
          totalTokens += ids.length;
          assert.ok(tokenizer.eosTokenIds.has(ids[ids.length - 1]), 'terminated without EOS');
          const text = tokenizer.decode(ids.slice(0, -1));
          const r = validateJson(schema, text);
          assert.ok(r.ok, `${name} walk ${walk}: ${JSON.stringify(text)}: ${r.ok ? '' : r.error}`);
          // After termination: no token is accepted; the mask still only allows EOS.
          assert.equal(m.accept(ids[0]), false);
          assert.deepEqual(allowedIds(m.bitmask()), eos);
        } finally {
          m.dispose();
        }
      }
    }
    const ms = performance.now() - started;
    console.log(`# ${WALKS * Object.keys(SCHEMAS).length} walks, ${totalTokens} tokens, ${ms.toFixed(0)} ms`);
  });

  test('accept refuses a disallowed token and keeps the state', async () => {
    const c = await JsonSchemaConstraint.compile(tokenizer, SCHEMAS.minions, tokenizer.vocabSize);
    const m = c.createMatcher();
    const letterA = tokenizer.encode('a', { addSpecialTokens: false })[0];
    assert.equal(isAllowed(m.bitmask(), letterA), false);
    assert.equal(m.accept(letterA), false);
    assert.equal(m.accept(-1), false);
    assert.equal(m.accept(tokenizer.vocabSize + 5), false);
    assert.equal(m.accept([...tokenizer.eosTokenIds][0]), false, 'EOS before any JSON');
    const ids = tokenizer.encode('{"explanation": "x", "citation": null, "answer": "4"}', { addSpecialTokens: false });
    for (const [k, id] of ids.entries()) {
      assert.equal(m.isComplete(), false, 'not complete before the closing brace');
      assert.ok(m.accept(id), `refused ${tokenizer.idToToken(id)} at ${k}`);
    }
    assert.equal(m.isTerminated(), false);
    assert.equal(m.isComplete(), true, 'complete after the closing brace: only EOS may follow');
    assert.equal(m.accept(ids[0]), false, 'nothing after the closing brace');
    assert.ok(m.accept([...tokenizer.eosTokenIds][0]));
    assert.equal(m.isTerminated(), true);
    m.dispose();
    m.dispose(); // idempotent
    assert.throws(() => m.bitmask(), /\[json-schema\] matcher used after dispose/);
  });

  test('maxLength counted by the matcher masks as maxLength in the grammar does, step by step', async () => {
    // Limits just over the longest token's characters: the shortest the matcher takes over.
    const schema: Schema = {
      type: 'object',
      properties: {
        note: { type: 'string', minLength: 2, maxLength: 85 }, // pydantic's min_length and max_length
        title: { type: 'string' }, // no limit: a token may close it and open the next key
        answer: { anyOf: [{ type: 'string', maxLength: 90 }, { type: 'null' }] },
        // Nested: an object's property and an array's items; the same name in two places.
        meta: { type: 'object', properties: { note: { type: 'string', maxLength: 87 }, free: { type: 'string' } }, required: ['note', 'free'] },
        tags: { type: 'array', items: { type: 'string', maxLength: 86 }, maxItems: 2 },
        count: { type: 'integer' },
      },
      required: ['note', 'title', 'answer', 'meta', 'tags', 'count'],
    };
    let started = performance.now();
    const grammar = await JsonSchemaConstraint.compile(tokenizer, schema, tokenizer.vocabSize, { lengthsInGrammar: true });
    const grammarMs = performance.now() - started;
    started = performance.now();
    const counted = await JsonSchemaConstraint.compile(tokenizer, schema, tokenizer.vocabSize);
    const countedMs = performance.now() - started;
    console.log(`# compile: limits in the grammar ${grammarMs.toFixed(0)} ms, counted by the matcher ${countedMs.toFixed(0)} ms`);
    assert.ok(countedMs < grammarMs, 'the counted path should compile faster');

    const random = rng(7);
    let atLimit = 0, steps = 0;
    for (let walk = 0; walk < 8; walk++) {
      const a = grammar.createMatcher(), b = counted.createMatcher();
      const ids: number[] = [];
      for (let step = 0; step < 600 && !a.isTerminated(); step++, steps++) {
        // The same masks (raw control characters, which xgrammar's limited
        // strings let through, are masked by the matcher in both).
        const where = `walk ${walk} step ${step} after ${JSON.stringify(tokenizer.decode(ids))}`;
        const inGrammar = allowedIds(a.bitmask()), allowed = allowedIds(b.bitmask());
        assert.deepEqual(allowed, inGrammar, where);
        // Now and then a token that closes something: an unlimited string or
        // an integer would otherwise run on for thousands of steps.
        const closing = allowed.filter((t) => tokenizer.tokenBytes(t).some((byte) => byte === 0x22 || byte === 0x7d));
        const pool = closing.length > 0 && random() < 0.1 ? closing : allowed;
        const id = pool[Math.floor(random() * pool.length)];
        assert.ok(a.accept(id) && b.accept(id));
        ids.push(id);
      }
      assert.ok(a.isTerminated() && b.isTerminated(), `walk ${walk} did not end`);
      const text = tokenizer.decode(ids.filter((id) => !tokenizer.eosTokenIds.has(id)));
      const value = JSON.parse(text) as { note: string; answer: string | null; meta: { note: string }; tags: string[] };
      assert.ok(validateJson(schema, text).ok, text);
      if (value.note.length === 85 || value.answer?.length === 90 || value.meta.note.length === 87 || value.tags.some((t) => t.length === 86)) atLimit++;
      a.dispose();
      b.dispose();
    }
    console.log(`# ${steps} steps, ${atLimit} walks reached a limit`);
    assert.ok(atLimit >= 4, 'the walks should run into the limits');
  });

  test('no raw control byte goes inside a string, whichever way its limits are kept', async () => {
    const tab = tokenizer.encode('\t', { addSpecialTokens: false });
    assert.equal(tab.length, 1);
    const str = (limits: object) => ({ type: 'string', ...limits });
    const cases: Array<[object, string]> = [
      [{ type: 'object', properties: { code: str({ maxLength: 50 }) }, required: ['code'] }, '{"code": "a'],
      [{ type: 'object', properties: { code: str({ minLength: 1 }) }, required: ['code'] }, '{"code": "a'],
      [{ type: 'object', properties: { tags: { type: 'array', items: str({ maxLength: 200 }) } }, required: ['tags'] }, '{"tags": ["a'],
      [{ type: 'object', properties: { code: str({}) }, required: ['code'] }, '{"code": "a'],
    ];
    for (const [schema, prefix] of cases) {
      const m = (await JsonSchemaConstraint.compile(tokenizer, schema as Record<string, unknown>, tokenizer.vocabSize)).createMatcher();
      for (const id of tokenizer.encode(prefix, { addSpecialTokens: false })) assert.ok(m.accept(id), `${prefix}: refused ${tokenizer.idToToken(id)}`);
      const controls = allowedIds(m.bitmask()).filter((id) => tokenizer.tokenBytes(id).some((b) => b < 0x20));
      assert.deepEqual(controls.map((id) => tokenizer.idToToken(id)), [], JSON.stringify(schema));
      assert.equal(m.accept(tab[0]), false);
      m.dispose();
    }
  });

  test('strings hold only well-formed UTF-8: no overlong form, surrogate, stray continuation or byte past U+10FFFF', async () => {
    const byteToken = new Map<number, number>();
    for (let id = 0; id < tokenizer.vocabSize; id++) {
      const bytes = tokenizer.tokenBytes(id);
      if (bytes.length === 1 && !byteToken.has(bytes[0]) && !tokenizer.isSpecial(id)) byteToken.set(bytes[0], id);
    }
    const c = await JsonSchemaConstraint.compile(tokenizer, SCHEMAS.minions, tokenizer.vocabSize);
    const inString = () => {
      const m = c.createMatcher();
      for (const id of tokenizer.encode('{"explanation": "a', { addSpecialTokens: false })) assert.ok(m.accept(id));
      return m;
    };
    const cases: Array<[number[], boolean]> = [
      [[0xc3, 0xa9], true], // é
      [[0xe6, 0x97, 0xa5], true], // 日
      [[0xf0, 0x9f, 0x8e, 0x89], true], // 🎉
      [[0x80], false], // a continuation with no lead
      [[0xc0], false], [[0xc1], false], [[0xf5], false], // never in UTF-8
      [[0xe0, 0x80], false], // overlong
      [[0xed, 0xa0], false], // a surrogate
      [[0xf4, 0x90], false], // past U+10FFFF
      [[0xc3, 0x22], false], // a quote where a continuation must come
    ];
    for (const [bytes, valid] of cases) {
      const m = inString();
      const accepted = bytes.map((b) => m.accept(byteToken.get(b)!));
      const hex = bytes.map((b) => b.toString(16)).join(' ');
      if (valid) assert.ok(accepted.every(Boolean), `${hex} is valid UTF-8`);
      else assert.equal(accepted.at(-1), false, `${hex}: the last byte must be refused (${accepted})`);
      m.dispose();
    }
  });

  test("pydantic's nested models ($defs and $ref) have their limits counted; recursive ones stay in the grammar", () => {
    const pydantic = {
      $defs: {
        Author: { type: 'object', title: 'Author', properties: { name: { type: 'string', minLength: 1, maxLength: 120, title: 'Name' } }, required: ['name'] },
      },
      type: 'object', title: 'Book',
      properties: {
        title: { type: 'string', maxLength: 200, title: 'Title' },
        author: { $ref: '#/$defs/Author' },
        editors: { type: 'array', items: { $ref: '#/$defs/Author' }, title: 'Editors' },
      },
      required: ['title', 'author', 'editors'],
    };
    const split = splitStringLimits(pydantic, 81)!;
    assert.ok(split, 'taken by the matcher');
    assert.deepEqual([...split.limits], [['["title"]', 200], ['["author","name"]', 120], ['["editors",null,"name"]', 120]]);
    assert.ok(!JSON.stringify(split.grammarSchema).includes('maxLength'));
    assert.ok(!JSON.stringify(split.grammarSchema).includes('$ref'));
    const recursive = {
      $defs: { Node: { type: 'object', properties: { label: { type: 'string', maxLength: 100 }, children: { type: 'array', items: { $ref: '#/$defs/Node' } } } } },
      $ref: '#/$defs/Node',
    };
    assert.equal(splitStringLimits(recursive, 81), undefined);
    assert.equal(splitStringLimits({ type: 'object', properties: { a: { type: 'string', maxLength: 50 } } }, 81), undefined, 'a limit one token could cross');
    // Definitions that each use the next one twice double at every step: given up, not expanded.
    const chain: Record<string, unknown> = { D30: { type: 'string', maxLength: 100 } };
    for (let i = 29; i >= 0; i--) chain[`D${i}`] = { type: 'object', properties: { a: { $ref: `#/$defs/D${i + 1}` }, b: { $ref: `#/$defs/D${i + 1}` } } };
    assert.equal(splitStringLimits({ $defs: chain, $ref: '#/$defs/D0' }, 81), undefined);
  });

  test('limits are kept by place: an anyOf whose branches reach one place with and without a limit stays in the grammar', () => {
    const at = (anyOf: unknown[]) => splitStringLimits({ type: 'object', properties: { item: { anyOf } }, required: ['item'] }, 81);
    assert.deepEqual([...at([{ type: 'string', maxLength: 90 }, { type: 'null' }])!.limits], [['["item"]', 90]]);
    assert.equal(at([{ type: 'string', maxLength: 90 }, { type: 'string' }]), undefined);
    assert.equal(at([{ type: 'string', maxLength: 90 }, { type: ['string', 'null'] }]), undefined);
    assert.equal(at([
      { type: 'object', properties: { kind: { const: 'short' }, name: { type: 'string', maxLength: 100 } } },
      { type: 'object', properties: { kind: { const: 'long' }, name: { type: 'string' } } },
    ]), undefined);
  });

  test('compiled grammars are cached by schema text', async () => {
    const a = await JsonSchemaConstraint.compile(tokenizer, SCHEMAS.person, tokenizer.vocabSize);
    const started = performance.now();
    const b = await JsonSchemaConstraint.compile(tokenizer, JSON.parse(JSON.stringify(SCHEMAS.person)), tokenizer.vocabSize);
    assert.ok(performance.now() - started < 20, 'second compile of the same schema was not cached');
    assert.equal(a.schemaJson, b.schemaJson);
    // Independent matchers from one constraint.
    const m1 = a.createMatcher();
    const m2 = b.createMatcher();
    const open = tokenizer.encode('{"', { addSpecialTokens: false });
    for (const id of open) assert.ok(m1.accept(id));
    assert.notDeepEqual(allowedIds(m1.bitmask()), allowedIds(m2.bitmask()));
    m1.dispose();
    m2.dispose();
  });

  test('invalid schemas are rejected with a clear message', async () => {
    const cases: Array<[unknown, RegExp]> = [
      [{ type: 'object', properties: { a: { type: 'strin' } } }, /^Error: \[json-schema\] invalid schema: .*type must be equal to one of the allowed values/],
      [{ type: 'object', properties: { a: { $ref: '#/$defs/missing' } } }, /^Error: \[json-schema\] invalid schema: can't resolve reference #\/\$defs\/missing/],
      [{ type: 'string', pattern: '[a-' }, /^Error: \[json-schema\] invalid schema: Invalid regular expression/],
      [{ type: 'object', required: 'name' }, /^Error: \[json-schema\] invalid schema: .*required must be array/],
      // valid JSON Schema, but not something xgrammar can turn into a grammar
      [{ type: 'string', pattern: '(?<=a)b' }, /^Error: \[json-schema\] cannot compile the schema to a grammar: .*Lookbehind is not supported/],
      [[{ type: 'string' }], /^Error: \[json-schema\] the schema must be a JSON object, got an array/],
      ['{"type": "string"}', /^Error: \[json-schema\] the schema must be a JSON object, got string/],
    ];
    for (const [schema, message] of cases) {
      await assert.rejects(JsonSchemaConstraint.compile(tokenizer, schema as Schema, tokenizer.vocabSize), message, JSON.stringify(schema));
    }
    assert.throws(() => validateJson({ type: 'strin' }, '1'), /^Error: \[json-schema\] invalid schema/);
  });

  test('failed grammar compiles leave constraints, old and new, working', async () => {
    const spell = (c: JsonSchemaConstraint, text: string) => {
      const m = c.createMatcher();
      for (const id of tokenizer.encode(text, { addSpecialTokens: false })) assert.ok(m.accept(id), `refused ${tokenizer.idToToken(id)} in ${text}`);
      assert.ok(m.accept([...tokenizer.eosTokenIds][0]));
      assert.ok(m.isTerminated());
      m.dispose();
    };
    const schema = { type: 'object', properties: { n: { type: 'integer' } }, required: ['n'] };
    const before = await JsonSchemaConstraint.compile(tokenizer, schema, tokenizer.vocabSize);
    // Each failure aborts inside the WASM module; xgrammar is then reloaded for new work.
    for (const pattern of ['(?<=x)y', '(?<!x)y', 'a(?<=b)']) {
      await assert.rejects(JsonSchemaConstraint.compile(tokenizer, { type: 'string', pattern }, tokenizer.vocabSize), /cannot compile the schema to a grammar/);
    }
    // The same bad schema again fails from memory, without another abort.
    const started = performance.now();
    await assert.rejects(JsonSchemaConstraint.compile(tokenizer, { type: 'string', pattern: '(?<=x)y' }, tokenizer.vocabSize), /Lookbehind is not supported/);
    assert.ok(performance.now() - started < 20);
    spell(before, '{"n": 7}');
    spell(await JsonSchemaConstraint.compile(tokenizer, schema, tokenizer.vocabSize), '{"n": -12}');
  });

  test('validateJson reports parse and schema errors', () => {
    assert.deepEqual(validateJson(SCHEMAS.minions, '{"explanation": "e", "citation": null, "answer": null}'), {
      ok: true,
      value: { explanation: 'e', citation: null, answer: null },
    });
    const notJson = validateJson(SCHEMAS.minions, '{"explanation": ');
    assert.equal(notJson.ok, false);
    assert.match(notJson.ok ? '' : notJson.error, /^not JSON/);
    const wrong = validateJson(SCHEMAS.minions, '{"explanation": 3, "citation": null}');
    assert.equal(wrong.ok, false);
    assert.match(wrong.ok ? '' : wrong.error, /must have required property 'answer'/);
    assert.match(wrong.ok ? '' : wrong.error, /\/explanation must be string/);
  });
});

// ---------------------------------------------------------------------------
// The real thing. Short prompts with one example reply: the grammar fixes the
// shape, the example keeps a 135M model's strings short enough to end.

interface Job {
  schema: keyof typeof SCHEMAS;
  user: string;
}

const PEOPLE = ['a nurse named Lea', 'a retired pilot named Omar', 'a student named Kim who plays the violin', 'an admin named Raj', 'a guest named Zoe who likes hiking', 'a teacher named Ana, 30 years old', 'a student named Leo who paints'];
const BOOKS = [
  'Dune by Frank Herbert (USA), 1965',
  'Things Fall Apart by Chinua Achebe (Nigeria), 1958',
  'The Trial by Franz Kafka, 1925',
  'Pedro Paramo by Juan Rulfo (Mexico), 1955',
  'Beloved by Toni Morrison (USA), 1987',
];
const DOCS: Array<[string, string[]]> = [
  ['The Lighthouse Keeper is a novel by Maria Alvarez, published in 1987 in Lisbon. It won the Atlantic Prize in 1988.', ['In which year was the novel published?', 'Who wrote the novel?', 'What is the price of the book?']],
  ['The bridge over the Elm river was finished in 1932. It is 410 meters long and carries two railway tracks.', ['How long is the bridge?', 'When was the bridge finished?', 'Who designed the bridge?']],
  ['Our office opens at 9 am on weekdays. On Saturdays it opens at 10 am; it is closed on Sundays.', ['When does the office open on Saturdays?', 'Is the office open on Sundays?', 'Where is the office?']],
];

function jobs(): Job[] {
  const out: Job[] = [];
  for (let i = 0; out.length < GENERATIONS; i++) {
    const kind = i % 3;
    if (kind === 0) {
      out.push({
        schema: 'person',
        user:
          'Write a JSON record for a person. Example: {"name": "Bo", "age": 41, "student": false, "role": "guest", "hobbies": ["chess"]}\n' +
          `Now write one for ${PEOPLE[(i / 3) % PEOPLE.length | 0]}.`,
      });
    } else if (kind === 1) {
      out.push({
        schema: 'nested',
        user:
          'Write a JSON record for a book. Example: {"title": "Emma", "year": 1815, "author": {"name": "Jane Austen", "country": "England"}, "ratings": [4.5]}\n' +
          `Now write one for ${BOOKS[(i / 3) % BOOKS.length | 0]}.`,
      });
    } else {
      const [doc, questions] = DOCS[(i / 3) % DOCS.length | 0];
      const question = questions[(i / 9) % questions.length | 0];
      out.push({
        schema: 'minions',
        user:
          `Document: ${doc}\nQuestion: ${question}\n` +
          'Reply in JSON: a one-sentence explanation, the sentence of the document you used as citation, and the answer. ' +
          'Example: {"explanation": "The text gives the date.", "citation": "It opened in 1990.", "answer": "1990"}\n' +
          'If the document does not say: {"explanation": "The text does not mention it.", "citation": null, "answer": null}',
      });
    }
  }
  return out;
}

const BATCH = 10;
const GENERATIONS = 50;
const MAX_TOKENS = 192;

describe('constrained generation with the default model', () => {
  let engine: NativeEngine;
  let vocabSize: number;

  before(async () => {
    const spec = await loadModelSpec(DEFAULT_MODEL);
    vocabSize = spec.vocabSize;
    engine = createNativeEngine();
    await engine.load(spec, { weights: 'auto', device: 'auto' });
  });

  after(async () => {
    await engine?.close();
  });

  test(`${GENERATIONS} generations, ${BATCH} rows at a time, all parse and validate`, async () => {
    const constraints = new Map<string, JsonSchemaConstraint>();
    for (const name of Object.keys(SCHEMAS)) constraints.set(name, await JsonSchemaConstraint.compile(tokenizer, SCHEMAS[name], vocabSize));
    interface Row {
      id: number;
      job: Job;
      matcher: JsonMatcher;
      tokens: number[];
    }
    const queue = jobs().map((job, id) => ({ job, id }));
    const active = new Map<number, Row>();
    const failures: string[] = [];
    const lengths: number[] = [];
    let capped = 0;
    let steps = 0;
    let prefillMs = 0;
    const started = performance.now();

    const finish = async (row: Row) => {
      active.delete(row.id);
      row.matcher.dispose();
      await engine.remove(row.id);
      lengths.push(row.tokens.length);
      const last = row.tokens[row.tokens.length - 1];
      if (!tokenizer.eosTokenIds.has(last)) {
        capped++;
        failures.push(`row ${row.id} (${row.job.schema}) hit ${MAX_TOKENS} tokens: ${JSON.stringify(tokenizer.decode(row.tokens))}`);
        return;
      }
      const text = tokenizer.decode(row.tokens.slice(0, -1));
      const v = validateJson(SCHEMAS[row.job.schema], text);
      if (!v.ok) failures.push(`row ${row.id} (${row.job.schema}): ${JSON.stringify(text)}: ${v.error}`);
      if (process.env.JSON_TEST_VERBOSE) console.log(`# row ${row.id} ${row.tokens.length} tokens: ${text}`);
    };

    // Continuous batching: up to BATCH rows decode together; a finished row's slot goes to the next job.
    while (queue.length > 0 || active.size > 0) {
      while (active.size < BATCH && queue.length > 0) {
        const { job, id } = queue.shift()!;
        const prompt = tokenizer.encode(tokenizer.applyChatTemplate([{ role: 'user', content: job.user }], { addGenerationPrompt: true }), { addSpecialTokens: false });
        // Even ids greedy, odd ones sampled at 0.8, each with its own seed.
        const sampling: SamplingParams = { temperature: id % 2 === 0 ? 0 : 0.8, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, repetitionContextSize: 20, seed: 1000 + id };
        const matcher = constraints.get(job.schema)!.createMatcher();
        const t0 = performance.now();
        await engine.addSequence(id, sampling);
        const r = await engine.prefill(id, Int32Array.from(prompt), true, false, matcher.bitmask());
        prefillMs += performance.now() - t0;
        assert.ok(r.token !== undefined, 'prefill returned no token');
        assert.ok(matcher.accept(r.token), `row ${id}: first token ${r.token} (${tokenizer.idToToken(r.token)}) was not allowed`);
        const row: Row = { id, job, matcher, tokens: [r.token] };
        active.set(id, row);
      }
      const rows = [...active.values()];
      const out = await engine.decode({ masks: rows.map((r) => ({ id: r.id, bitmask: r.matcher.bitmask() })) });
      steps++;
      for (let i = 0; i < out.ids.length; i++) {
        const row = active.get(out.ids[i])!;
        const token = out.tokens[i];
        assert.ok(row.matcher.accept(token), `row ${row.id}: sampled token ${token} (${tokenizer.idToToken(token)}) was not allowed`);
        row.tokens.push(token);
        if (row.matcher.isTerminated() || row.tokens.length >= MAX_TOKENS) await finish(row);
      }
    }
    const s = (performance.now() - started) / 1000;
    lengths.sort((a, b) => a - b);
    const total = lengths.reduce((a, b) => a + b, 0);
    console.log(
      `# ${GENERATIONS} generations: ${total} tokens, ${steps} decode steps, ${s.toFixed(1)} s (prefill ${(prefillMs / 1000).toFixed(1)} s); ` +
        `length median ${lengths[lengths.length >> 1]}, max ${lengths[lengths.length - 1]}; ${capped} hit the ${MAX_TOKENS}-token cap`,
    );
    assert.deepEqual(failures, []);
  });
});
