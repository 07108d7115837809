/**
 * safetensors reader / writer (https://github.com/huggingface/safetensors format):
 * 8-byte little-endian header length, a JSON header `{name: {dtype, shape, data_offsets}}` plus an
 * optional `__metadata__` of strings, then the raw little-endian buffers.
 *
 * Files are read tensor by tensor with positioned reads (`SafetensorsFileReader`): only the header
 * and one tensor are in memory at a time, so a file's size is limited by the disk, not by Node's
 * 2 GiB buffer limit. Writes stream the same way (header, then one tensor at a time) into a temp
 * file that is renamed over the target, so a crash never leaves a half-written checkpoint.
 *
 * tfjs has no float16: F16 and BF16 are widened to float32 on read (exactly: every half and bfloat
 * value is a float32 value).
 */
import { closeSync, fstatSync, openSync, readSync, writeSync, renameSync, rmSync, mkdirSync } from 'node:fs';
import { dirname, join, basename } from 'node:path';

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

/** Where one tensor lies: `begin`/`end` are absolute byte offsets in `file`. */
export interface TensorEntry {
  name: string;
  dtype: DType;
  shape: number[];
  file: string;
  begin: number;
  end: number;
}

export const BYTES: Record<DType, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

/** Largest header the reader accepts (the Python library's limit is 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

/** Half → single, by table (65,536 entries, built on first use): exact, and ~10× faster than arithmetic. */
let F16_TABLE: Float32Array | null = null;
function f16Table(): Float32Array {
  if (F16_TABLE) return F16_TABLE;
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    table[h] = exp === 0 ? sign * 2 ** -14 * (frac / 1024) : exp === 0x1f ? (frac ? NaN : sign * Infinity) : sign * 2 ** (exp - 15) * (1 + frac / 1024);
  }
  return (F16_TABLE = table);
}

/**
 * Decodes raw little-endian bytes (aligned: offset 0 of `buf`, or a 4-byte aligned `byteOffset`) into a
 * typed array; F16/BF16 widened to float32, into `wide` when given (a reused buffer) else a new array.
 */
function decode(dtype: DType, buf: ArrayBuffer, byteOffset: number, count: number, where: string, wide?: Float32Array): TypedArray {
  switch (dtype) {
    case 'F32': return new Float32Array(buf, byteOffset, count);
    case 'F64': return new Float64Array(buf, byteOffset, count);
    case 'I32': return new Int32Array(buf, byteOffset, count);
    case 'I64': return new BigInt64Array(buf, byteOffset, count);
    case 'I16': return new Int16Array(buf, byteOffset, count);
    case 'I8': return new Int8Array(buf, byteOffset, count);
    case 'U8': case 'BOOL': return new Uint8Array(buf, byteOffset, count);
    case 'F16': {
      const src = new Uint16Array(buf, byteOffset, count);
      const table = f16Table();
      const out = wide ?? new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = table[src[i]!]!;
      return out;
    }
    case 'BF16': {
      const src = new Uint16Array(buf, byteOffset, count);
      const out = wide ?? new Float32Array(count);
      const bits = new Uint32Array(out.buffer, out.byteOffset, count);
      for (let i = 0; i < count; i++) bits[i] = src[i]! << 16;
      return out;
    }
    default: throw new Error(`${where}: unsupported dtype '${dtype as string}'`);
  }
}

/**
 * A destination for tensor reads that is allocated once and reused, so that reading a model does
 * not allocate a fresh buffer per tensor: fresh memory costs a page fault per 4 KiB on first touch,
 * which made up a third of an SD-sized load (docs/scale.md). `reserve` it for the largest tensor
 * first, or it grows as larger tensors come.
 *
 * What `SafetensorsFileReader.read(name, buffer)` returns is a view into the buffer: valid until the
 * buffer's next read. The float32 values start 64-byte aligned where the allocator allows (see
 * `ALIGNED_AT`), so that tfjs-node's TensorFlow can use them in place instead of copying them.
 */
export class ReadBuffer {
  /** Float32 results: F32 tensors are read straight into it, F16/BF16 widened into it. */
  private values = new ArrayBuffer(0);
  /** The raw bytes of tensors that are decoded into `values` (F16/BF16). */
  private staging = new Uint8Array(new ArrayBuffer(0));

