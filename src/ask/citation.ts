// Find the lines a model's quote comes from. Models re-indent, re-wrap and
// slightly misspell what they quote, so matching tolerates whitespace changes
// and a small edit distance, then maps the match back to file lines.

export interface QuoteLocation {
  startLine: number;
  endLine: number;
  exact: boolean;
}

/** Shorter quotes anchor nothing: they would match almost anywhere. */
const MIN_QUOTE_CHARS = 3;
/** Fuzzy matching is O(quote × chunk) at worst; these caps keep it well under a second. */
const MAX_FUZZY_QUOTE = 400;
const MAX_FUZZY_CHUNK = 100_000;

/** Text with whitespace runs collapsed to one space and trimmed; `origin[i]` is where char i was in the original. */
interface Normalized {
  text: string;
  origin: number[];
}

/** A span [start, end) of normalized text. */
interface Span {
  start: number;
  end: number;
}

/**
 * Where `quote` occurs in `chunkText` (whose first line is file line
 * `firstLine`), tolerating whitespace changes and a small edit distance;
 * undefined if not there. A quote that occurs more than once maps to its
 * first occurrence.
 */
export function locateQuote(chunkText: string, firstLine: number, quote: string): QuoteLocation | undefined {
  // One form of each accented letter (composed), in both: a file may hold the other. NFC never touches line breaks.
  chunkText = chunkText.normalize('NFC');
  const wanted = normalize(stripQuoteMarks(quote.normalize('NFC'))).text;
  if (wanted.replace(/ /g, '').length < MIN_QUOTE_CHARS) return undefined;
  const chunk = normalize(chunkText);
  let at = chunk.text.indexOf(wanted);
  while (at >= 0 && splitsNumber(chunk.text, at, at + wanted.length)) at = chunk.text.indexOf(wanted, at + 1);
  if (at >= 0) return toLines(chunkText, firstLine, chunk, { start: at, end: at + wanted.length }, true);
  const span = fuzzySpan(chunk.text, wanted);
  // A near match is a misspelling, never another number: "timeout: 46" does not back "timeout: 45".
  if (!span || splitsNumber(chunk.text, span.start, span.end) || digitsOf(chunk.text.slice(span.start, span.end)) !== digitsOf(wanted)) return undefined;
  return toLines(chunkText, firstLine, chunk, span, false);
}

const isDigit = (c: string | undefined) => c !== undefined && c >= '0' && c <= '9';
const digitsOf = (text: string) => text.replace(/[^0-9]/g, '');

/**
 * Whether [start, end) cuts a number of the text: "timeout: 4" inside
 * "timeout: 45", "45" inside "45.5", "price = 1" inside "1,250". A sentence's
 * full stop after a number ("is 45. Then") is no cut.
 */
function splitsNumber(text: string, start: number, end: number): boolean {
  const joins = (c: string | undefined) => c === '.' || c === ',';
  return (isDigit(text[start]) && (isDigit(text[start - 1]) || (joins(text[start - 1]) && isDigit(text[start - 2])))) ||
    (isDigit(text[end - 1]) && (isDigit(text[end]) || (joins(text[end]) && isDigit(text[end + 1])))) ||
    // The quote's own full stop or comma inside a number: "45." of "45.5", ".5" of "1.5".
    (joins(text[end - 1]) && isDigit(text[end - 2]) && isDigit(text[end])) ||
    (joins(text[start]) && isDigit(text[start + 1]) && isDigit(text[start - 1]));
}

/**
 * Drops quote marks and ellipses a model wraps around a quote (repeatedly:
 * `"...foo..."`), and a leading blockquote, list or heading marker (`> `,
 * `- `, `* `, `# `) it adds: the rest is still in the line if the file has it,
 * and otherwise the marker would pull the match onto the line before.
 */
