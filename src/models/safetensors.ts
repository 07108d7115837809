/**
 * safetensors reader / writer (https://github.com/huggingface/safetensors format):
 * 8-byte little-endian header length, a JSON header `{name: {dtype, shape, data_offsets}}` plus an
 * optional `__metadata__` of strings, then the raw little-endian buffers.
 *
 * tfjs has no float16: F16 and BF16 are widened to float32 on read. Writes are atomic (temp file
 * then rename), so a crash never leaves a half-written checkpoint.
 */
import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../util/fs.ts';

export type DType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';
export type TypedArray = Float32Array | Float64Array | Int32Array | BigInt64Array | Int16Array | Int8Array | Uint8Array;

export interface StoredTensor {
  /** dtype as stored in the file (F16/BF16 data is returned widened to Float32Array). */
  dtype: DType;
  shape: number[];
  data: TypedArray;
}

export interface SafetensorsFile {
  tensors: Map<string, StoredTensor>;
  metadata: Record<string, string>;
}

const BYTES: Record<DType, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

function decode(dtype: DType, bytes: Uint8Array, count: number, where: string): TypedArray {
  // Copy into an aligned buffer: offsets inside the file need not be aligned to the element size.
  const buf = bytes.slice().buffer;
  switch (dtype) {
    case 'F32': return new Float32Array(buf, 0, count);
    case 'F64': return new Float64Array(buf, 0, count);
    case 'I32': return new Int32Array(buf, 0, count);
    case 'I64': return new BigInt64Array(buf, 0, count);
    case 'I16': return new Int16Array(buf, 0, count);
    case 'I8': return new Int8Array(buf, 0, count);
    case 'U8': case 'BOOL': return new Uint8Array(buf, 0, count);
    case 'F16': {
      const src = new Uint16Array(buf, 0, count);
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = f16ToF32(src[i]!);
      return out;
    }
    case 'BF16': {
      const src = new Uint16Array(buf, 0, count);
      const wide = new Uint32Array(count);
      for (let i = 0; i < count; i++) wide[i] = src[i]! << 16;
      return new Float32Array(wide.buffer);
    }
    default: throw new Error(`${where}: unsupported dtype '${dtype as string}'`);
  }
}

export function parseSafetensors(bytes: Uint8Array, file = '<buffer>'): SafetensorsFile {
  if (bytes.length < 8) throw new Error(`${file}: not a safetensors file (${bytes.length} bytes, no header)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > bytes.length - 8) throw new Error(`${file}: truncated safetensors file (header says ${headerLen} bytes, file has ${bytes.length - 8})`);
  let header: Record<string, { dtype: DType; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
  } catch (err) {
    throw new Error(`${file}: safetensors header is not valid JSON (${(err as Error).message})`);
  }
  const dataStart = 8 + headerLen;
  const tensors = new Map<string, StoredTensor>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = entry as Record<string, string>;
      continue;
    }
    const { dtype, shape, data_offsets: [begin, end] } = entry as { dtype: DType; shape: number[]; data_offsets: [number, number] };
    const where = `${file}: tensor '${name}'`;
    if (!(dtype in BYTES)) throw new Error(`${where}: unsupported dtype '${dtype}'`);
    const count = shape.reduce((a, b) => a * b, 1);
    if (end - begin !== count * BYTES[dtype]) throw new Error(`${where}: ${end - begin} bytes for shape [${shape}] of ${dtype}`);
    if (dataStart + end > bytes.length) throw new Error(`${where}: data runs past the end of the file (truncated?)`);
    tensors.set(name, { dtype, shape, data: decode(dtype, bytes.subarray(dataStart + begin, dataStart + end), count, where) });
  }
  return { tensors, metadata };
}

export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  return parseSafetensors(new Uint8Array(await readFile(path)), path);
}

function dtypeOf(data: TypedArray): DType {
  if (data instanceof Float32Array) return 'F32';
  if (data instanceof Float64Array) return 'F64';
  if (data instanceof Int32Array) return 'I32';
  if (data instanceof BigInt64Array) return 'I64';
  if (data instanceof Int16Array) return 'I16';
  if (data instanceof Int8Array) return 'I8';
  return 'U8';
}

/** Serialises tensors (sorted by name, as the Python library does) into one buffer. */
export function serializeSafetensors(tensors: Record<string, { shape: number[]; data: TypedArray; dtype?: DType }>, metadata?: Record<string, string>): Uint8Array {
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const name of names) {
    const t = tensors[name]!;
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) throw new Error(`tensor '${name}': shape [${t.shape}] holds ${count} values, data has ${t.data.length}`);
    const dtype = t.dtype ?? dtypeOf(t.data);
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((json.length + 8) % 8)) % 8); // align the data start to 8 bytes
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let pos = 8 + headerBytes.length;
  for (const name of names) {
    const d = tensors[name]!.data;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), pos);
    pos += d.byteLength;
  }
  return out;
}

export async function writeSafetensors(path: string, tensors: Record<string, { shape: number[]; data: TypedArray; dtype?: DType }>, metadata?: Record<string, string>): Promise<void> {
  await writeFileAtomic(path, serializeSafetensors(tensors, metadata));
}
