// The seed's three charts from a sweep's runs, as Vega-Lite specs: drawn in
// Node by chart-render.ts (the CLI's SVG and PNG files) and in the VS Code
// benchmark webview (media/benchmark.ts). Pure data, no rendering here.
import type { MinionRun, SweepOptions } from './types.js';

export type Spec = Record<string, unknown>;

/** The sweep's runs, without the target cell's repeats (what the table and the charts show). */
export function sweepRuns(runs: MinionRun[]): MinionRun[] {
  return runs.filter((r) => r.repeat === undefined);
}

export interface ChartSpec {
  /** File name without extension. */
  name: string;
  title: string;
  spec: Spec;
}

const CLIENT_ORDER = ['sequential', 'batched', 'server', 'llama.cpp'];

function groupedBars(title: string, values: Array<Record<string, unknown>>, x: { field: string; title: string }, y: { field: string; title: string }): Spec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    data: { values },
    facet: { column: { field: 'mode', title: null, header: { labelFontSize: 13 } } },
    spec: {
      width: 320,
      height: 220,
      layer: [
        {
          mark: { type: 'bar' },
          encoding: {
            x: { field: x.field, type: 'ordinal', title: x.title, sort: x.field === 'client' ? CLIENT_ORDER : 'ascending', axis: { labelAngle: 0 } },
            xOffset: { field: 'client', sort: CLIENT_ORDER },
            y: { field: y.field, type: 'quantitative', title: y.title },
            color: { field: 'client', type: 'nominal', sort: CLIENT_ORDER, legend: { orient: 'bottom' } },
            tooltip: [{ field: 'client' }, { field: y.field, format: '.1f' }],
          },
        },
        {
          mark: { type: 'text', dy: -5, fontSize: 9 },
          encoding: {
            x: { field: x.field, type: 'ordinal', sort: x.field === 'client' ? CLIENT_ORDER : 'ascending' },
            xOffset: { field: 'client', sort: CLIENT_ORDER },
            y: { field: y.field, type: 'quantitative' },
            text: { field: y.field, type: 'quantitative', format: '.0f' },
          },
        },
      ],
    },
    resolve: { scale: { y: 'shared' } },
    config: { font: 'sans-serif', view: { stroke: null } },
  };
}

const row = (r: MinionRun, sweep: string) => ({
  sweep, client: r.client, mode: r.mode, context: r.context, size: r.size,
  tokens_per_s: r.tokens_per_s, wall_s: r.wall_s, latency_p50_s: r.latency_p50_s,
});

/** The seed's charts: context sweep (throughput and latency), clients at the longest context, the batch-size sweep. */
export function chartSpecs(allRuns: MinionRun[], sweep: Pick<SweepOptions, 'contexts' | 'contextSweepSize' | 'sizeSweepContext'>): ChartSpec[] {
  // The target cell's repeats are not in the charts: one point per cell and client.
  const runs = sweepRuns(allRuns);
  const ctxRuns = runs.filter((r) => r.size === sweep.contextSweepSize && sweep.contexts.includes(r.context)).map((r) => row(r, 'context'));
  const longest = Math.max(...sweep.contexts);
  const longRuns = runs.filter((r) => r.size === sweep.contextSweepSize && r.context === longest).map((r) => row(r, 'long'));
  const sizeRuns = runs.filter((r) => r.context === sweep.sizeSweepContext).map((r) => row(r, 'size'));
  const throughputVsContext = groupedBars(`Throughput vs context length (${sweep.contextSweepSize} questions)`, ctxRuns,
    { field: 'context', title: 'sentences in the document' }, { field: 'tokens_per_s', title: 'throughput (tok/s)' });
  const latencyVsContext = groupedBars(`Latency vs context length (${sweep.contextSweepSize} questions)`, ctxRuns,
    { field: 'context', title: 'sentences in the document' }, { field: 'wall_s', title: 'wall time (s)' });
  return [
    {
      name: 'context_sweep', title: 'Latency and throughput against context length',
      spec: { $schema: 'https://vega.github.io/schema/vega-lite/v6.json', vconcat: [throughputVsContext, latencyVsContext] },
    },
    {
      name: 'long_context_clients', title: `Throughput across clients at long context (${longest} sentences)`,
      spec: groupedBars(`Throughput across clients, ${longest}-sentence document`, longRuns, { field: 'client', title: 'client' },
        { field: 'tokens_per_s', title: 'throughput (tok/s)' }),
    },
    {
      name: 'batch_size_sweep', title: `Batch-size sweep (${sweep.sizeSweepContext}-sentence document)`,
      spec: groupedBars(`Batch-size sweep, ${sweep.sizeSweepContext}-sentence document`, sizeRuns, { field: 'size', title: 'questions at once (batch size)' },
        { field: 'tokens_per_s', title: 'throughput (tok/s)' }),
    },
  ];
}
