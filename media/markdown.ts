// Model answers are Markdown written by a language model over untrusted files:
// treat them as hostile. They are rendered the way VS Code's notebook Markdown
// renderer does it: markdown-it with raw HTML off (so `<img onerror=...>` in an
// answer comes out as text), then DOMPurify with a small allow-list of tags and
// no attributes but `href`, which must be http(s). Shared by the webview
// (media/results.ts) and the tests, which pass a DOMPurify made over a jsdom
// window.
import MarkdownIt from 'markdown-it';
import type { DOMPurify, Config } from 'dompurify';

const md = new MarkdownIt({ html: false, linkify: false, typographer: false, breaks: false });

/** The only elements an answer may contain. No img, no forms, no media, no style. */
export const ALLOWED_TAGS: readonly string[] = [
  'p', 'br', 'hr', 'em', 'strong', 's', 'del', 'code', 'pre', 'ul', 'ol', 'li', 'blockquote', 'a',
  'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'table', 'thead', 'tbody', 'tr', 'th', 'td',
];

/** Only absolute http(s) links survive; javascript:, data:, file:, command: and relative ones lose their href. */
const SAFE_URL = /^https?:\/\//i;

const CONFIG: Config = {
  ALLOWED_TAGS: [...ALLOWED_TAGS],
  ALLOWED_ATTR: ['href'],
  ALLOWED_URI_REGEXP: SAFE_URL,
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  ALLOW_UNKNOWN_PROTOCOLS: false,
  KEEP_CONTENT: true,
  RETURN_DOM: false,
  RETURN_DOM_FRAGMENT: false,
  RETURN_TRUSTED_TYPE: false,
};

const hooked = new WeakSet<DOMPurify>();

function installHooks(purify: DOMPurify): void {
  if (hooked.has(purify)) return;
  hooked.add(purify);
  purify.addHook('afterSanitizeAttributes', (node) => {
    if (node.nodeName !== 'A') return;
    const a = node as Element;
    const href = a.getAttribute('href');
    if (href !== null && !SAFE_URL.test(href.trim())) a.removeAttribute('href');
    if (a.hasAttribute('href')) a.setAttribute('rel', 'noopener noreferrer');
  });
}

/** Markdown -> sanitized HTML, safe to assign to innerHTML. */
export function renderAnswerHtml(markdown: string, purify: DOMPurify): string {
  installHooks(purify);
  const html = md.render(markdown);
  return purify.sanitize(html, CONFIG) as unknown as string;
}
