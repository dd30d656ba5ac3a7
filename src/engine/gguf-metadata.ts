// Reads a local GGUF file's header (metadata key/values, including the
// tokenizer arrays, and the tensor table) with @huggingface/gguf, and turns its
// failures into messages that name the file and say what is wrong with it.
import fs from 'node:fs';
import path from 'node:path';
import { gguf, type GGUFParseOutput } from '@huggingface/gguf';

export type GgufValue = string | number | bigint | boolean | GgufValue[];

export interface GgufTensor {
  name: string;
  /** ggml order: fastest-moving dimension first. */
  shape: number[];
  /** ggml type id (0 = F32, 1 = F16, 2 = Q4_0, 3 = Q4_1, 8 = Q8_0, 30 = BF16, ...). */
  dtype: number;
  /** Offset from the start of the tensor data section. */
  offset: number;
}

export interface GgufFile {
  /** Absolute path. */
  path: string;
  fileSize: number;
  version: number;
  metadata: Record<string, GgufValue>;
  tensors: GgufTensor[];
  /** Absolute file offset where tensor data begins. */
  tensorDataOffset: number;
}

const MAGIC = 'GGUF';
// Magic, version (u32), tensor count (u64), kv count (u64).
const MIN_HEADER_BYTES = 24;

// (elements per block, bytes per block) of each ggml type, to check that the
// tensor data the header promises is really in the file.
const GGML_BLOCKS: Record<number, [number, number]> = {
  0: [1, 4], 1: [1, 2], 2: [32, 18], 3: [32, 20], 6: [32, 22], 7: [32, 24], 8: [32, 34], 9: [32, 40],
  10: [256, 84], 11: [256, 110], 12: [256, 144], 13: [256, 176], 14: [256, 210], 15: [256, 292],
  16: [256, 66], 17: [256, 74], 18: [256, 98], 19: [256, 50], 20: [32, 18], 21: [256, 110],
  22: [256, 82], 23: [256, 136], 24: [1, 1], 25: [1, 2], 26: [1, 4], 27: [1, 8], 28: [1, 8],
  29: [256, 56], 30: [1, 2], 34: [256, 54], 35: [256, 66], 39: [32, 17],
};

const GGML_TYPE_NAMES: Record<number, string> = {
  0: 'F32', 1: 'F16', 2: 'Q4_0', 3: 'Q4_1', 6: 'Q5_0', 7: 'Q5_1', 8: 'Q8_0', 9: 'Q8_1', 10: 'Q2_K', 11: 'Q3_K',
  12: 'Q4_K', 13: 'Q5_K', 14: 'Q6_K', 15: 'Q8_K', 16: 'IQ2_XXS', 17: 'IQ2_XS', 18: 'IQ3_XXS', 19: 'IQ1_S',
  20: 'IQ4_NL', 21: 'IQ3_S', 22: 'IQ2_S', 23: 'IQ4_XS', 24: 'I8', 25: 'I16', 26: 'I32', 27: 'I64', 28: 'F64',
  29: 'IQ1_M', 30: 'BF16', 34: 'TQ1_0', 35: 'TQ2_0', 39: 'MXFP4',
};

// What the addon's GGUF reader converts (native/src/ggml_types.cpp): F32, F16,
// BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL,
// IQ4_XS. Other types are refused here, with the tensor and type named.
export const GGUF_TENSOR_TYPES = new Set([0, 1, 30, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 20, 23]);

export function ggmlTypeName(dtype: number): string {
  return GGML_TYPE_NAMES[dtype] ?? `type ${dtype}`;
}

/** Throws naming the first tensor whose type the addon cannot load. */
export function checkTensorTypes(file: GgufFile): void {
  const bad = file.tensors.find((t) => !GGUF_TENSOR_TYPES.has(t.dtype));
  if (!bad) return;
  const supported = [...GGUF_TENSOR_TYPES].map(ggmlTypeName).join(', ');
  throw ggufError(file.path, `tensor '${bad.name}' has unsupported quant type ${ggmlTypeName(bad.dtype)} ` +
    `(supported: ${supported})`);
}

export function ggufError(file: string, what: string): Error {
  return new Error(`[gguf] ${file}: ${what}`);
}

/** Bytes a tensor occupies in the file, or undefined for a ggml type we do not know. */
export function ggmlTensorBytes(dtype: number, shape: number[]): number | undefined {
  const block = GGML_BLOCKS[dtype];
  if (!block) return undefined;
  const elements = shape.reduce((a, b) => a * b, 1);
  return Math.ceil(elements / block[0]) * block[1];
}

// Parsing the header of a large vocabulary costs a few hundred milliseconds and
// the spec and the tokenizer are read from the same file at the same time, so
// keep the last few results (keyed by path, size and mtime).
const cache = new Map<string, Promise<GgufFile>>();
const CACHE_ENTRIES = 2;

