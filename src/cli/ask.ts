// mlx-batch ask: questions x files through the ask pipeline (src/ask/), on the
// built-in engine or an OpenAI-compatible server.
import fs from 'node:fs';
import path from 'node:path';
import { Command, Option } from 'commander';
import cliProgress from 'cli-progress';
import { renderMarkdown } from '../ask/aggregate.js';
import type { AskBackend } from '../ask/backend.js';
import { OpenAiBackend } from '../ask/backends/openai.js';
import { SidecarBackend } from '../ask/backends/sidecar.js';
import { checkInputsExist, CollectError, DEFAULT_MAX_FILE_BYTES } from '../ask/collect.js';
import { parseQuestionsFile } from '../ask/questions.js';
import { DEFAULT_CHUNK_TOKENS, DEFAULT_MAX_TOKENS, runAsk, type AskOptions } from '../ask/pipeline.js';
import type { AskReport, JobPhase, JobUpdate } from '../ask/report.js';
import {
  addModelOptions, byteSizeArg, collect, DEFAULT_MAX_BATCH, DEFAULT_PREFILL_CHUNK, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK,
  integerArg, interruptOnce, numberArg, UsageError, withSidecar, type CliIO, type ModelFlags,
} from './shared.js';

interface AskFlags extends ModelFlags {
  question?: string[];
  questionsFile?: string;
  out?: string[];
  maxTokens: number;
  chunkTokens: number;
  temp: number;
  batch: number;
  kvBudget?: number;
  include?: string[];
  exclude?: string[];
  maxFileSize: number;
  gitignore: boolean;
  synthesize?: boolean;
  backendUrl?: string;
  backendModel?: string;
  backendConcurrency: number;
  backendContext: number;
}

export function askCommand(io: CliIO, done: (code: number) => void): Command {
  const cmd = new Command('ask')
    .description('ask questions about files: every (file chunk x question) is a job on its own decoding channel')
    .argument('[paths...]', 'files, folders and globs (default: the current folder)')
    .option('-q, --question <text>', 'a question (repeatable)', collect)
    .option('--questions-file <file>', 'questions: .txt one per line, .md list items, .jsonl strings or {"question"}')
    .option('-o, --out <file>', 'write the report: .md for Markdown, .json for JSON (repeatable)', collect)
    .option('--max-tokens <n>', 'most tokens of one answer (a cut answer is retried once with twice this)', integerArg('--max-tokens', 16), DEFAULT_MAX_TOKENS)
    .option('--chunk-tokens <n>', 'most tokens of file text per job (also bounded by the model\'s context)', integerArg('--chunk-tokens', 64), DEFAULT_CHUNK_TOKENS)
    .option('--temp <t>', 'sampling temperature, 0 = greedy', numberArg('--temp', (n) => n >= 0, 'a number >= 0'), 0)
    .option('-b, --batch <n>', 'most jobs decoded together (built-in engine); 1 = one at a time', integerArg('--batch', 1, 1024), DEFAULT_MAX_BATCH)
    .option('--kv-budget <bytes>', 'KV cache budget of the built-in engine, e.g. 2GiB (default: a quarter of memory)', byteSizeArg('--kv-budget'))
    .option('--include <glob>', 'only files matching this glob when expanding folders (repeatable)', collect)
    .option('--exclude <glob>', 'leave out files matching this glob (repeatable)', collect)
    .option('--max-file-size <bytes>', 'skip larger files, e.g. 512KiB', byteSizeArg('--max-file-size'), DEFAULT_MAX_FILE_BYTES)
    .option('--no-gitignore', 'do not honour .gitignore files when expanding folders')
    .option('--synthesize', 'one more call per question: a summary over the found answers, citing files and lines')
    .option('--backend-url <url>', 'an OpenAI-compatible server instead of the built-in engine (API key from MLX_BATCH_API_KEY or OPENAI_API_KEY)')
    .option('--backend-model <name>', 'the model name to ask that server for')
    .option('--backend-concurrency <n>', 'requests in flight at once to that server', integerArg('--backend-concurrency', 1, 1024), 4)
    .option('--backend-context <n>', 'that model\'s context length in tokens', integerArg('--backend-context', 256), 8192);
  addModelOptions(cmd);
  cmd.action(async (paths: string[], flags: AskFlags) => done(await runAskCommand(paths, flags, io)));
  return cmd;
}

