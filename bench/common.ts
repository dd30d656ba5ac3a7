// What both benchmarks report the same way.
import fs from 'node:fs';
import path from 'node:path';

/** Median; NaN for no values. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Which BLAS the venv's libmlx uses: setup replaces the wheel's reference BLAS with a link to OpenBLAS. */
export function blasDescription(root: string): string {
  const libs = path.join(root, '.venv', 'lib');
  const found = fs.existsSync(libs)
    ? fs.readdirSync(libs).map((py) => path.join(libs, py, 'site-packages', 'mlx_cpu.libs')).find((d) => fs.existsSync(d))
    : undefined;
  if (!found) return 'platform BLAS';
  const blas = fs.readdirSync(found).find((f) => /^libblas-.*\.so[.\d]*$/.test(f));
  if (!blas) return 'unknown BLAS';
  const full = path.join(found, blas);
  return fs.lstatSync(full).isSymbolicLink() ? `OpenBLAS (${fs.readlinkSync(full)})` : 'reference BLAS bundled in the wheel';
}