function stripQuoteMarks(quote: string): string {
  const wrapper = /^(?:\s|["'`“”‘’]|\.\.\.|…)+|(?:\s|["'`“”‘’]|\.\.\.|…)+$/g;
  return quote.replace(wrapper, '').replace(/^(?:[>*#-]+[ \t]+)+/, '').replace(wrapper, '');
}

function normalize(text: string): Normalized {
  const chars: string[] = [];
  const origin: number[] = [];
  let spaceAt = -1; // where the pending whitespace run began
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (/\s/.test(c)) {
      if (spaceAt < 0 && chars.length > 0) spaceAt = i;
      continue;
    }
    if (spaceAt >= 0) {
      chars.push(' ');
      origin.push(spaceAt);
      spaceAt = -1;
    }
    chars.push(c);
    origin.push(i);
  }
  return { text: chars.join(''), origin };
}

/**
 * Best approximate occurrence of `quote` in `text` within the allowed edit
 * distance, case-insensitive. Long quotes are matched by their head (start)
 * and tail (end) so the span still covers the whole quote.
 */
function fuzzySpan(text: string, quote: string): Span | undefined {
  if (text.length > MAX_FUZZY_CHUNK) return undefined;
  const haystack = lowerSameLength(text);
  const needle = lowerSameLength(quote);
  const head = bestMatch(haystack, needle.slice(0, MAX_FUZZY_QUOTE));
  if (!head || needle.length <= MAX_FUZZY_QUOTE) return head && trimSpaces(text, head);
  const rest = haystack.slice(head.start);
  const tail = bestMatch(rest, needle.slice(-MAX_FUZZY_QUOTE));
  const end = tail ? Math.max(head.end, head.start + tail.end) : head.end;
  return trimSpaces(text, { start: head.start, end });
}

/** Lower case char by char, keeping length so positions stay valid (a few chars lower-case to two). */
function lowerSameLength(text: string): string {
  const lower = text.toLowerCase();
  if (lower.length === text.length) return lower;
  return Array.from(text, (c) => (c.toLowerCase().length === c.length ? c.toLowerCase() : c)).join('');
}

/**
 * Sellers' algorithm: edit distance of `pattern` to its best-matching
 * substring of `text` (the match may start anywhere for free), one text
 * column at a time. Each cell also carries where its alignment started in
 * `text`, which gives the span's start without a second pass. Ukkonen's
 * cut-off skips the rows already over the limit, so a column costs about
 * `limit` cells rather than the whole quote. Ties keep the earliest end.
 */
function bestMatch(text: string, pattern: string): Span | undefined {
  const m = pattern.length;
  // 10% of the quote: none under 10 characters, where one edit turns "yes" into the "es" of "retries".
  const limit = Math.floor(0.1 * m);
  const over = limit + 1; // stands for every cost past the limit
  let cost = new Int32Array(m + 2);
  let from = new Int32Array(m + 2);
  let nextCost = new Int32Array(m + 2);
  let nextFrom = new Int32Array(m + 2);
  for (let i = 0; i <= m; i++) cost[i] = Math.min(i, over);
  let top = Math.min(m, limit); // deepest row whose cost is within the limit
  let best: Span | undefined;
  let bestCost = over;
  for (let j = 1; j <= text.length; j++) {
    const c = text.charCodeAt(j - 1);
    const rows = Math.min(m, top + 1);
    nextCost[0] = 0;
    nextFrom[0] = j;
    for (let i = 1; i <= rows; i++) {
      // match or substitute, then skip a quote char, then skip a text char
      let value = cost[i - 1] + (pattern.charCodeAt(i - 1) === c ? 0 : 1);
      let start = from[i - 1];
      if (nextCost[i - 1] + 1 < value) {
        value = nextCost[i - 1] + 1;
        start = nextFrom[i - 1];
      }
      if (cost[i] + 1 < value) {
        value = cost[i] + 1;
        start = from[i];
      }
      nextCost[i] = value;
      nextFrom[i] = start;
    }
    top = rows;
    while (nextCost[top] > limit) top--;
    if (top === rows && top < m) nextCost[top + 1] = over; // not computed: past the limit
    if (top === m && nextCost[m] < bestCost) {
      bestCost = nextCost[m];
      best = { start: nextFrom[m], end: j };
    }
    const [oldCost, oldFrom] = [cost, from];
    cost = nextCost;
    from = nextFrom;
    nextCost = oldCost;
    nextFrom = oldFrom;
  }
  return best;
}

/** A match may take in a neighbouring space; drop it so the span begins and ends on text. */
function trimSpaces(text: string, span: Span): Span | undefined {
  let { start, end } = span;
  while (start < end && text[start] === ' ') start++;
  while (end > start && text[end - 1] === ' ') end--;
  return start < end ? { start, end } : undefined;
}

function toLines(original: string, firstLine: number, chunk: Normalized, span: Span, exact: boolean): QuoteLocation {
  const startLine = firstLine + newlinesBefore(original, chunk.origin[span.start]);
  const endLine = firstLine + newlinesBefore(original, chunk.origin[span.end - 1]);
  return { startLine, endLine, exact };
}

function newlinesBefore(text: string, offset: number): number {
  let count = 0;
  for (let i = text.indexOf('\n'); i >= 0 && i < offset; i = text.indexOf('\n', i + 1)) count++;
  return count;
}
