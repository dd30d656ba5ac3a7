// Questions files, for `ask --questions-file` and the extension's Batch Query:
// .txt one per line (# starts a comment), .md list items, .jsonl strings or
// {"question": ...} objects.

/** Questions in a file: .jsonl (strings or {"question"}), .md (list items), else one per non-empty line. */
export function parseQuestionsFile(content: string, fileName: string): string[] {
  const all = content.split(/\r?\n/).map((l) => l.trim());
  const lines = all.filter(Boolean);
  if (/\.jsonl$/i.test(fileName)) {
    // Errors name the line as an editor numbers it, blank lines counted.
    return all.map((line, i) => {
      if (!line) return '';
      let v: unknown;
      try {
        v = JSON.parse(line);
      } catch {
        throw new Error(`${fileName}: line ${i + 1} is not JSON`);
      }
      if (typeof v === 'string') return v.trim();
      if (v && typeof v === 'object' && typeof (v as { question?: unknown }).question === 'string') return (v as { question: string }).question.trim();
      throw new Error(`${fileName}: line ${i + 1} must be a string or {"question": "..."}`);
    }).filter(Boolean);
  }
  if (/\.(md|markdown)$/i.test(fileName)) {
    return lines.map((l) => /^(?:[-*+]|\d+[.)])\s+(.*)$/.exec(l)?.[1]?.trim()).filter((q): q is string => Boolean(q));
  }
  return lines.filter((l) => !l.startsWith('#'));
}
