// Token counts for a server's model, whose tokenizer `ask` does not have:
// chunks are cut by this estimate, so it errs high for every kind of text
// (prose, code, hex, base64, CJK, Cyrillic), checked against a real BPE
// tokenizer in the tests. Characters per token alone undercounts code 1.2x,
// hex 3x and CJK 5x.

const PIECES = /(\p{Script=Hangul})|(\p{Script=Han}|\p{Script=Hiragana}|\p{Script=Katakana})|([a-zA-Z]+)|([\p{L}\p{M}])|(\p{N})|([ \t]+)|(\n+)|([!-/:-@[-`{-~]+)|(.)/gsu;
const SAFETY = 1.15;
/** Segments of a run of letters: `read` `File` `Sync`, `HTTP`, or base64's `k` `Qz` `Rt`. */
const SEGMENTS = /[A-Z]?[a-z]+|[A-Z]+(?![a-z])/g;

/**
 * Letters a token covers in a run: 4 in words, 3 in capitals, 1.5 where vowels
 * are too few for words (hashes, ids, base64): a tokenizer's merges are words.
 */
function lettersPerToken(segment: string): number {
  if (segment.length >= 4 && (segment.match(/[aeiouyAEIOUY]/g)?.length ?? 0) < 0.3 * segment.length) return 1.5;
  return segment === segment.toUpperCase() ? 3 : 4;
}

export function estimateTokens(text: string): number {
  let tokens = 0;
  for (const m of text.matchAll(PIECES)) {
    if (m[1]) tokens += 3; // a Hangul syllable: up to its 3 UTF-8 bytes
    else if (m[2]) tokens += 2.5; // a CJK character: common ones 1-2 tokens, rare ones 3
    else if (m[3]) for (const s of m[3].match(SEGMENTS)!) tokens += Math.ceil(s.length / lettersPerToken(s));
    else if (m[4] || m[5]) tokens += 1; // another script's letter, a combining mark; a digit (many tokenizers split numbers)
    else if (m[6]) tokens += Math.ceil((m[6].length - 1) / 4); // a single space joins the next word's token
    else if (m[7]) tokens += Math.ceil(m[7].length / 2);
    else if (m[8]) tokens += Math.ceil(m[8].length / 2); // ASCII punctuation: `=>`, `){`, `();`
    else tokens += m[9].codePointAt(0)! > 0xffff ? 4 : 2; // emoji, other symbols: their UTF-8 bytes
  }
  // The pieces' rates are typical, not worst: 15% over them covers Markdown tables, Arabic, rare CJK and long numbers.
  return Math.ceil(tokens * SAFETY);
}
