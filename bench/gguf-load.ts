// node --import tsx bench/gguf-load.ts --old ADDON [--model FILE] [--repeats 3] [--weights float32]
//
// Load time and peak RSS of one GGUF model through two builds of the addon:
// ADDON, an mlx_batch.node built from an earlier commit (for example one that
// read weights with MLX's GGUF loader), against this checkout's. Each load runs
// in a fresh process, the two alternating so machine noise hits both. Prints
// medians side by side.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { loadModelSpec } from '../src/engine/model-config.js';
import { addonPath, createNativeEngine, projectRoot, type WeightsMode } from '../src/engine/native.js';
import { median } from './common.js';

interface Sample { seconds: number; maxRssMiB: number; note?: string }

async function child(model: string, weights: WeightsMode): Promise<void> {
  const spec = await loadModelSpec(model);
  const engine = createNativeEngine();
  const start = performance.now();
  const loaded = await engine.load(spec, { weights, device: 'cpu' });
  const seconds = (performance.now() - start) / 1000;
  await engine.close();
  const sample: Sample = { seconds, maxRssMiB: process.resourceUsage().maxRSS / 1024, note: loaded.weightsNote };
  process.stdout.write(JSON.stringify(sample) + '\n');
}

function run(addon: string, model: string, weights: string): Sample {
  const out = execFileSync(process.execPath, ['--import', 'tsx', __filename, '--child', '--model', model, '--weights', weights],
    { env: { ...process.env, MLX_BATCH_ADDON: addon }, encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').pop()!) as Sample;
}

async function main() {
  const { values } = parseArgs({
    options: {
      model: { type: 'string', default: path.join(projectRoot(), 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf') },
      old: { type: 'string' },
      repeats: { type: 'string', default: '3' },
      weights: { type: 'string', default: 'float32' },
      child: { type: 'boolean', default: false },
    },
  });
  if (values.child) return child(values.model, values.weights as WeightsMode);
  if (!values.old) throw new Error('--old ADDON is required: the mlx_batch.node of the build to compare against');
  const builds = { 'old (--old)': values.old, 'new (this checkout)': addonPath() };
  const samples = new Map<string, Sample[]>(Object.keys(builds).map((k) => [k, []]));
  for (let r = 0; r < Number(values.repeats); r++) {
    const order = r % 2 === 0 ? Object.entries(builds) : Object.entries(builds).reverse();
    for (const [name, addon] of order) samples.get(name)!.push(run(addon, values.model, values.weights));
  }
  console.log(`${values.model}, --weights ${values.weights}, CPU, median of ${values.repeats} fresh processes`);
  console.log('| build | load s | peak RSS MiB |');
  console.log('|---|---|---|');
  for (const [name, s] of samples) {
    console.log(`| ${name} | ${median(s.map((x) => x.seconds)).toFixed(3)} | ${median(s.map((x) => x.maxRssMiB)).toFixed(0)} |`);
  }
  const note = samples.get('new (this checkout)')![0].note;
  if (note) console.log(note);
}

void main();
