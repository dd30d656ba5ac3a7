// media/markdown.ts: model answers rendered as Markdown must never put the
// model's raw HTML, scripts, event handlers or javascript: links into the DOM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { JSDOM } from 'jsdom';
import createDOMPurify from 'dompurify';
import { ALLOWED_TAGS, renderAnswerHtml } from '../media/markdown.js';

const { window } = new JSDOM('<!doctype html><html><body></body></html>');
const purify = createDOMPurify(window as unknown as Parameters<typeof createDOMPurify>[0]);

/** Renders into a fresh container, the way the webview does. */
function render(markdown: string): HTMLElement {
  const div = window.document.createElement('div');
  div.innerHTML = renderAnswerHtml(markdown, purify);
  return div;
}

function assertOnlyAllowedMarkup(div: HTMLElement): void {
  for (const e of div.querySelectorAll('*')) {
    assert.ok(ALLOWED_TAGS.includes(e.tagName.toLowerCase()), `unexpected <${e.tagName.toLowerCase()}>`);
    for (const a of e.getAttributeNames()) {
      assert.ok(a === 'href' || (a === 'rel' && e.tagName === 'A'), `unexpected attribute ${a} on <${e.tagName.toLowerCase()}>`);
    }
  }
}

test('a <script> in the answer never becomes an element', () => {
  const div = render('Here:\n\n<script>alert(1)</script>\n\nand inline <script>alert(2)</script> too');
  assert.equal(div.querySelector('script'), null);
  assert.match(div.textContent ?? '', /<script>alert\(1\)<\/script>/, 'it stays visible as text');
  assertOnlyAllowedMarkup(div);
});

test('<img onerror> yields no img and no handler', () => {
  const div = render('Look <img src=x onerror=alert(1)> here\n\n<img src=x onerror=alert(1)>\n\n![x](https://example.com/x.png)');
  assert.equal(div.querySelector('img'), null);
  assert.equal(div.querySelector('[onerror]'), null);
  assert.ok(!div.innerHTML.includes('<img'), div.innerHTML);
  assertOnlyAllowedMarkup(div);
});

test('javascript:, data: and relative links lose their href; http(s) links keep it with rel=noopener', () => {
  const div = render(
    '[a](javascript:alert(1)) [b](JaVaScRiPt:alert(1)) [c](data:text/html;base64,PHNjcmlwdD4=) [d](/etc/passwd) [e](command:workbench.action.quit) [f](ftp://example.com/x) [g](mailto:a@example.com) [ok](https://example.com/x?y=1) [ok2](http://example.org)',
  );
  const links = [...div.querySelectorAll('a')];
  const hrefs = links.map((a) => a.getAttribute('href'));
  for (const h of hrefs) if (h !== null) assert.match(h, /^https?:\/\//, `unsafe href kept: ${h}`);
  assert.ok(hrefs.includes('https://example.com/x?y=1'));
  assert.ok(hrefs.includes('http://example.org'));
  for (const a of links) if (a.hasAttribute('href')) assert.match(a.getAttribute('rel') ?? '', /noopener/);
  for (const e of div.querySelectorAll('*')) {
    for (const a of e.getAttributeNames()) assert.doesNotMatch(e.getAttribute(a) ?? '', /javascript:|data:|command:/i);
  }
  assert.equal(links.filter((a) => a.hasAttribute('href')).length, 2, div.innerHTML);
  assertOnlyAllowedMarkup(div);
});

test('bold, code, lists, code blocks and quotes render', () => {
  const div = render('Some **bold** and *em* and `x < y`.\n\n- one\n- two\n\n1. first\n2. second\n\n```js\nlet a = "<b>";\n```\n\n> quoted');
  assert.equal(div.querySelector('strong')?.textContent, 'bold');
  assert.equal(div.querySelector('em')?.textContent, 'em');
  assert.equal(div.querySelector('p > code')?.textContent, 'x < y');
  assert.deepEqual([...div.querySelectorAll('ul > li')].map((li) => li.textContent), ['one', 'two']);
  assert.deepEqual([...div.querySelectorAll('ol > li')].map((li) => li.textContent), ['first', 'second']);
  assert.equal(div.querySelector('pre > code')?.textContent, 'let a = "<b>";\n');
  assert.equal(div.querySelector('pre b'), null);
  assert.equal(div.querySelector('blockquote p')?.textContent, 'quoted');
  assertOnlyAllowedMarkup(div);
});

test('raw HTML in Markdown is escaped text, not elements', () => {
  const html = '<div onclick="x()"><b>hi</b><iframe src="https://evil.example"></iframe><style>body{display:none}</style><a href="javascript:1">x</a><svg onload=alert(1)></svg><form><input></form></div>';
  const div = render(`Text ${html}\n\n${html}`);
  for (const tag of ['div', 'b', 'iframe', 'style', 'svg', 'form', 'input']) {
    assert.equal(div.querySelector(tag), null, `<${tag}> was created`);
  }
  assert.equal(div.querySelector('a'), null);
  assert.ok((div.textContent ?? '').includes('<b>hi</b>'), 'the markup is shown as text');
  assertOnlyAllowedMarkup(div);
});

test('the same purifier can be used many times (hooks are installed once)', () => {
  for (let i = 0; i < 3; i++) {
    const div = render('[ok](https://example.com)');
    assert.equal(div.querySelector('a')?.getAttribute('rel'), 'noopener noreferrer');
    assert.equal(div.querySelectorAll('a').length, 1);
  }
});

test('empty and plain text answers', () => {
  assert.equal(render('').innerHTML, '');
  assert.equal(render('just text').innerHTML.trim(), '<p>just text</p>');
});