function readQuestions(flags: AskFlags): string[] {
  const questions = [...(flags.question ?? [])];
  if (flags.questionsFile !== undefined) {
    let content: string;
    try {
      content = fs.readFileSync(flags.questionsFile, 'utf8');
    } catch (e) {
      throw new UsageError(`cannot read questions file ${flags.questionsFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    try {
      questions.push(...parseQuestionsFile(content, flags.questionsFile));
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  }
  const kept = questions.map((q) => q.trim()).filter((q) => q !== '');
  if (kept.length === 0 && flags.questionsFile !== undefined && !flags.question?.some((q) => q.trim())) {
    throw new UsageError(`no questions: ${flags.questionsFile} holds none (.txt: one per line; .md: list items; .jsonl: strings or {"question"})`);
  }
  if (kept.length === 0) throw new UsageError('no questions: give -q <question> (repeatable) or --questions-file <file>');
  return kept;
}

function checkOutPaths(out: string[] = []): string[] {
  for (const file of out) {
    if (!/\.(md|json)$/i.test(file)) throw new UsageError(`--out ${file}: the report is written as .md (Markdown) or .json`);
    const dir = path.dirname(path.resolve(file));
    if (!fs.existsSync(dir)) throw new UsageError(`--out ${file}: the folder ${dir} does not exist`);
    // Checked before the model loads: a run's report must not be lost at the end.
    let stat: fs.Stats | undefined;
    try {
      stat = fs.statSync(file, { throwIfNoEntry: false });
    } catch (e) {
      throw new UsageError(`--out ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOTDIR' ? `${path.dirname(file)} is not a folder` : (e as Error).message}`);
    }
    if (stat?.isDirectory()) throw new UsageError(`--out ${file}: that is a folder`);
    try {
      fs.accessSync(fs.existsSync(file) ? file : dir, fs.constants.W_OK);
    } catch {
      throw new UsageError(`--out ${file}: ${fs.existsSync(file) ? 'the file' : `the folder ${dir}`} is not writable`);
    }
  }
  return out;
}

async function runAskCommand(paths: string[], flags: AskFlags, io: CliIO): Promise<number> {
  const questions = readQuestions(flags);
  const outFiles = checkOutPaths(flags.out);
  if (flags.backendUrl !== undefined && !flags.backendModel) throw new UsageError('--backend-url needs --backend-model <name>');
  try {
    checkInputsExist(paths, process.cwd());
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const options: AskOptions = {
    questions,
    inputs: paths,
    collect: {
      cwd: process.cwd(),
      ...(flags.include ? { include: flags.include } : {}),
      ...(flags.exclude ? { exclude: flags.exclude } : {}),
      maxFileBytes: flags.maxFileSize,
      gitignore: flags.gitignore,
      skipFiles: outFiles,
    },
    maxTokens: flags.maxTokens,
    chunkTokens: flags.chunkTokens,
    temperature: flags.temp,
    synthesize: Boolean(flags.synthesize),
  };
  const run = (backend: AskBackend) => askWithProgress(backend, options, outFiles, io);
  if (flags.backendUrl !== undefined) {
    let backend: OpenAiBackend;
    try {
      backend = new OpenAiBackend({
        url: flags.backendUrl,
        model: flags.backendModel!,
        apiKey: process.env.MLX_BATCH_API_KEY || process.env.OPENAI_API_KEY,
        concurrency: flags.backendConcurrency,
        contextLength: flags.backendContext,
      });
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    return run(backend);
  }
  const settings = {
    maxBatch: flags.batch,
    prefillTokensPerStep: DEFAULT_PREFILL_CHUNK,
    ...(flags.kvBudget !== undefined ? { kvBudgetBytes: flags.kvBudget } : {}),
  };
  return withSidecar(flags, io, settings, (client, info) => run(new SidecarBackend(client, info)));
}

/** What the progress bar (or the plain lines) shows: jobs ended, tok/s, channels busy. */
class AskProgress {
  private readonly phases = new Map<string, JobPhase>();
  private total = 0;
  private ended = 0;
  private tokens = 0;
  private readonly started = performance.now();
  private bar?: cliProgress.SingleBar;
  private lastTokens = new Map<string, number>();

  constructor(private readonly io: CliIO) {}

  plan(jobs: JobUpdate[]): void {
    this.total = jobs.length;
    if (!this.io.stderrIsTTY) {
      this.io.stderr.write(`${jobs.length} job${jobs.length === 1 ? '' : 's'}\n`);
      return;
    }
    this.bar = new cliProgress.SingleBar({
      stream: this.io.stderr,
      format: 'asking |{bar}| {value}/{total} jobs | {rate} tok/s | {busy} channels busy',
      clearOnComplete: true,
      hideCursor: true,
      barsize: 24,
    }, cliProgress.Presets.shades_classic);
    this.bar.start(jobs.length, 0, { rate: '0.0', busy: 0 });
  }

  update(u: JobUpdate): void {
    this.phases.set(u.id, u.phase);
    if (u.generated_tokens !== undefined) {
      this.tokens += u.generated_tokens - (this.lastTokens.get(u.id) ?? 0);
      this.lastTokens.set(u.id, u.generated_tokens);
    }
    if (u.result) {
      this.ended++;
      this.lastTokens.delete(u.id);
      if (!this.bar) {
        const r = u.result;
        this.io.stderr.write(`[${this.ended}/${this.total}] ${r.state}${r.state === 'found' && !r.verified ? ' (unverified)' : ''} ` +
          `q${u.question + 1} ${r.file}:${r.start_line}-${r.end_line}${r.error ? `: ${r.error}` : ''}\n`);
      }
    }
    if (this.bar) {
      const busy = [...this.phases.values()].filter((p) => p === 'reading' || p === 'generating').length;
      const rate = this.tokens / Math.max(1e-3, (performance.now() - this.started) / 1000);
      this.bar.update(this.ended, { rate: rate.toFixed(1), busy });
    }
  }

  stop(): void {
    this.bar?.stop();
  }
}

async function askWithProgress(backend: AskBackend, options: AskOptions, outFiles: string[], io: CliIO): Promise<number> {
  const interrupt = interruptOnce(io, 'cancelling the running jobs and writing the report');
  const progress = new AskProgress(io);
  let report: AskReport;
  try {
    report = await runAsk(backend, {
      ...options,
      signal: interrupt.signal,
      onPlan: (jobs) => progress.plan(jobs),
      onJob: (u) => progress.update(u),
    });
  } catch (e) {
    if (e instanceof CollectError) throw new UsageError(e.message);
    throw e;
  } finally {
    progress.stop();
    interrupt.dispose();
  }
  const markdown = renderMarkdown(report);
  // The report goes to stdout first, so a file that cannot be written loses nothing.
  io.stdout.write(markdown);
  const written: string[] = [];
  let unwritten = false;
  for (const file of outFiles) {
    try {
      fs.writeFileSync(file, file.toLowerCase().endsWith('.json') ? `${JSON.stringify(report, null, 2)}\n` : renderMarkdown(report, { linkBase: linkBaseFor(file) }));
      written.push(file);
    } catch (e) {
      unwritten = true;
      io.stderr.write(`mlx-batch: --out ${file}: could not write the report (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); it is on stdout above\n`);
    }
  }
  if (written.length) io.stderr.write(`report written to ${written.join(', ')}\n`);
  if (interrupt.interrupted()) return EXIT_INTERRUPTED;
  if (unwritten) return EXIT_FAILURE;
  if (report.totals.jobs === 0) {
    io.stderr.write(report.skipped.length
      ? `mlx-batch: no file could be asked about: all ${report.skipped.length} were skipped (see "Skipped files" in the report)\n`
      : 'mlx-batch: no file could be asked about: the paths hold no files\n');
    return EXIT_FAILURE;
  }
  return report.totals.states.error > 0 ? EXIT_FAILURE : EXIT_OK;
}

/** From the report's folder to the folder its paths are relative to, so its links open the files. */
function linkBaseFor(reportFile: string): string {
  return path.relative(path.dirname(path.resolve(reportFile)), process.cwd()).split(path.sep).join('/');
}
