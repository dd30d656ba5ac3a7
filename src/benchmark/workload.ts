// The seed benchmark's minion workload, generated deterministically from a
// seed: documents of N sentences, each sentence one fact (a name, a number, a
// year or a city), and questions about them. Some questions ask about things
// the document never mentions; their right answer is "not found". Scoring is
// exact: the expected number or name in the answer, or an abstention.

/** A small, fast, seedable PRNG (mulberry32): the same seed gives the same workload everywhere. */
export function mulberry32(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type AnswerKind = 'number' | 'year' | 'name' | 'city';

export interface MinionQuestion {
  question: string;
  /** null: the document does not say; the right answer is "not found". */
  expected: string | null;
  kind: AnswerKind;
  /** For a "not found" question: the name in it that the document never mentions. */
  missing?: string;
}

export interface MinionDocument {
  seed: number;
  sentences: string[];
  text: string;
  questions: MinionQuestion[];
}

const FIRST = ['Amara', 'Bastian', 'Celine', 'Dorian', 'Esther', 'Farid', 'Greta', 'Hugo', 'Ingrid', 'Jonas', 'Keiko', 'Lorenzo',
  'Mirela', 'Nikolai', 'Odette', 'Pavel', 'Quentin', 'Rosalind', 'Soren', 'Tamsin', 'Ulrich', 'Vesna', 'Wendell', 'Yara'];
const LAST = ['Quist', 'Halloran', 'Marchetti', 'Okafor', 'Lindqvist', 'Brennan', 'Szabo', 'Castellanos', 'Whitfield', 'Nakagawa',
  'Ferreira', 'Holm', 'Kowalczyk', 'Abernathy', 'Delacroix', 'Ivanova', 'Moreau', 'Petrakis', 'Rasmussen', 'Trujillo'];
const ORGS = ['Halden Observatory', 'Corvid Analytics', 'Brightwater Mills', 'the Saltmarsh Trust', 'Ostrava Rail Works', 'Kestrel Biotech',
  'the Marlow Archive', 'Juniper Freight', 'Vantage Ceramics', 'the Alder Institute', 'Pinecrest Dairy', 'Orrery Software',
  'Greyhollow Press', 'Tidewater Robotics', 'the Quarry Guild', 'Lumen Textiles', 'Fernhill Clinic', 'Basalt Engineering'];
const CITIES = ['Tallinn', 'Porto', 'Ljubljana', 'Bergen', 'Valparaiso', 'Kraków', 'Hobart', 'Trieste', 'Antwerp', 'Quebec City',
  'Nagoya', 'Cork', 'Tbilisi', 'Adelaide', 'Lyon', 'Gdańsk', 'Tromsø', 'Cusco', 'Windhoek', 'Reykjavik', 'Dunedin', 'Bruges'];
const ITEMS = ['copper wire', 'olive oil', 'telescope lenses', 'wool blankets', 'printer paper', 'solar panels', 'glass bottles', 'oak barrels',
  'bicycle tires', 'maple syrup', 'brass hinges', 'linen sheets'];
const PROJECTS = ['Lantern', 'Driftwood', 'Bluebell', 'Anvil', 'Meridian', 'Foxglove', 'Cobalt', 'Harbor', 'Tamarack', 'Sundial',
  'Larkspur', 'Bramble', 'Quartz', 'Saffron'];

type Rand = () => number;
const pick = <T>(rand: Rand, xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
const int = (rand: Rand, lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));

/** One fact: its sentence, a question it answers, and a question of the same form it does not. */
interface Fact {
  sentence: string;
  question: string;
  expected: string;
  kind: AnswerKind;
  /** The same question about an entity the document never mentions, and that entity. */
  absent: string;
  missing: string;
}

type Entities = {
  person: () => string; org: () => string; city: () => string; project: () => string; item: () => string;
  /** How many values are drawn so far, and giving back those drawn since. */
  mark: () => number; release: (mark: number) => void;
};

const FACTS: Array<(rand: Rand, e: Entities) => Fact> = [
  (rand, e) => {
    const [p, o, y, other] = [e.person(), e.org(), String(int(rand, 1951, 2019)), e.org()];
    return { sentence: `${p} founded ${o} in ${y}.`, question: `In what year did ${p} found ${o}?`, expected: y, kind: 'year',
      absent: `In what year did ${p} found ${other}?`, missing: other };
  },
  (rand, e) => {
    const [o, c, n, other] = [e.org(), e.city(), String(int(rand, 12, 4800)), e.city()];
    return { sentence: `${o} employs ${n} people at its office in ${c}.`, question: `How many people does ${o} employ in ${c}?`,
      expected: n, kind: 'number', absent: `How many people does ${o} employ in ${other}?`, missing: other };
  },
  (rand, e) => {
    const [i, c, n, other] = [e.item(), e.city(), String(int(rand, 40, 9900)), e.item()];
    return { sentence: `The shipment of ${i} to ${c} weighed ${n} kilograms.`, question: `How many kilograms did the shipment of ${i} to ${c} weigh?`,
      expected: n, kind: 'number', absent: `How many kilograms did the shipment of ${other} to ${c} weigh?`, missing: other };
  },
  (_rand, e) => {
    const [p, c, other] = [e.person(), e.city(), e.person()];
    return { sentence: `${p} was born in ${c}.`, question: `In which city was ${p} born?`, expected: c, kind: 'city',
      absent: `In which city was ${other} born?`, missing: other };
  },
  (_rand, e) => {
    const [p, j, other] = [e.person(), e.project(), e.project()];
    return { sentence: `${p} leads the ${j} project.`, question: `Who leads the ${j} project?`, expected: p, kind: 'name',
      absent: `Who leads the ${other} project?`, missing: other };
  },
  (rand, e) => {
    const [p, n, other] = [e.person(), String(int(rand, 2, 97)), e.person()];
    return { sentence: `${p} has visited ${n} countries.`, question: `How many countries has ${p} visited?`, expected: n, kind: 'number',
      absent: `How many countries has ${other} visited?`, missing: other };
  },
  (rand, e) => {
    const [j, y, other] = [e.project(), String(int(rand, 1990, 2030)), e.project()];
    return { sentence: `The ${j} project is due to finish in ${y}.`, question: `In what year is the ${j} project due to finish?`,
      expected: y, kind: 'year', absent: `In what year is the ${other} project due to finish?`, missing: other };
  },
];

/**
 * One fact. Small pools (organizations, projects) run out in long documents:
 * a form that cannot be filled falls back to others. The first tries are the
 * original ones (a random form each time, names drawn kept), so every
 * document they could make is the same as before and benchmark runs stay
 * comparable; only where all of those failed, the drawn names are given back
 * and every form is tried in turn.
 */
function nextFact(rand: Rand, e: Entities, seed: number, sentences: number): Fact {
  const mark = e.mark();
  for (let k = 0; k < FACTS.length; k++) {
    try {
      return FACTS[(Math.floor(rand() * FACTS.length) + k) % FACTS.length](rand, e);
    } catch {
      // the next form
    }
  }
  e.release(mark);
  let last: unknown;
  for (const form of FACTS) {
    const before = e.mark();
    try {
      return form(rand, e);
    } catch (err) {
      e.release(before);
      last = err;
    }
  }
  throw new Error(`minion workload: seed ${seed} gives no document of ${sentences} sentences (${(last as Error).message})`);
}

/** Draws distinct values: each entity appears in at most one fact, so every question has one right answer. */
function entities(rand: Rand): Entities {
  const used = new Set<string>();
  const drawn: string[] = [];
  const fresh = (make: () => string) => () => {
    for (let i = 0; i < 1000; i++) {
      const v = make();
      if (!used.has(v)) {
        used.add(v);
        drawn.push(v);
        return v;
      }
    }
    throw new Error('minion workload: ran out of distinct names');
  };
  return {
    mark: () => drawn.length,
    release: (mark) => {
      for (const v of drawn.splice(mark)) used.delete(v);
    },
    person: fresh(() => `${pick(rand, FIRST)} ${pick(rand, LAST)}`),
    org: fresh(() => pick(rand, ORGS)),
    city: fresh(() => pick(rand, CITIES)),
    project: fresh(() => pick(rand, PROJECTS)),
    item: fresh(() => pick(rand, ITEMS)),
  };
}

/**
 * A document of `sentences` facts and `questions` questions about it, the
 * same for the same arguments. About one question in four asks about
 * something absent; the rest cycle through the facts.
 */
export function minionDocument(seed: number, sentences: number, questions: number): MinionDocument {
  if (!Number.isInteger(sentences) || sentences < 1) throw new Error(`minion workload: sentences must be a positive integer, not ${sentences}`);
  if (!Number.isInteger(questions) || questions < 1) throw new Error(`minion workload: questions must be a positive integer, not ${questions}`);
  const rand = mulberry32(seed * 1_000_003 + sentences);
  const e = entities(rand);
  const facts: Fact[] = [];
  for (let i = 0; i < sentences; i++) facts.push(nextFact(rand, e, seed, sentences));
  const qrand = mulberry32(seed * 7919 + questions);
  const order = facts.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(qrand() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  const out: MinionQuestion[] = [];
  for (let q = 0; q < questions; q++) {
    const fact = facts[order[q % order.length]];
    out.push(q % 4 === 3 ? { question: fact.absent, expected: null, kind: fact.kind, missing: fact.missing } : { question: fact.question, expected: fact.expected, kind: fact.kind });
  }
  const lines = facts.map((f) => f.sentence);
  return { seed, sentences: lines, text: lines.join(' '), questions: dedupe(out) };
}

/** Repeated questions (more questions than facts) get a counter so each is its own job. */
function dedupe(questions: MinionQuestion[]): MinionQuestion[] {
  const seen = new Map<string, number>();
  return questions.map((q) => {
    const n = (seen.get(q.question) ?? 0) + 1;
    seen.set(q.question, n);
    return n === 1 ? q : { ...q, question: `${q.question} (asked again, #${n})` };
  });
}

// Abstentions a small model writes in words instead of null.
const ABSTAINS = /\b(not (found|mentioned|stated|given|specified|provided|in the (document|text|excerpt))|no (information|mention)|does not (say|mention|state|specify)|unknown|cannot be determined)\b/i;

const normalize = (s: string) => s.normalize('NFKD').replace(/[\u0300-\u036f]/g, '').toLowerCase().replace(/[^a-z0-9]+/g, ' ').trim();

/**
 * Scores one answer exactly. null or an abstention means "not found".
 * Numbers and years must appear as a whole number in the answer (thousands
 * separators allowed); names and cities must appear as words.
 */
export function scoreAnswer(q: Pick<MinionQuestion, 'expected' | 'kind'>, answer: string | null | undefined): boolean {
  const text = (answer ?? '').trim();
  const abstains = text === '' || text.toLowerCase() === 'null' || ABSTAINS.test(text);
  if (q.expected === null) return abstains;
  if (abstains && !containsExpected(q, text)) return false;
  return containsExpected(q, text);
}

function containsExpected(q: Pick<MinionQuestion, 'expected' | 'kind'>, text: string): boolean {
  const expected = q.expected!;
  if (q.kind === 'number' || q.kind === 'year') {
    const numbers = (text.match(/\d[\d,]*/g) ?? []).map((n) => n.replace(/,/g, ''));
    return numbers.includes(expected);
  }
  return ` ${normalize(text)} `.includes(` ${normalize(expected)} `);
}
