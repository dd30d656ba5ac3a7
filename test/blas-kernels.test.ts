// Which OpenBLAS kernels the engine asks for (src/engine/native.ts): the
// AVX-512 ones where the CPU has every instruction set they use, never over
// the user's own choice; and on this machine, what OpenBLAS then reports.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';

import { blasCoreType, projectRoot } from '../src/engine/native.js';

const ZEN5_FLAGS = 'fpu sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16';

describe('OpenBLAS kernels', () => {
  test('AVX-512 kernels only where every instruction set they use is there', () => {
    assert.equal(blasCoreType({}, `processor\t: 0\nflags\t\t: ${ZEN5_FLAGS}\n`), 'SkylakeX');
    assert.equal(blasCoreType({}, 'flags\t\t: fpu avx2 fma\n'), undefined, 'AVX2 only');
    assert.equal(blasCoreType({}, 'flags\t\t: fpu avx2 avx512f avx512cd\n'), undefined, 'AVX-512 without BW, DQ, VL');
    assert.equal(blasCoreType({}, undefined), undefined, 'no /proc/cpuinfo (macOS, Windows)');
  });

  test("the user's OPENBLAS_CORETYPE is kept", () => {
    assert.equal(blasCoreType({ OPENBLAS_CORETYPE: 'Haswell' }, `flags\t\t: ${ZEN5_FLAGS}\n`), undefined);
  });

  test('the engine, loaded, runs the kernels chosen for this CPU', { skip: process.platform !== 'linux' && 'Linux only' }, () => {
    const expected = blasCoreType({}, fs.readFileSync('/proc/cpuinfo', 'utf8'));
    const script = `const { createNativeEngine } = require(${JSON.stringify(path.join(projectRoot(), 'src', 'engine', 'native.ts'))});
      createNativeEngine().close().then(() => console.log('OPENBLAS_CORETYPE=' + (process.env.OPENBLAS_CORETYPE ?? '')));`;
    const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_VERBOSE: '2' };
    delete env.OPENBLAS_CORETYPE;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], { env, encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    const out = r.stdout + r.stderr;
    assert.match(out, new RegExp(`OPENBLAS_CORETYPE=${expected ?? ''}\\n`));
    // OpenBLAS names the kernels it loaded (the venv links libmlx to it).
    const core = /Core: (\w+)/.exec(out)?.[1];
    if (expected) assert.equal(core, expected, out);
    console.log(`# this CPU: ${expected ?? 'OpenBLAS default kernels'}; OpenBLAS reports ${core ?? 'nothing (not OpenBLAS)'}`);
  });
});
