// The token estimate `ask` cuts chunks by for a server's model (no tokenizer
// at hand): it must not undercount real text of any kind, or chunks overflow
// the server's context. Checked against the default model's BPE tokenizer,
// which spends more tokens on code, CJK and Cyrillic than most.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { estimateTokens } from '../src/ask/backends/token-estimate.js';
import { defaultModelPath } from '../src/engine/engine-session.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { ROOT } from './support/fixtures.js';

let count: (text: string) => number;

before(async () => {
  const tokenizer = await Tokenizer.fromModel(defaultModelPath());
  count = (text) => tokenizer.encode(text, { addSpecialTokens: false }).length;
});

/** A deterministic stream of picks, so the generated texts never change. */
function picker(seed: number) {
  return (alphabet: string, n: number) => Array.from({ length: n }, () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return alphabet[Math.floor((seed / 2147483648) * alphabet.length)];
  }).join('');
}

const pick = picker(7);
const TEXTS: Record<string, string> = {
  'TypeScript': fs.readFileSync(path.join(ROOT, 'src/ask/pipeline.ts'), 'utf8'),
  'C++': fs.readFileSync(path.join(ROOT, 'native/src/cpu_qmatmul.cpp'), 'utf8').slice(0, 30_000),
  'Markdown with tables': fs.readFileSync(path.join(ROOT, 'bench/results/minions.md'), 'utf8'),
  'Python': fs.readFileSync(path.join(ROOT, 'test/fixtures/ask/docs/billing.py'), 'utf8'),
  'YAML': fs.readFileSync(path.join(ROOT, 'test/fixtures/ask/docs/config.yaml'), 'utf8'),
  'Chinese': '项目的首席维护者是达娜·奥卡福。请求超时时间为四十五秒。配置文件位于根目录中，请在部署前检查所有设置。\n'.repeat(40),
  'Japanese': 'このプロジェクトの主なメンテナーはダナ・オカフォーです。リクエストのタイムアウトは四十五秒です。\n'.repeat(40),
  'Korean': '프로젝트의 주요 관리자는 다나 오카포입니다. 요청 시간 제한은 45초입니다.\n'.repeat(40),
  'Russian': 'Ведущий разработчик проекта — Дана Окафор; время ожидания запроса составляет 45 секунд.\n'.repeat(40),
  'Arabic': 'المشرف الرئيسي على المشروع هو دانا أوكافور. مهلة الطلب هي خمس وأربعون ثانية.\n'.repeat(40),
  'hex': Array.from({ length: 60 }, () => pick('0123456789abcdef', 64)).join('\n'),
  'rare CJK characters': Array.from({ length: 60 }, () => pick(String.fromCharCode(...Array.from({ length: 2000 }, (_, i) => 0x4e00 + i * 9)), 30)).join('\n'),
  'numbers': Array.from({ length: 300 }, () => pick('0123456789', 12)).join(', '),
  'random lowercase ids': Array.from({ length: 200 }, () => `id_${pick('abcdefghijklmnopqrstuvwxyz', 16)}`).join('\n'),
  'lowercase base64url': Array.from({ length: 60 }, () => pick('abcdefghijklmnopqrstuvwxyz0123456789-_', 64)).join('\n'),
  'minified JavaScript': 'function(a,b){return a.map(function(c){return c*b+1})}var x={a:1,b:[2,3],c:"d"};'.repeat(100),
};

describe('estimateTokens', () => {
  for (const [kind, text] of Object.entries(TEXTS)) {
    test(`${kind}: at least the real count, and not far over it`, () => {
      const real = count(text);
      const estimate = estimateTokens(text);
      assert.ok(estimate >= real, `${kind}: estimated ${estimate} tokens, the tokenizer counts ${real}`);
      assert.ok(estimate <= 1.8 * real, `${kind}: estimated ${estimate} tokens, over 1.8x the tokenizer's ${real}: chunks needlessly small`);
    });
  }

  test('empty text is no tokens', () => assert.equal(estimateTokens(''), 0));
});
