// Split a file into chunks that fit a token budget, each with its 1-based
// line range, so a question can be asked of a file too long for one prompt
// and answers can still cite file lines.

export interface Chunk {
  startLine: number;
  endLine: number;
  text: string;
  tokens: number;
}

export interface ChunkOptions {
  /** Most tokens per chunk (sum of the lines' token counts). */
  budget: number;
  /** Lines repeated at the start of the next chunk (default 3), so an answer that straddles a cut is still whole in one chunk. */
  overlapLines?: number;
}

export type ChunkResult = { chunks: Chunk[] } | { tooLong: { line: number; tokens: number } };

export const DEFAULT_OVERLAP_LINES = 3;

/** Cuts are only moved back into the last part of a full chunk, so chunks stay close to the budget. */
const GOOD_CUT_WINDOW = 0.3;

/** Lines that usually start a new definition or section, in common languages and Markdown. */
const TOP_LEVEL_KEYWORD =
  /^(export |async |def |class |function |fn |pub |func |interface |type |struct |impl |module |#{1,6} )/;

/**
 * The file's lines. A final '\n' ends the last line rather than starting an
 * empty one, so line numbers match what an editor shows for the text; ''
 * is one empty line.
 */
export function splitLines(text: string): string[] {
  const lines = text.split('\n');
  if (lines.length > 1 && lines[lines.length - 1] === '') lines.pop();
  return lines;
}

/**
 * lines: the file split on '\n' (a trailing '\r' kept in the text as is);
 * lineTokens[i]: tokens of line i (including its newline).
 */
export function chunkLines(lines: string[], lineTokens: number[], options: ChunkOptions): ChunkResult {
  if (lineTokens.length !== lines.length) throw new Error('chunkLines: one token count per line is needed');
  const { budget } = options;
  const overlap = Math.max(0, Math.floor(options.overlapLines ?? DEFAULT_OVERLAP_LINES));
  const tooLongLine = lineTokens.findIndex((t) => t > budget);
  if (tooLongLine >= 0) return { tooLong: { line: tooLongLine + 1, tokens: lineTokens[tooLongLine] } };

  const chunks: Chunk[] = [];
  let start = 0;
  let previousCut = 0;
  for (;;) {
    const fullEnd = fillTo(lineTokens, start, budget);
    if (fullEnd === lines.length) {
      chunks.push(makeChunk(lines, lineTokens, start, fullEnd));
      return { chunks };
    }
    const cut = chooseCut(lines, start, fullEnd, previousCut + 1);
    chunks.push(makeChunk(lines, lineTokens, start, cut));
    start = nextStart(lineTokens, start, cut, previousCut, overlap, budget);
    previousCut = cut;
  }
}

/** End (exclusive) of the longest run of lines from `start` whose tokens fit the budget. */
function fillTo(lineTokens: number[], start: number, budget: number): number {
  let end = start;
  let used = 0;
  while (end < lineTokens.length && used + lineTokens[end] <= budget) used += lineTokens[end++];
  return end;
}

/**
 * Where a full chunk [start, end) ends: before a top-level definition, else
 * after a blank line, in its last ~30%; otherwise at the budget. `minCut`
 * keeps the chunk past the lines the previous chunk already covered.
 */
function chooseCut(lines: string[], start: number, end: number, minCut: number): number {
  const low = Math.max(minCut, start + 1, start + Math.ceil((1 - GOOD_CUT_WINDOW) * (end - start)));
  for (let cut = end; cut >= low; cut--) if (startsDefinition(lines, cut)) return cut;
  for (let cut = end; cut >= low; cut--) if (isBlank(lines[cut - 1])) return cut;
  return end;
}

function startsDefinition(lines: string[], i: number): boolean {
  const line = lines[i];
  if (TOP_LEVEL_KEYWORD.test(line)) return true;
  return /^\S/.test(line) && i > 0 && isBlank(lines[i - 1]);
}

function isBlank(line: string): boolean {
  return line.trim() === '';
}

/**
 * Start of the chunk after a cut: `overlap` lines back, but after the
 * previous chunk's start and not into lines two chunks back, and only as far
 * back as still leaves room for the line at the cut, so every chunk adds new
 * lines.
 */
function nextStart(lineTokens: number[], start: number, cut: number, previousCut: number, overlap: number, budget: number): number {
  let next = Math.max(cut - overlap, start + 1, previousCut);
  let used = sum(lineTokens, next, cut + 1);
  while (next < cut && used > budget) used -= lineTokens[next++];
  return next;
}

function makeChunk(lines: string[], lineTokens: number[], start: number, end: number): Chunk {
  return {
    startLine: start + 1,
    endLine: end,
    text: lines.slice(start, end).join('\n'),
    tokens: sum(lineTokens, start, end),
  };
}

function sum(values: number[], from: number, to: number): number {
  let total = 0;
  for (let i = from; i < to; i++) total += values[i];
  return total;
}
