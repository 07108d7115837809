/**
 * .npy reading (NumPy format 1.0 / 2.0 / 3.0) and the converter from the official SwiftBrush
 * preparation layout: `prompts.txt` (one prompt a line) + a folder of `{i}.npy`, each the
 * [77, 1024] float32 CLIP last hidden state of prompt i (a leading batch dim of 1 is accepted).
 * dtypes: '<f4' (and '|f4'-style native little-endian) and '<f2' (widened to float32).
 */
import { readFile } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';
import { EmbeddingParquetWriter, type WriteOptions } from './writer.ts';
import { halfToFloat } from './parquet.ts';

export interface NpyArray {
  data: Float32Array;
  shape: number[];
  /** The header's descr, e.g. '<f4'. */
  descr: string;
}

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY

/** Parses a .npy buffer. `name` is used in error messages. */
export function parseNpy(buf: Uint8Array, name = '.npy'): NpyArray {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < 10 || !b.subarray(0, 6).equals(MAGIC)) throw new Error(`${name}: not a .npy file (no \\x93NUMPY magic)`);
  const major = b[6]!;
  let headerLen: number;
  let start: number;
  if (major === 1) {
    headerLen = b.readUInt16LE(8);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (b.length < 12) throw new Error(`${name}: truncated .npy header`);
    headerLen = b.readUInt32LE(8);
    start = 12;
  } else throw new Error(`${name}: unsupported .npy format version ${major}.${b[7]}`);
  if (start + headerLen > b.length) throw new Error(`${name}: truncated .npy header (${headerLen} bytes announced, file has ${b.length})`);
  const header = b.subarray(start, start + headerLen).toString(major === 3 ? 'utf8' : 'latin1');
  const descr = /['"]descr['"]\s*:\s*['"]([^'"]+)['"]/.exec(header)?.[1];
  const fortran = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new Error(`${name}: malformed .npy header ${JSON.stringify(header.trim())}`);
  }
  if (fortran === 'True') throw new Error(`${name}: fortran_order arrays are not supported (save with np.ascontiguousarray)`);
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      const n = Number(s.replace(/L$/, ''));
      if (!Number.isInteger(n) || n < 0) throw new Error(`${name}: bad shape (${shapeText}) in .npy header`);
      return n;
    });
  const count = shape.reduce((a, c) => a * c, 1);
  const dataStart = start + headerLen;
  let width: number;
  if (descr === '<f4' || descr === '|f4' || descr === '=f4') width = 4;
  else if (descr === '<f2' || descr === '|f2' || descr === '=f2') width = 2;
  else throw new Error(`${name}: dtype '${descr}' is not supported (expected '<f4' float32 or '<f2' float16)`);
  const need = count * width;
  const have = b.length - dataStart;
  if (have < need) throw new Error(`${name}: truncated data: shape (${shape.join(', ')}) needs ${need} bytes, file has ${have}`);
  if (have > need) throw new Error(`${name}: ${have - need} unexpected trailing bytes after the data of shape (${shape.join(', ')})`);
  const data = new Float32Array(count);
  const raw = b.subarray(dataStart, dataStart + need);
  if (width === 4) new Uint8Array(data.buffer).set(raw);
  else {
    const h = new Uint16Array(count);
    new Uint8Array(h.buffer).set(raw);
    halfToFloat(h, data);
  }
  return { data, shape, descr };
}

export async function readNpy(path: string): Promise<NpyArray> {
  return parseNpy(await readFile(path), path);
}

export interface ImportNpyOptions extends WriteOptions {
  /** Folder of `{i}.npy` (default: the prompts file's path without `.txt`, the official layout). */
  dir?: string;
  /** A .npy holding the empty prompt's embedding: written as an extra row with prompt "". */
  nullNpy?: string;
  /** Called after each row is added. */
  onProgress?: (done: number, total: number) => void;
}

/** Prompts of a prompts.txt: one a line; a trailing newline does not make an extra prompt. */
export function parsePromptLines(text: string): string[] {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return lines;
}

/**
 * Converts prompts.txt + `{i}.npy` into one embedding Parquet file (list<float32> with shape
 * metadata), streaming row group by row group. Every .npy must exist and share one [L, D] shape.
 */
export async function importNpy(promptsFile: string, out: string, options: ImportNpyOptions = {}): Promise<{ rows: number; shape: [number, number] }> {
  const prompts = parsePromptLines(await readFile(promptsFile, 'utf8'));
  if (prompts.length === 0) throw new Error(`${promptsFile}: no prompts`);
  const dir = options.dir ?? join(dirname(promptsFile), basename(promptsFile, extname(promptsFile)));
  const group = options.rowGroupSize ?? 1024;
  const toMatrix = (a: NpyArray, name: string): [number, number] => {
    const dims = [...a.shape];
    while (dims.length > 2 && dims[0] === 1) dims.shift();
    if (dims.length !== 2) throw new Error(`${name}: shape (${a.shape.join(', ')}), expected (L, D) or (1, L, D)`);
    return [dims[0]!, dims[1]!];
  };
  const load = async (i: number) => {
    const path = join(dir, `${i}.npy`);
    try {
      return { path, arr: await readNpy(path) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`${path}: missing (prompt ${i} of ${promptsFile}: ${JSON.stringify(prompts[i])})`);
      throw err;
    }
  };
  const first = await load(0);
  const shape = toMatrix(first.arr, first.path);
  const per = shape[0] * shape[1];
  const w = await EmbeddingParquetWriter.create(out, shape, { ...options, rowGroupSize: group });
  try {
    const total = prompts.length + (options.nullNpy ? 1 : 0);
    let bufPrompts: string[] = [];
    let buf = new Float32Array(group * per);
    let done = 0;
    const add = async (prompt: string, a: NpyArray, name: string) => {
      const s = toMatrix(a, name);
      if (s[0] !== shape[0] || s[1] !== shape[1]) throw new Error(`${name}: shape [${s.join(', ')}] differs from ${first.path}'s [${shape.join(', ')}]`);
      for (let k = 0; k < a.data.length; k++) {
        const v = a.data[k]!;
        if (v - v !== 0) throw new Error(`${name}: non-finite value (${v}) at index ${k}`);
      }
      buf.set(a.data, bufPrompts.length * per);
      bufPrompts.push(prompt);
      done++;
      options.onProgress?.(done, total);
      if (bufPrompts.length === group) {
        await w.write(bufPrompts, buf);
        bufPrompts = [];
        buf = new Float32Array(group * per);
      }
    };
    for (let i = 0; i < prompts.length; i++) {
      const { path, arr } = i === 0 ? first : await load(i);
      if (prompts[i] === '') throw new Error(`${promptsFile}: line ${i + 1} is empty: "" is reserved for the null prompt (use --null-npy)`);
      await add(prompts[i]!, arr, path);
    }
    if (options.nullNpy) await add('', await readNpy(options.nullNpy), options.nullNpy);
    if (bufPrompts.length > 0) await w.write(bufPrompts, buf.subarray(0, bufPrompts.length * per));
    await w.close();
    return { rows: done, shape };
  } catch (err) {
    await w.abort(err);
    throw err;
  }
}
