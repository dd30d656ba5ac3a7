// Parsing a job's reply (src/ask/prompt.ts) and turning finished jobs into the
// report and its Markdown (src/ask/aggregate.ts). Pure functions, no model.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { buildReport, markdownText, renderMarkdown, type ReportInput } from '../src/ask/aggregate.js';
import { judgeAnswer } from '../src/ask/pipeline.js';
import { extractJsonObject, jobMessages, parseAnswer, PROMPT_VARIANTS } from '../src/ask/prompt.js';
import { JOB_STATES, type JobResult, type JobState } from '../src/ask/report.js';

describe('extractJsonObject', () => {
  test('a reply that is one object is returned whole', () => {
    const text = '{"explanation":"x","citation":"y","answer":"z"}';
    assert.equal(extractJsonObject(text), text);
  });

  test('the first balanced object is found inside prose and code fences', () => {
    const obj = '{"explanation":"The port is set.","citation":"port: 7421","answer":"7421"}';
    assert.equal(extractJsonObject(`Sure! Here is the answer:\n${obj}\nHope this helps.`), obj);
    assert.equal(extractJsonObject(`\`\`\`json\n${obj}\n\`\`\``), obj);
    assert.equal(extractJsonObject(`\`\`\`\n${obj}\n\`\`\`\nand then {"another": 1}`), obj);
  });

  test('nested objects, and braces and escaped quotes inside strings, do not end it early', () => {
    const obj = '{"a":{"b":{"c":1}},"s":"a } in a string, a \\" quote and a \\\\","t":"{"}';
    assert.equal(extractJsonObject(`x ${obj} y`), obj);
    assert.deepEqual(JSON.parse(extractJsonObject(obj)!), JSON.parse(obj));
  });

  test('no object: undefined', () => {
    assert.equal(extractJsonObject(''), undefined);
    assert.equal(extractJsonObject('The answer is 42.'), undefined);
    assert.equal(extractJsonObject('{"answer": "cut off'), undefined);
    assert.equal(extractJsonObject('{"a": {"b": 1}'), undefined);
  });
});

