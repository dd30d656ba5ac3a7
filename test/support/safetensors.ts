// Reads the small safetensors files the reference fixtures are written in:
// an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
import fs from 'node:fs';

export interface Tensor {
  dtype: string;
  shape: number[];
  data: Float32Array | Int32Array;
}

export function readSafetensors(file: string): Map<string, Tensor> {
  const buf = fs.readFileSync(file);
  const headerLength = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLength).toString('utf8'));
  const base = 8 + headerLength;
  const out = new Map<string, Tensor>();
  for (const [name, info] of Object.entries<any>(header)) {
    if (name === '__metadata__') continue;
    const [start, end] = info.data_offsets as [number, number];
    const bytes = buf.subarray(base + start, base + end);
    const copy = new ArrayBuffer(bytes.length);
    new Uint8Array(copy).set(bytes);
    if (info.dtype === 'F32') out.set(name, { dtype: 'F32', shape: info.shape, data: new Float32Array(copy) });
    else if (info.dtype === 'I32') out.set(name, { dtype: 'I32', shape: info.shape, data: new Int32Array(copy) });
    else throw new Error(`${file}: tensor ${name} has dtype ${info.dtype}, expected F32 or I32`);
  }
  return out;
}
