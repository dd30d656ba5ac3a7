// Runs and their jobs, in memory and in workspace storage. Each finished job
// is appended to its run's journal as it finishes, so a reload or a crash of
// the window keeps every finished result; the run's header is rewritten only
// when the run starts and ends. No VS Code here: tests use a temp folder.
import fs from 'node:fs';
import path from 'node:path';
import type { AskReport, JobResult, JobUpdate } from '../ask/report.js';
import type { RunJob, RunStatus, RunView } from './webview-protocol.js';

/** A run as stored: what the webview sees, plus the folder its paths are relative to. */
export interface RunRecord extends RunView {
  root: string;
}

const KEEP_RUNS = 30;

export class RunStore {
  private readonly runs = new Map<string, RunRecord>();
  private readonly jobIndex = new Map<string, Map<string, RunJob>>();

  constructor(private readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true });
    this.load();
  }

  /** Newest first. */
  list(): RunRecord[] {
    return [...this.runs.values()].sort((a, b) => (a.started < b.started ? 1 : -1));
  }

  get(id: string): RunRecord | undefined {
    return this.runs.get(id);
  }

  create(run: Omit<RunRecord, 'jobs' | 'skipped' | 'summaries' | 'elapsedSeconds' | 'generatedTokens' | 'tokensPerSecond' | 'status'>): RunRecord {
    const record: RunRecord = {
      ...run, status: 'running', jobs: [], skipped: [], summaries: run.questions.map(() => null),
      elapsedSeconds: 0, generatedTokens: 0, tokensPerSecond: 0,
    };
    this.runs.set(record.id, record);
    this.jobIndex.set(record.id, new Map());
    this.writeHeader(record);
    this.prune();
    return record;
  }

  /** The planned jobs (all queued) and the files skipped. */
  plan(run: RunRecord, jobs: JobUpdate[], skipped: RunRecord['skipped']): void {
    run.jobs = jobs.map((j) => ({ ...j }));
    run.skipped = skipped;
    this.jobIndex.set(run.id, new Map(run.jobs.map((j) => [j.id, j])));
    this.writeHeader(run);
  }

  /** Applies a job's move; a finished job goes to the journal at once. */
  update(run: RunRecord, u: JobUpdate): void {
    const job = this.jobIndex.get(run.id)?.get(u.id);
    if (!job) return;
    Object.assign(job, u);
    if (u.result) {
      delete job.text;
      fs.appendFileSync(this.journalPath(run.id), `${JSON.stringify(u.result)}\n`);
    }
  }

  /** Replaces finished jobs (a rerun): the new results take the old jobs' places. */
  replaceResults(run: RunRecord, results: JobResult[]): void {
    for (const r of results) this.update(run, { id: r.id, question: this.jobIndex.get(run.id)?.get(r.id)?.question ?? 0, file: r.file,
      start_line: r.start_line, end_line: r.end_line, phase: r.state, result: r });
  }

  summary(run: RunRecord, question: number, summary: string): void {
    run.summaries[question] = summary;
  }

  finish(run: RunRecord, status: RunStatus, report?: AskReport, error?: string): void {
    run.status = status;
    if (error) run.error = error;
    if (report) {
      run.totals = report.totals;
      run.summaries = report.questions.map((q) => q.summary);
      run.skipped = report.skipped;
      run.elapsedSeconds = report.totals.wall_seconds;
      run.generatedTokens = report.totals.generated_tokens;
      run.tokensPerSecond = report.totals.tokens_per_second;
    }
    // Jobs that never ended (a failed start) end as cancelled, so every job has a state.
    for (const job of run.jobs) {
      if (!job.result) this.endUnfinished(job, status === 'failed' ? (error ?? 'the run failed') : 'the run ended before this job ran');
    }
    this.writeHeader(run);
    // The header now holds every result: the journal would only be read again at each start.
    fs.rmSync(this.journalPath(run.id), { force: true });
  }

  delete(id: string): void {
    this.runs.delete(id);
    this.jobIndex.delete(id);
    for (const f of [this.headerPath(id), this.journalPath(id)]) fs.rmSync(f, { force: true });
  }

  // -------------------------------------------------------------------------

  private endUnfinished(job: RunJob, reason: string): void {
    job.phase = 'cancelled';
    delete job.text;
    job.result = {
      id: job.id, file: job.file, start_line: job.start_line, end_line: job.end_line, state: 'cancelled', answer: null,
      explanation: null, citation: null, verified: false, error: reason, prompt_tokens: 0, cached_tokens: 0,
      generated_tokens: 0, attempts: 0, seconds: 0,
    };
  }

  private headerPath(id: string): string {
    return path.join(this.dir, `${id}.json`);
  }

  private journalPath(id: string): string {
    return path.join(this.dir, `${id}.jobs.jsonl`);
  }

  private writeHeader(run: RunRecord): void {
    const tmp = `${this.headerPath(run.id)}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(run));
    fs.renameSync(tmp, this.headerPath(run.id));
  }

  /** Reads saved runs; a run that was still running when the window went away ends as cancelled. */
  private load(): void {
    for (const name of fs.readdirSync(this.dir)) {
      if (!name.endsWith('.json')) continue;
      let run: RunRecord;
      try {
        run = JSON.parse(fs.readFileSync(path.join(this.dir, name), 'utf8')) as RunRecord;
      } catch {
        continue; // a torn or foreign file: not ours to show
      }
      const jobs = new Map(run.jobs.map((j) => [j.id, j]));
      const journal = this.journalPath(run.id);
      if (fs.existsSync(journal)) {
        for (const line of fs.readFileSync(journal, 'utf8').split('\n')) {
          if (!line.trim()) continue;
          try {
            const result = JSON.parse(line) as JobResult;
            const job = jobs.get(result.id);
            if (job) Object.assign(job, { phase: result.state, result });
          } catch {
            // the last line of a crash may be torn
          }
        }
      }
      if (run.status === 'running') {
        run.status = 'cancelled';
        run.error = 'the window was closed or reloaded while this run was going';
        for (const job of run.jobs) if (!job.result) this.endUnfinished(job, run.error);
        // Settled once: the next start reads one file, not this again.
        this.writeHeader(run);
        fs.rmSync(journal, { force: true });
      }
      this.runs.set(run.id, run);
      this.jobIndex.set(run.id, jobs);
    }
  }

  private prune(): void {
    for (const old of this.list().slice(KEEP_RUNS)) this.delete(old.id);
  }
}