describe('parseAnswer', () => {
  test('a valid reply: fields trimmed', () => {
    assert.deepEqual(parseAnswer('{"explanation":" The port. ","citation":"port: 7421 ","answer":" 7421"}'), {
      explanation: 'The port.',
      citation: 'port: 7421',
      answer: '7421',
    });
  });

  test('JSON wrapped in prose or fences parses', () => {
    const expected = { explanation: 'It is set.', citation: 'retries: 3', answer: '3' };
    assert.deepEqual(parseAnswer('Here you go: {"explanation":"It is set.","citation":"retries: 3","answer":"3"} Done.'), expected);
    assert.deepEqual(parseAnswer('```json\n{"explanation":"It is set.","citation":"retries: 3","answer":"3"}\n```'), expected);
  });

  test('answer null, missing explanation / citation: not found with empty strings', () => {
    assert.deepEqual(parseAnswer('{"explanation":"Nothing about it.","citation":"","answer":null}'),
      { explanation: 'Nothing about it.', citation: '', answer: null });
    assert.deepEqual(parseAnswer('{"explanation":null,"answer":null}'), { explanation: '', citation: '', answer: null });
  });

  test('an empty answer and abstentions written out in words are null', () => {
    const abstentions = [
      '', '   ', 'null', 'None', 'N/A', 'n/a', 'NA', 'unknown', 'Unknown.',
      'Not mentioned in the excerpt.', 'Not found', 'not specified in this file', 'Not stated.', 'Not given.', 'Not provided',
      'The excerpt does not mention it.', 'The file does not say.', 'Text does not contain the answer',
      'The document does not specify a date.', 'No information.', 'No answer',
    ];
    for (const a of abstentions) {
      assert.equal(parseAnswer(JSON.stringify({ explanation: 'e', citation: '', answer: a })).answer, null, JSON.stringify(a));
    }
  });

  test('real answers that merely start like an abstention are kept', () => {
    for (const a of ['Nothing else', 'Nonexistent pool', 'Notes folder', 'No. 7 road', '2.5 percent', 'Dana Okafor', '0', 'false']) {
      assert.equal(parseAnswer(JSON.stringify({ explanation: 'e', citation: 'c', answer: a })).answer, a, JSON.stringify(a));
    }
  });

  test('a non-string answer throws with the reason', () => {
    for (const answer of [7421, true, ['a'], { v: 1 }]) {
      assert.throws(() => parseAnswer(JSON.stringify({ explanation: 'e', citation: 'c', answer })), /"answer" is neither a string nor null/);
    }
  });

  test('a non-string explanation or citation throws naming the field', () => {
    assert.throws(() => parseAnswer('{"explanation":3,"citation":"c","answer":"a"}'), /"explanation" is not a string/);
    assert.throws(() => parseAnswer('{"explanation":"e","citation":["c"],"answer":"a"}'), /"citation" is not a string/);
  });

  test('not JSON throws, quoting the reply', () => {
    assert.throws(() => parseAnswer('The answer is 7421.'), /not a JSON object: "The answer is 7421\."/);
    assert.throws(() => parseAnswer(''), /not a JSON object/);
    assert.throws(() => parseAnswer('{"answer": "cut off'), /not a JSON object/);
    assert.throws(() => parseAnswer("{'answer': 'single quotes'}"), /not valid JSON \(/);
    assert.throws(() => parseAnswer('{"answer": 7421,}'), /not valid JSON/);
  });

  test('the quoted reply is shortened to a preview', () => {
    const long = 'word '.repeat(200);
    assert.throws(() => parseAnswer(long), (e: Error) => e.message.length < 200 && e.message.includes('…'));
  });
});

// ---------------------------------------------------------------------------
// Report

let nextId = 0;
function job(question: number, file: string, startLine: number, state: JobState, extra: Partial<JobResult> = {}): { question: number; result: JobResult } {
  const endLine = startLine + 9;
  const found = state === 'found';
  return {
    question,
    result: {
      id: `q${question}:${file}:${startLine}-${endLine}#${nextId++}`,
      file,
      start_line: startLine,
      end_line: endLine,
      state,
      answer: found ? `answer in ${file}` : null,
      explanation: found || state === 'not_found' ? `explained ${file}` : null,
      citation: found ? { start_line: startLine + 1, end_line: startLine + 1, quote: `quote from ${file}` } : null,
      verified: found,
      error: state === 'error' ? 'the reply is not a JSON object: "oops"' : state === 'truncated' ? 'the answer did not end' : state === 'cancelled' ? 'cancelled' : null,
      prompt_tokens: 100,
      cached_tokens: 40,
      generated_tokens: 20,
      attempts: state === 'truncated' ? 2 : 1,
      seconds: 0.5,
      ...extra,
    },
  };
}

function unverified(question: number, file: string, startLine: number) {
  return job(question, file, startLine, 'found', {
    verified: false,
    answer: `invented in ${file}`,
    citation: { start_line: null, end_line: null, quote: 'a quote that is not in the file' },
  });
}

/** Every state over 2 questions, given out of order. */
function input(): ReportInput {
  const results = [
    job(0, 'src/b.ts', 1, 'cancelled'),
    job(0, 'src/b.ts', 11, 'not_found'),
    unverified(0, 'src/b.ts', 21),
    job(0, 'src/a.ts', 21, 'error'),
    job(0, 'src/b.ts', 1, 'found'),
    job(0, 'docs/z.md', 1, 'truncated'),
    job(0, 'src/a.ts', 11, 'found'),
    job(0, 'src/a.ts', 1, 'not_found'),
    unverified(0, 'docs/z.md', 1),
    job(0, 'src/a.ts', 1, 'found'),
    job(0, 'docs/z.md', 11, 'error'),
    job(0, 'docs/z.md', 11, 'cancelled'),
    job(1, 'src/a.ts', 1, 'not_found'),
    job(1, 'src/b.ts', 1, 'error'),
    unverified(1, 'src/a.ts', 11),
    job(1, 'docs/z.md', 1, 'found'),
    job(1, 'src/b.ts', 11, 'truncated'),
    job(1, 'src/a.ts', 11, 'cancelled'),
  ];
  return {
    model: '/models/m.gguf',
    backend: 'built-in engine',
    questions: ['Where is the port set?', 'Who maintains it?'],
    results,
    summaries: [null, 'Dana maintains it (docs/z.md:2-2).'],
    skipped: [
      { file: 'logo.png', reason: 'binary (NUL byte)' },
      { file: 'big.log', reason: 'too large: 2.0 MiB (limit 1.0 MiB)' },
    ],
    files: 3,
    chunks: 6,
    synthesis: { prompt: 0, cached: 0, generated: 0 },
    wallSeconds: 12,
    pipelineSeconds: 0.01234,
    cancelled: true,
  };
}

const RANK: Record<JobState, number> = { found: 0, not_found: 2, truncated: 3, error: 4, cancelled: 5 };
const rank = (r: JobResult) => RANK[r.state] + (r.state === 'found' && !r.verified ? 1 : 0);

describe('buildReport', () => {
  test('the states add up to the jobs; counts and totals', () => {
    const report = buildReport(input());
    const all = report.questions.flatMap((q) => q.results);
    assert.equal(report.totals.jobs, 18);
    assert.equal(all.length, 18);
    assert.deepEqual(Object.keys(report.totals.states).sort(), [...JOB_STATES].sort());
    assert.equal(Object.values(report.totals.states).reduce((a, b) => a + b, 0), report.totals.jobs);
    assert.deepEqual(report.totals.states, { found: 7, not_found: 3, truncated: 2, error: 3, cancelled: 3 });
    for (const s of JOB_STATES) assert.equal(report.totals.states[s], all.filter((r) => r.state === s).length, s);
    assert.equal(report.totals.found_unverified, 3);
    assert.equal(report.totals.files, 3);
    assert.equal(report.totals.chunks, 6);
    assert.equal(report.totals.prompt_tokens, 1800);
    assert.equal(report.totals.cached_tokens, 720);
    assert.equal(report.totals.prefilled_tokens, 1080, 'prefilled = prompt - cached');
    assert.equal(report.totals.generated_tokens, 360);
    assert.equal(report.totals.tokens_per_second, 30, 'generated / wall');
    assert.equal(report.totals.wall_seconds, 12);
    assert.equal(report.totals.pipeline_seconds, 0.0123);
    assert.equal(report.cancelled, true);
    assert.equal(report.version, 1);
    assert.ok(!Number.isNaN(Date.parse(report.created)));
    assert.equal(report.model, '/models/m.gguf');
    assert.equal(report.backend, 'built-in engine');
  });

  test('results are grouped by question, each once', () => {
    const inp = input();
    const report = buildReport(inp);
    assert.deepEqual(report.questions.map((q) => q.question), inp.questions);
    assert.deepEqual(report.questions.map((q) => q.results.length), [12, 6]);
    assert.deepEqual(report.questions.map((q) => q.summary), [null, 'Dana maintains it (docs/z.md:2-2).']);
    for (const [i, q] of report.questions.entries()) {
      const ids = q.results.map((r) => r.id).sort();
      assert.deepEqual(ids, inp.results.filter((r) => r.question === i).map((r) => r.result.id).sort());
    }
  });

  test('verified found, unverified found, not found, truncated, error, cancelled; each by file then line', () => {
    for (const q of buildReport(input()).questions) {
      for (let i = 1; i < q.results.length; i++) {
        const a = q.results[i - 1];
        const b = q.results[i];
        const where = `${q.question}: ${a.id} before ${b.id}`;
        assert.ok(rank(a) <= rank(b), where);
        if (rank(a) === rank(b)) {
          assert.ok(a.file < b.file || (a.file === b.file && a.start_line <= b.start_line), where);
        }
      }
    }
    const q0 = buildReport(input()).questions[0].results;
    assert.deepEqual(q0.map((r) => `${r.state}${r.state === 'found' && !r.verified ? '?' : ''} ${r.file}:${r.start_line}`), [
      'found src/a.ts:1', 'found src/a.ts:11', 'found src/b.ts:1',
      'found? docs/z.md:1', 'found? src/b.ts:21',
      'not_found src/a.ts:1', 'not_found src/b.ts:11',
      'truncated docs/z.md:1',
      'error docs/z.md:11', 'error src/a.ts:21',
      'cancelled docs/z.md:11', 'cancelled src/b.ts:1',
    ]);
  });

  test('skipped files are sorted by path; no wall time gives 0 tok/s', () => {
    const report = buildReport({ ...input(), wallSeconds: 0 });
    assert.deepEqual(report.skipped.map((s) => s.file), ['big.log', 'logo.png']);
    assert.equal(report.totals.tokens_per_second, 0);
  });

  test('no jobs: all counts zero', () => {
    const report = buildReport({ ...input(), results: [], files: 0, chunks: 0, synthesis: { prompt: 0, cached: 0, generated: 0 }, cancelled: false });
    assert.equal(report.totals.jobs, 0);
    assert.deepEqual(report.totals.states, { found: 0, not_found: 0, truncated: 0, error: 0, cancelled: 0 });
    assert.deepEqual(report.questions.map((q) => q.results), [[], []]);
  });
});

/** A found item: `- <file#lines>: <answer>`, the location bold or a link to itself. */
function item(anchor: string, answer: string): RegExp {
  const esc = (x: string) => x.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  return new RegExp(`^- (?:\\*\\*${esc(anchor)}\\*\\*|\\[${esc(anchor)}\\]\\(${esc(encodeURI(anchor))}\\)): ${esc(answer)}$`, 'm');
}

describe('renderMarkdown', () => {
  const md = renderMarkdown(buildReport(input()));
  /** The text of section `## heading` up to the next `## `. */
  const section = (heading: string) => {
    const start = md.indexOf(`## ${heading}\n`);
    assert.ok(start >= 0, `no section ${heading}:\n${md}`);
    const end = md.indexOf('\n## ', start + 1);
    return md.slice(start, end < 0 ? undefined : end);
  };

  test('one section per question, skipped files and totals', () => {
    assert.match(md, /^# Ask report\n/);
    const headings = md.split('\n').filter((l) => l.startsWith('## '));
    assert.deepEqual(headings, ['## Where is the port set?', '## Who maintains it?', '## Skipped files', '## Totals']);
  });

  test('verified answers under "Found in", unverified ones in their own part after them', () => {
    const q0 = section('Where is the port set?');
    const found = q0.indexOf('**Found in**');
    const unverifiedAt = q0.indexOf('**Unverified**');
    assert.ok(found >= 0 && unverifiedAt > found, q0);
    const foundPart = q0.slice(found, unverifiedAt);
    const unverifiedPart = q0.slice(unverifiedAt, q0.indexOf('**Not found in:**'));
    assert.match(foundPart, item('src/a.ts#L2', 'answer in src/a.ts'), 'a verified answer cites its quote\'s line');
    assert.match(foundPart, item('src/b.ts#L2', 'answer in src/b.ts'));
    assert.match(foundPart, /> quote from src\/a\.ts/);
    assert.doesNotMatch(foundPart, /invented/);
    assert.match(unverifiedPart, item('docs/z.md#L1-L10', 'invented in docs/z.md'), 'an unverified answer cites its chunk');
    assert.match(unverifiedPart, item('src/b.ts#L21-L30', 'invented in src/b.ts'));
    assert.match(unverifiedPart, /> a quote that is not in the file/);
  });

  test('not found, and truncated / error / cancelled with their reasons', () => {
    const q0 = section('Where is the port set?');
    assert.match(q0, /\*\*Not found in:\*\* src\/a\.ts#L1-L10, src\/b\.ts#L11-L20/);
    assert.match(q0, /\*\*Not answered\*\*/);
    assert.match(q0, /- docs\/z\.md#L1-L10: truncated: the answer did not end/);
    assert.match(q0, /- src\/a\.ts#L21-L30: error: the reply is not a JSON object/);
    assert.match(q0, /- src\/b\.ts#L1-L10: cancelled/);
  });

  test('a summary is shown under its question', () => {
    assert.match(section('Who maintains it?'), /Dana maintains it \(docs\/z\.md:2-2\)\./);
  });

  test('skipped files with their reasons', () => {
    const skipped = section('Skipped files');
    assert.match(skipped, /- big\.log: too large: 2\.0 MiB \(limit 1\.0 MiB\)/);
    assert.match(skipped, /- logo\.png: binary \(NUL byte\)/);
  });

  test('totals', () => {
    const totals = section('Totals');
    assert.match(totals, /- jobs: 18 \(found 7, not found 3, truncated 2, error 3, cancelled 3; 3 found unverified\), run cancelled/);
    assert.match(totals, /- files: 3 in 6 chunks, 2 skipped/);
    assert.match(totals, /- prompt tokens: 1800 \(1080 prefilled, 720 reused\)/);
    assert.match(totals, /- generated tokens: 360, 30 tok\/s/);
    assert.match(totals, /- model: \/models\/m\.gguf \(built-in engine\)/);
  });

  test('a question with no found answer says so', () => {
    const report = buildReport({ ...input(), results: [job(0, 'a.md', 1, 'not_found'), job(1, 'a.md', 1, 'error')], skipped: [], cancelled: false });
    const text = renderMarkdown(report);
    assert.equal(text.match(/Not found in any file\./g)?.length, 2);
    assert.doesNotMatch(text, /## Skipped files/);
    assert.doesNotMatch(text, /run cancelled/);
  });
});

describe('judgeAnswer: a reply against its chunk', () => {
  const chunk = { text: 'config:\n  retries = 3\n  timeout = None\n  owner = "N/A"\n  retry_policy = Done\n', startLine: 10 };
  const base = job(0, 'settings.py', 10, 'cancelled').result;
  const judge = (reply: object) => judgeAnswer(base, chunk, JSON.stringify(reply));

  test('"None" backed by a located quote that holds it is the answer, verified', () => {
    const r = judge({ explanation: 'It is unset.', citation: 'timeout = None', answer: 'None' });
    assert.equal(r.state, 'found');
    assert.equal(r.answer, 'None');
    assert.equal(r.verified, true);
    assert.deepEqual([r.citation?.start_line, r.citation?.end_line], [12, 12]);
    assert.equal(judge({ citation: 'owner = "N/A"', answer: 'N/A.' }).answer, 'N/A.');
  });

  test('an abstention whose quote does not hold those words, is not located, or is missing is not found', () => {
    for (const reply of [
      { citation: 'retries = 3', answer: 'None' },
      { citation: 'timeout = None', answer: 'Not mentioned in the excerpt.' },
      { citation: 'timeout = Nonesuch', answer: 'None' },
      { citation: 'deadline = None', answer: 'None' },
      { citation: '', answer: 'None' },
      { citation: 'timeout = None', answer: null },
      { citation: 'retry_policy = None', answer: 'None' }, // a near match: the file says Done
    ]) {
      const r = judge(reply);
      assert.equal(r.state, 'not_found', JSON.stringify(reply));
      assert.equal(r.answer, null);
    }
  });

  test('a found answer without a quote is unverified with no citation', () => {
    const r = judge({ citation: '', answer: '3' });
    assert.equal(r.state, 'found');
    assert.equal(r.verified, false);
    assert.equal(r.citation, null);
    assert.match(renderMarkdown(buildReport({ ...input(), results: [{ question: 0, result: r }] })), /#L10-L19\): 3\n {2}- \(no quote given\)\n/);
  });
});

describe('renderMarkdown: paths that Markdown would misread', () => {
  test('brackets, parentheses, # and ? in a path keep the link whole and its anchor the cited lines', () => {
    const weird = job(0, 'docs/a (copy)]#1?.md', 1, 'found').result;
    const md = renderMarkdown(buildReport({ ...input(), results: [{ question: 0, result: weird }] }));
    assert.match(md, /^- \[docs\/a \(copy\)\\\]#1\?\.md#L2\]\(docs\/a%20%28copy%29%5D%231%3F\.md#L2\): answer in /m);
  });

  test('answers, quotes and paths keep their characters: no emphasis, HTML or links of their own', () => {
    assert.equal(markdownText('pkg/__init__.py'), 'pkg/\\_\\_init\\_\\_.py');
    assert.equal(markdownText('max_retries = 2 * 3'), 'max_retries = 2 \\* 3');
    assert.equal(markdownText('Promise<Config> [x] `y`'), 'Promise\\<Config\\> \\[x\\] \\`y\\`');
    assert.equal(markdownText('C:\\temp\n  next'), 'C:\\\\temp next');
    assert.equal(markdownText('Tom &amp; Jerry && co'), 'Tom \\&amp; Jerry && co');
    const r = job(0, 'pkg/__init__.py', 1, 'found', { answer: 'Promise<Config>', citation: { start_line: 2, end_line: 2, quote: '<script src="main.js">' } }).result;
    const md = renderMarkdown(buildReport({ ...input(), results: [{ question: 0, result: r }] }));
    assert.match(md, /^- \[pkg\/\\_\\_init\\_\\_\.py#L2\]\(pkg\/__init__\.py#L2\): Promise\\<Config\\>$/m);
    assert.match(md, /^ {2}- > \\<script src="main\.js"\\>$/m);
  });

  test('with a link base, links open the files from the report\'s folder', () => {
    const md = renderMarkdown(buildReport(input()), { linkBase: '..' });
    assert.match(md, /^- \[src\/a\.ts#L2\]\(\.\.\/src\/a\.ts#L2\): answer in src\/a\.ts$/m);
  });
});

describe('replies from servers without constrained output', () => {
  test('prose braces before the JSON are skipped', () => {
    assert.equal(extractJsonObject('Use {name} here: {"answer": "a", "citation": "b"}'), '{"answer": "a", "citation": "b"}');
  });
  test('a JSON object without "answer" is an error, not "not found"', () => {
    assert.throws(() => parseAnswer('{"name": "x"}'), /no "answer"/);
  });
});

test('an answer that only starts like an abstention is kept', () => {
  assert.equal(parseAnswer('{"answer": "Not found errors are retried", "citation": ""}').answer, 'Not found errors are retried');
  assert.equal(parseAnswer('{"answer": "Not mentioned in the excerpt.", "citation": ""}').answer, null);
});

describe('jobMessages', () => {
  test("the fenced prompt's fence outlasts the file's own ``` blocks; plain files keep ```", () => {
    const fenced = PROMPT_VARIANTS.find((v) => v.user('f', 1, 1, 'x', 'q').includes('```'))!;
    const user = (chunk: string) => jobMessages(fenced, 'README.md', 1, 9, chunk, 'Which port?')[1].content;
    assert.equal(user('port = 8080'), 'File: README.md (lines 1-9)\n\n```\nport = 8080\n```\n\nQuestion: Which port?');
    assert.equal(user('Run:\n```sh\nnpm start\n```\nport 8080'), 'File: README.md (lines 1-9)\n\n````\nRun:\n```sh\nnpm start\n```\nport 8080\n````\n\nQuestion: Which port?');
  });
});