  /** Grows the buffer to hold a tensor of `count` values of `dtype` without a later reallocation. */
  reserve(dtype: DType, count: number): void {
    const bytes = count * BYTES[dtype];
    if (dtype === 'F16' || dtype === 'BF16') {
      if (this.staging.length < bytes) this.staging = new Uint8Array(bytes);
      this.ensureValues(count * 4);
    } else {
      this.ensureValues(bytes);
    }
  }

  /** `bytes` bytes at the aligned start of the value buffer. */
  valueBytes(bytes: number): { buf: ArrayBuffer; byteOffset: number; view: Uint8Array } {
    this.ensureValues(bytes);
    return { buf: this.values, byteOffset: ALIGNED_AT, view: new Uint8Array(this.values, ALIGNED_AT, bytes) };
  }

  /** `count` float32 slots at the aligned start of the value buffer. */
  floats(count: number): Float32Array {
    this.ensureValues(count * 4);
    return new Float32Array(this.values, ALIGNED_AT, count);
  }

  /** `bytes` staging bytes (raw data to be decoded into the value buffer). */
  stagingBytes(bytes: number): Uint8Array<ArrayBuffer> {
    if (this.staging.length < bytes) this.staging = new Uint8Array(bytes);
    return this.staging.subarray(0, bytes);
  }

  private ensureValues(bytes: number): void {
    if (this.values.byteLength < ALIGNED_AT + bytes) this.values = new ArrayBuffer(ALIGNED_AT + bytes);
  }
}

/**
 * Where a ReadBuffer's values start. V8 takes large ArrayBuffers from glibc's malloc, which maps
 * them with a 16-byte chunk header: their data starts 16 bytes past a page boundary, so 48 bytes
 * further in it is 64-byte aligned, and TensorFlow (which needs 64-byte alignment) then uses the
 * memory as it is instead of copying it (measured: SD 2.1 float32 load 16.6 s → 10.4 s). With
 * another allocator it only costs that copy; correctness does not depend on it.
 */
const ALIGNED_AT = 48;

/** Parses and checks a header (the JSON text); offsets become absolute (`dataStart` added). */
function parseHeader(json: string, dataStart: number, fileSize: number, file: string): { entries: Map<string, TensorEntry>; metadata: Record<string, string> } {
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(json) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`${file}: safetensors header is not valid JSON (${(err as Error).message})`);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) throw new Error(`${file}: safetensors header is not a JSON object`);
  const entries = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = raw as Record<string, string>;
      continue;
    }
    const where = `${file}: tensor '${name}'`;
    const { dtype, shape, data_offsets: offsets } = (raw ?? {}) as { dtype?: DType; shape?: number[]; data_offsets?: [number, number] };
    if (!dtype || !(dtype in BYTES)) throw new Error(`${where}: unsupported dtype '${String(dtype)}'`);
    if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0)) throw new Error(`${where}: invalid shape ${JSON.stringify(shape)}`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) throw new Error(`${where}: invalid data_offsets ${JSON.stringify(offsets)}`);
    const [begin, end] = offsets;
    const count = shape.reduce((a, b) => a * b, 1);
    if (end - begin !== count * BYTES[dtype]) throw new Error(`${where}: ${end - begin} bytes for shape [${shape}] of ${dtype}`);
    if (dataStart + end > fileSize) throw new Error(`${where}: data runs past the end of the file (truncated? the file has ${fileSize} bytes, the tensor ends at ${dataStart + end})`);
    entries.set(name, { name, dtype, shape, file, begin: dataStart + begin, end: dataStart + end });
  }
  return { entries, metadata };
}

/** Parses a whole file held in memory (small files: fixtures, inputs). */
export function parseSafetensors(bytes: Uint8Array, file = '<buffer>'): SafetensorsFile {
  if (bytes.length < 8) throw new Error(`${file}: not a safetensors file (${bytes.length} bytes, no header)`);
  const headerLen = Number(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(0, true));
  if (headerLen > bytes.length - 8) throw new Error(`${file}: truncated safetensors file (header says ${headerLen} bytes, file has ${bytes.length - 8})`);
  const { entries, metadata } = parseHeader(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)), 8 + headerLen, bytes.length, file);
  const tensors = new Map<string, StoredTensor>();
  for (const e of entries.values()) {
    const count = e.shape.reduce((a, b) => a * b, 1);
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: decode(e.dtype, bytes.slice(e.begin, e.end).buffer, 0, count, `${file}: tensor '${e.name}'`) });
  }
  return { tensors, metadata };
}