/** Reads a local GGUF file's metadata and tensor table (not the tensor data). */
export async function readGgufFile(filePath: string): Promise<GgufFile> {
  const abs = path.resolve(filePath);
  let stat: fs.Stats;
  try {
    stat = await fs.promises.stat(abs);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw ggufError(abs, code === 'ENOENT' ? 'file not found' : `cannot read file (${code ?? String(e)})`);
  }
  if (!stat.isFile()) throw ggufError(abs, 'not a file');
  const key = `${abs}\0${stat.size}\0${stat.mtimeMs}`;
  let entry = cache.get(key);
  if (!entry) {
    entry = parse(abs, stat.size);
    cache.set(key, entry);
    entry.catch(() => cache.delete(key));
    while (cache.size > CACHE_ENTRIES) cache.delete(cache.keys().next().value as string);
  }
  return entry;
}

async function parse(abs: string, fileSize: number): Promise<GgufFile> {
  await checkStart(abs, fileSize);
  let out: GGUFParseOutput<{ strict: false }>;
  try {
    out = (await gguf(abs, { allowLocalFile: true })) as GGUFParseOutput<{ strict: false }>;
  } catch (e) {
    throw ggufError(abs, `cannot parse header: ${e instanceof Error ? e.message : String(e)}`);
  }
  // Past the end of a local file the library reads zeros instead of failing, so
  // a truncated header parses "successfully": compare what it walked with the size.
  const headerEnd = out.tensorInfoByteRange[1];
  if (headerEnd > fileSize) throw ggufError(abs, `truncated header (file is ${fileSize} bytes)`);
  const { version, tensor_count: _tc, kv_count: _kc, ...rest } = out.metadata;
  const metadata = rest as Record<string, GgufValue>;
  if ('' in metadata) throw ggufError(abs, `truncated header (file is ${fileSize} bytes)`);
  const tensorDataOffset = Number(out.tensorDataOffset);
  const tensors: GgufTensor[] = out.tensorInfos.map((t) => ({
    name: t.name,
    shape: t.shape.map(Number),
    dtype: Number(t.dtype),
    offset: Number(t.offset),
  }));
  let dataEnd = tensorDataOffset;
  for (const t of tensors) {
    const bytes = ggmlTensorBytes(t.dtype, t.shape);
    if (bytes !== undefined) dataEnd = Math.max(dataEnd, tensorDataOffset + t.offset + bytes);
  }
  if (dataEnd > fileSize) {
    throw ggufError(abs, `truncated tensor data (file is ${fileSize} bytes, its tensors need ${dataEnd})`);
  }
  if (typeof metadata['general.architecture'] !== 'string') {
    throw ggufError(abs, "no 'general.architecture' in the metadata");
  }
  return { path: abs, fileSize, version: Number(version), metadata, tensors, tensorDataOffset };
}

/** Checks the magic bytes ourselves so a wrong file gets a precise message. */
async function checkStart(abs: string, fileSize: number): Promise<void> {
  if (fileSize === 0) throw ggufError(abs, 'empty file (0 bytes)');
  const fh = await fs.promises.open(abs, 'r');
  const head = Buffer.alloc(Math.min(MIN_HEADER_BYTES, fileSize));
  try {
    await fh.read(head, 0, head.length, 0);
  } finally {
    await fh.close();
  }
  const magic = head.subarray(0, 4);
  if (!MAGIC.startsWith(magic.toString('latin1'))) {
    const shown = [...magic].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`));
    throw ggufError(abs, `not a GGUF file (bad magic '${shown.join('')}', expected 'GGUF')`);
  }
  if (fileSize < MIN_HEADER_BYTES) throw ggufError(abs, `truncated header (file is ${fileSize} bytes)`);
}

/** Reads a small F32 tensor (rope factor tables and the like); undefined when absent. */
export async function readGgufF32Tensor(file: GgufFile, name: string): Promise<Float32Array | undefined> {
  const t = file.tensors.find((x) => x.name === name);
  if (!t) return undefined;
  if (t.dtype !== 0) throw ggufError(file.path, `tensor '${name}' has ggml type ${t.dtype}, expected F32`);
  const count = t.shape.reduce((a, b) => a * b, 1);
  const buf = Buffer.alloc(count * 4);
  const fh = await fs.promises.open(file.path, 'r');
  try {
    const { bytesRead } = await fh.read(buf, 0, buf.length, file.tensorDataOffset + t.offset);
    if (bytesRead !== buf.length) throw ggufError(file.path, `truncated tensor data in '${name}'`);
  } finally {
    await fh.close();
  }
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = buf.readFloatLE(i * 4);
  return out;
}

// Typed accessors: GGUF writers pick various integer widths (u32, i32, u64),
// so numbers may come back as bigint.

export function ggufNumber(file: GgufFile, key: string): number | undefined {
  const v = file.metadata[key];
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'boolean') return v ? 1 : 0;
  return undefined;
}

export function ggufString(file: GgufFile, key: string): string | undefined {
  const v = file.metadata[key];
  return typeof v === 'string' ? v : undefined;
}

export function ggufBool(file: GgufFile, key: string): boolean | undefined {
  const v = file.metadata[key];
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number' || typeof v === 'bigint') return Number(v) !== 0;
  return undefined;
}

export function ggufArray(file: GgufFile, key: string): GgufValue[] | undefined {
  const v = file.metadata[key];
  return Array.isArray(v) ? v : undefined;
}