/**
 * One safetensors file, open for positioned reads: the header is parsed on open, each tensor is
 * read when asked for. Synchronous, so that models can take their weights while they are built.
 */
export class SafetensorsFileReader {
  private fd: number | null;

  private constructor(readonly path: string, fd: number, readonly entries: Map<string, TensorEntry>, readonly metadata: Record<string, string>) {
    this.fd = fd;
  }

  static open(path: string): SafetensorsFileReader {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (err) {
      throw new Error(`${path}: cannot open safetensors file (${(err as Error).message})`);
    }
    try {
      const size = fstatSync(fd).size;
      if (size < 8) throw new Error(`${path}: not a safetensors file (${size} bytes, no header)`);
      const lenBytes = Buffer.alloc(8);
      readFully(fd, lenBytes, 0, path);
      const headerLen = Number(lenBytes.readBigUInt64LE(0));
      if (headerLen > size - 8) throw new Error(`${path}: truncated safetensors file (header says ${headerLen} bytes, file has ${size - 8})`);
      if (headerLen > MAX_HEADER_BYTES) throw new Error(`${path}: safetensors header of ${headerLen} bytes is larger than ${MAX_HEADER_BYTES} (not a safetensors file?)`);
      const headerBytes = Buffer.alloc(headerLen);
      readFully(fd, headerBytes, 8, path);
      const { entries, metadata } = parseHeader(headerBytes.toString('utf8'), 8 + headerLen, size, path);
      return new SafetensorsFileReader(path, fd, entries, metadata);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /**
   * Reads one tensor (F16/BF16 widened to float32). With `into`, the data is a view into that
   * reused buffer, valid until its next read; else a new array.
   */
  read(name: string, into?: ReadBuffer): StoredTensor {
    const e = this.entries.get(name);
    if (!e) throw new Error(`${this.path}: no tensor '${name}'`);
    if (this.fd === null) throw new Error(`${this.path}: read of '${name}' after close`);
    const where = `${this.path}: tensor '${name}'`;
    const count = e.shape.reduce((a, b) => a * b, 1);
    const bytes = e.end - e.begin;
    if (!into) {
      const fresh = new Uint8Array(bytes);
      readFully(this.fd, fresh, e.begin, where);
      return { dtype: e.dtype, shape: e.shape, data: decode(e.dtype, fresh.buffer, 0, count, where) };
    }
    if (e.dtype === 'F16' || e.dtype === 'BF16') {
      const raw = into.stagingBytes(bytes);
      readFully(this.fd, raw, e.begin, where);
      return { dtype: e.dtype, shape: e.shape, data: decode(e.dtype, raw.buffer, 0, count, where, into.floats(count)) };
    }
    const { buf, byteOffset, view } = into.valueBytes(bytes);
    readFully(this.fd, view, e.begin, where);
    return { dtype: e.dtype, shape: e.shape, data: decode(e.dtype, buf, byteOffset, count, where) };
  }

  /** Every tensor, in file order (small files only: they are all held at once). */
  readAll(): Map<string, StoredTensor> {
    return new Map([...this.entries.keys()].map((name) => [name, this.read(name)]));
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

/** Positioned read of exactly `target.length` bytes (readSync may return fewer; 2 GiB per call at most). */
function readFully(fd: number, target: Uint8Array, position: number, where: string): void {
  const CHUNK = 1 << 30;
  let done = 0;
  while (done < target.length) {
    const n = readSync(fd, target, done, Math.min(CHUNK, target.length - done), position + done);
    if (n === 0) throw new Error(`${where}: unexpected end of file at byte ${position + done}`);
    done += n;
  }
}

/** Header only: tensor names, dtypes, shapes and offsets, without reading any tensor data. */
export function readSafetensorsHeader(path: string): { entries: Map<string, TensorEntry>; metadata: Record<string, string> } {
  const reader = SafetensorsFileReader.open(path);
  reader.close();
  return { entries: reader.entries, metadata: reader.metadata };
}

/** Every tensor of a file (read tensor by tensor, so files over 2 GiB work; all are held at the end). */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  const reader = SafetensorsFileReader.open(path);
  try {
    return { tensors: reader.readAll(), metadata: reader.metadata };
  } finally {
    reader.close();
  }
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

/** What the streaming writer needs to know of a tensor before its data is produced. */
export interface TensorSpec {
  shape: number[];
  dtype: DType;
}

type Tensors = Record<string, { shape: number[]; data: TypedArray; dtype?: DType }>;

/** The header bytes (names sorted, as the Python library writes them; data start aligned to 8) and each tensor's offset. */
function buildHeader(specs: Record<string, TensorSpec>, metadata?: Record<string, string>): { bytes: Uint8Array; names: string[]; total: number } {
  const names = Object.keys(specs).sort();
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const name of names) {
    const { shape, dtype } = specs[name]!;
    const bytes = shape.reduce((a, b) => a * b, 1) * BYTES[dtype];
    header[name] = { dtype, shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((Buffer.byteLength(json) + 8) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const bytes = new Uint8Array(8 + headerBytes.length);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  bytes.set(headerBytes, 8);
  return { bytes, names, total: offset };
}

/** Serialises small tensor sets into one buffer (sorted by name, as the Python library does). */
export function serializeSafetensors(tensors: Tensors, metadata?: Record<string, string>): Uint8Array {
  const specs = specsOf(tensors);
  const { bytes, names, total } = buildHeader(specs, metadata);
  const out = new Uint8Array(bytes.length + total);
  out.set(bytes, 0);
  let pos = bytes.length;
  for (const name of names) {
    const d = tensors[name]!.data;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), pos);
    pos += d.byteLength;
  }
  return out;
}

function specsOf(tensors: Tensors): Record<string, TensorSpec> {
  const specs: Record<string, TensorSpec> = {};
  for (const [name, t] of Object.entries(tensors)) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) throw new Error(`tensor '${name}': shape [${t.shape}] holds ${count} values, data has ${t.data.length}`);
    specs[name] = { shape: t.shape, dtype: t.dtype ?? dtypeOf(t.data) };
  }
  return specs;
}

/**
 * Streams a safetensors file: the header from `specs`, then each tensor's bytes from `produce(name)`,
 * called once per tensor in file order and released before the next, so memory holds one tensor at
 * a time. Written synchronously (the values are those of the moment of the call, even while a
 * training stream goes on) into a temp file beside `path`, then renamed over it.
 */
export function writeSafetensorsStreaming(path: string, specs: Record<string, TensorSpec>, produce: (name: string) => TypedArray, metadata?: Record<string, string>): void {
  const { bytes, names } = buildHeader(specs, metadata);
  mkdirSync(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Date.now()}`);
  let fd: number | null = null;
  try {
    fd = openSync(tmp, 'w');
    writeFully(fd, bytes);
    for (const name of names) {
      const spec = specs[name]!;
      const data = produce(name);
      const count = spec.shape.reduce((a, b) => a * b, 1);
      if (data.length !== count) throw new Error(`${path}: tensor '${name}': shape [${spec.shape}] holds ${count} values, data has ${data.length}`);
      if (dtypeOf(data) !== spec.dtype && !(spec.dtype === 'BOOL' && data instanceof Uint8Array)) throw new Error(`${path}: tensor '${name}': declared ${spec.dtype}, data is ${dtypeOf(data)}`);
      writeFully(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
    closeSync(fd);
    fd = null;
    renameSync(tmp, path);
  } catch (err) {
    if (fd !== null) closeSync(fd);
    rmSync(tmp, { force: true });
    throw err instanceof Error && !err.message.includes(path) ? new Error(`${path}: cannot write (${err.message})`) : err;
  }
}

function writeFully(fd: number, data: Uint8Array): void {
  const CHUNK = 1 << 30;
  let done = 0;
  while (done < data.length) done += writeSync(fd, data, done, Math.min(CHUNK, data.length - done));
}

/** Writes tensors held in memory (streamed to disk one tensor at a time; atomic). */
export async function writeSafetensors(path: string, tensors: Tensors, metadata?: Record<string, string>): Promise<void> {
  writeSafetensorsStreaming(path, specsOf(tensors), (name) => tensors[name]!.data, metadata);
}
