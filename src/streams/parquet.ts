/**
 * One embedding Parquet file, read row group by row group with parquet-wasm (arrow-rs compiled to
 * WebAssembly) through a file-backed Blob (`fs.openAsBlob`): only the footer and the column chunks
 * of the requested row group are read from disk, never the whole file. Each row group comes back as
 * Arrow IPC and is parsed by apache-arrow's `tableFromIPC`; the float child of a list column is one
 * contiguous typed array, so a row group's embeddings are a zero-copy view [rows, L, D].
 *
 * Layouts: `list<float32>`, `large_list<float32>`, `fixed_size_list<float32>` (flat;
 * shape from the key-value metadata `swiftbrush.embedding_shape`), `list<list<float32>>` and other
 * nestings (shape from the data), `binary` / `large_binary` / `fixed_size_binary` holding raw
 * little-endian float32 or float16 (`swiftbrush.embedding_dtype`). float16 leaves are widened to
 * float32 (exact). float64 leaves are refused unless `allowFloat64` (then narrowed to float32; a
 * value that overflows becomes ±Inf and is refused like any non-finite value).
 */
import { openAsBlob } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { endianness } from 'node:os';
import * as pw from 'parquet-wasm';
import { DataType, tableFromIPC, type Data, type Field, type Vector } from 'apache-arrow';
import { log } from '../log.ts';
import { EmbeddingFormatError, errorMessage } from './errors.ts';
import { decodeInWorker, workerAvailable } from './decode.ts';

export const SHAPE_KEY = 'swiftbrush.embedding_shape';
export const DTYPE_KEY = 'swiftbrush.embedding_dtype';
export const DEFAULT_PROMPT_COLUMN = 'prompt';
export const DEFAULT_EMBEDDING_COLUMN = 'prompt_embeds';

export type EmbeddingDtype = 'float32' | 'float16' | 'float64';
/**
 * Where the [L, D] shape came from: the file's metadata, nested lists, the caller's `shape`, the
 * model's width (`width`: D = the UNet's cross_attention_dim, L = row length / D), or `inferred`, a
 * guess from the row length alone (see inferShape) that only `inspect` and library callers without
 * a model meet.
 */
export type ShapeSource = 'metadata' | 'data' | 'option' | 'model' | 'inferred';

export interface OpenOptions {
  promptColumn?: string;
  embeddingColumn?: string;
  /** Shape to use when the file carries none (flat lists without metadata); must match the rows. */
  shape?: [number, number];
  /**
   * D of a file without shape metadata (flat lists, as polars and duckdb write them): the model's
   * cross_attention_dim. L = row length / D; a row length D does not divide is refused.
   */
  width?: number;
  /** Accept float64 embeddings by narrowing them to float32 (default: refuse). */
  allowFloat64?: boolean;
  /** Decode row groups in the shared worker thread (default true; falls back in-process). */
  decodeWorker?: boolean;
}

export interface EmbeddingFileInfo {
  path: string;
  rows: number;
  rowGroupRows: number[];
  /** e.g. `list<float32>`, `large_list<float32>`, `fixed_size_list<float32>[256]`, `binary (float16)`. */
  layout: string;
  dtype: EmbeddingDtype;
  shape: [number, number];
  shapeSource: ShapeSource;
  createdBy: string | undefined;
  compression: string[];
  promptColumn: string;
  embeddingColumn: string;
  metadata: Record<string, string>;
}

/** A decoded row group: `embeds` is [rows, L, D] (often a view into the Arrow buffer). */
export interface DecodedGroup {
  rows: number;
  prompts: (string | null)[];
  embeds: Float32Array;
}

export interface NonFiniteReport {
  nanCount: number;
  infCount: number;
  /** File row of the first non-finite value, if any. */
  firstRow: number | undefined;
}

type LeafKind = 'float32' | 'float16' | 'float64' | 'bytes';

interface Level {
  kind: 'list' | 'large_list' | 'fixed_size_list';
  size?: number;
}

const LITTLE_ENDIAN = endianness() === 'LE';

export class EmbeddingFile {
  private readonly levels: Level[];
  private readonly leaf: LeafKind;
  private readonly rowStart: number[];
  private closed = false;
  private readonly ahead = new Map<number, Promise<Uint8Array>>();
  /** Identifies this version of the file for the worker's handle cache. */
  key = '';
  useWorker = true;

  private constructor(
    private readonly pf: pw.ParquetFile,
    readonly info: EmbeddingFileInfo,
    levels: Level[],
    leaf: LeafKind,
  ) {
    this.levels = levels;
    this.leaf = leaf;
    this.rowStart = [0];
    for (const n of info.rowGroupRows) this.rowStart.push(this.rowStart[this.rowStart.length - 1]! + n);
  }

  /** Opens the footer and checks the schema; refuses anything that cannot be a valid embedding file. */
  static async open(path: string, options: OpenOptions = {}): Promise<EmbeddingFile> {
    await checkMagic(path);
    let pf: pw.ParquetFile;
    try {
      pf = await pw.ParquetFile.fromFile(await openAsBlob(path));
    } catch (err) {
      throw new EmbeddingFormatError({ file: path }, `cannot read the Parquet footer (truncated or corrupt file?): ${errorMessage(err)}`, { cause: err });
    }
    try {
      const f = await EmbeddingFile.describe(path, pf, options);
      const st = await stat(path);
      f.key = `${path}\0${st.size}\0${st.mtimeMs}\0${st.ino}`;
      f.useWorker = options.decodeWorker ?? true;
      return f;
    } catch (err) {
      pf.free();
      throw err;
    }
  }

  private static async describe(path: string, pf: pw.ParquetFile, options: OpenOptions): Promise<EmbeddingFile> {
    const md = pf.metadata();
    const fm = md.fileMetadata();
    const rowGroupRows: number[] = [];
    const compression = new Set<string>();
    for (const rg of md.rowGroups()) {
      rowGroupRows.push(rg.numRows());
      for (const c of rg.columns()) compression.add(pw.Compression[c.compression()] ?? String(c.compression()));
      rg.free();
    }
    const metadata: Record<string, string> = {};
    for (const [k, v] of fm.keyValueMetadata()) if (k !== 'ARROW:schema' && typeof v === 'string') metadata[String(k)] = v;
    const createdBy = fm.createdBy();
    fm.free();
    md.free();

    let schema;
    try {
      schema = tableFromIPC(pf.schema().intoIPCStream()).schema;
    } catch (err) {
      throw new EmbeddingFormatError({ file: path }, `cannot convert the schema to Arrow: ${errorMessage(err)}`, { cause: err });
    }
    for (const [k, v] of schema.metadata) metadata[k] ??= v;
    const promptColumn = options.promptColumn ?? DEFAULT_PROMPT_COLUMN;
    const embeddingColumn = options.embeddingColumn ?? DEFAULT_EMBEDDING_COLUMN;
    const names = schema.fields.map((f) => f.name);
    const columns = `columns: ${names.join(', ') || '(none)'}`;
    const embedField = schema.fields.find((f) => f.name === embeddingColumn);
    if (!embedField) throw new EmbeddingFormatError({ file: path }, `no embedding column '${embeddingColumn}' (${columns})`);
    const promptField = schema.fields.find((f) => f.name === promptColumn);
    if (!promptField) throw new EmbeddingFormatError({ file: path }, `no prompt column '${promptColumn}' (${columns})`);
    if (!isStringType(promptField.type)) {
      throw new EmbeddingFormatError({ file: path }, `column '${promptColumn}' is ${promptField.type}, expected a string column`);
    }
    for (const [k, v] of embedField.metadata) metadata[k] ??= v;

    const { levels, leaf, layout } = analyseType(path, embedField);
    const rows = rowGroupRows.reduce((a, b) => a + b, 0);

    let dtype: EmbeddingDtype;
    if (leaf === 'bytes') dtype = parseDtype(path, metadata[DTYPE_KEY]) ?? 'float32';
    else dtype = leaf;
    if (dtype === 'float64' && !options.allowFloat64) {
      throw new EmbeddingFormatError(
        { file: path },
        `'${embeddingColumn}' holds float64 values (${layout}); expected float32 or float16. Write the embeddings as float32 ` +
          `(e.g. .astype(np.float32)) or pass --allow-float64 / allowFloat64 to narrow them to float32 while reading`,
      );
    }

    // Shape: metadata first, then the data (nested lists), then the caller, then a guess.
    const metaShape = metadata[SHAPE_KEY] !== undefined ? parseShape(path, metadata[SHAPE_KEY]!) : undefined;
    let shape: [number, number] | undefined;
    let shapeSource: ShapeSource = 'metadata';
    let dataDims: number[] | undefined;
    const firstGroup = rowGroupRows.findIndex((n) => n > 0);
    if (levels.some((l) => l.kind !== 'fixed_size_list') || leaf === 'bytes') {
      if (firstGroup >= 0) dataDims = await firstRowDims(pf, path, firstGroup, embeddingColumn, levels, leaf, rowGroupRows[firstGroup]!);
    } else {
      dataDims = levels.map((l) => l.size!);
    }
    if (dataDims && leaf === 'bytes') {
      // Row length in bytes; the dtype decides how many values that is.
      const bytes = dataDims[0]!;
      if (metadata[DTYPE_KEY] === undefined && metaShape) {
        const n = metaShape[0] * metaShape[1];
        if (bytes === n * 2) dtype = 'float16';
        else if (bytes === n * 4) dtype = 'float32';
      }
      const width = dtype === 'float16' ? 2 : dtype === 'float64' ? 8 : 4;
      dataDims = [bytes / width];
    }
    const nested = dataDims ? squeeze(dataDims) : undefined;
    if (metaShape) {
      shape = metaShape;
      if (nested && product(nested) !== product(metaShape)) {
        throw new EmbeddingFormatError(
          { file: path, rowGroup: firstGroup, row: firstGroup >= 0 ? rowStartOf(rowGroupRows, firstGroup) : undefined },
          `${SHAPE_KEY} says [${metaShape.join(', ')}] (${product(metaShape)} values) but the first row has ${product(nested)} values`,
        );
      }
    } else if (nested && nested.length === 2) {
      shape = [nested[0]!, nested[1]!];
      shapeSource = 'data';
    } else if (nested && nested.length > 2) {
      throw new EmbeddingFormatError({ file: path }, `embeddings have shape [${nested.join(', ')}] per row; expected [L, D]`);
    } else if (options.shape) {
      shape = options.shape;
      shapeSource = 'option';
      if (nested && product(nested) !== product(shape)) {
        throw new EmbeddingFormatError({ file: path }, `shape [${shape.join(', ')}] was requested but rows have ${product(nested)} values`);
      }
    } else if (nested && options.width !== undefined) {
      const n = nested[0]!;
      const D = options.width;
      if (n % D !== 0) {
        throw new EmbeddingFormatError(
          { file: path },
          `rows hold ${n} values and the file has no ${SHAPE_KEY} metadata; the model's cross_attention_dim ${D} does not divide ${n}, ` +
            `so these embeddings do not fit this model (embed the prompts with its text encoder, or check the shape with \`swiftbrush inspect --shape L,D\`)`,
        );
      }
      shape = [n / D, D];
      shapeSource = 'model';
    } else if (nested) {
      shape = inferShape(nested[0]!);
      shapeSource = 'inferred';
      log.warn({ file: path, rowLength: nested[0], guess: shape }, `no ${SHAPE_KEY} metadata: rows hold ${nested[0]} values and [L, D] is ambiguous; pass --shape L,D (option \`shape\`) or the model's width (option \`width\`)`);
    } else {
      throw new EmbeddingFormatError({ file: path }, `file has no rows and no ${SHAPE_KEY} metadata: the embedding shape is unknown`);
    }
    if (leaf === 'bytes' && dataDims && !Number.isInteger(dataDims[0])) {
      throw new EmbeddingFormatError({ file: path, rowGroup: firstGroup, row: rowStartOf(rowGroupRows, firstGroup) }, `row is not a whole number of ${dtype} values`);
    }

    const info: EmbeddingFileInfo = {
      path,
      rows,
      rowGroupRows,
      layout: leaf === 'bytes' ? `${layout} (raw little-endian ${dtype})` : layout,
      dtype,
      shape,
      shapeSource,
      createdBy,
      compression: [...compression],
      promptColumn,
      embeddingColumn,
      metadata,
    };
    return new EmbeddingFile(pf, info, levels, leaf === 'bytes' ? 'bytes' : leaf);
  }

  get numRowGroups(): number {
    return this.info.rowGroupRows.length;
  }

  /** File row index of the first row of row group `g`. */
  rowStartOf(g: number): number {
    return this.rowStart[g]!;
  }

  private checkGroup(g: number): void {
    if (this.closed) throw new Error(`${this.info.path} is closed`);
    // parquet-wasm panics (and poisons its instance) on an out-of-range row group: check here.
    if (!Number.isInteger(g) || g < 0 || g >= this.numRowGroups) throw new RangeError(`${this.info.path}: no row group ${g} (${this.numRowGroups} row groups)`);
  }

  private fullColumns(): string[] {
    return [this.info.promptColumn, this.info.embeddingColumn];
  }

  /** Starts decoding row group `g` in the worker so that a later readRowGroup(g) finds it ready. */
  readAhead(g: number): void {
    this.checkGroup(g);
    if (!this.useWorker || this.ahead.has(g) || !workerAvailable()) return;
    const p = decodeInWorker(this.key, this.info.path, g, this.fullColumns(), Math.max(1, this.info.rowGroupRows[g]!));
    p.catch(() => undefined);
    this.ahead.set(g, p);
  }

  private async readTable(g: number, columns: string[]) {
    this.checkGroup(g);
    const rows = this.info.rowGroupRows[g]!;
    const full = columns.length === 2;
    try {
      let ipc: Uint8Array;
      const early = full ? this.ahead.get(g) : undefined;
      if (early) {
        this.ahead.delete(g);
        ipc = await early;
      } else if (this.useWorker && workerAvailable()) {
        ipc = await decodeInWorker(this.key, this.info.path, g, columns, Math.max(1, rows));
      } else {
        ipc = (await this.pf.read({ rowGroups: [g], columns, batchSize: Math.max(1, rows) })).intoIPCStream();
      }
      return tableFromIPC(ipc);
    } catch (err) {
      throw new EmbeddingFormatError({ file: this.info.path, rowGroup: g }, `cannot decode the row group: ${errorMessage(err)}`, { cause: err });
    }
  }

  /** Reads only the prompt column of a row group (cheap: used to skip, count and find null prompts). */
  async readPrompts(g: number): Promise<(string | null)[]> {
    const t = await this.readTable(g, [this.info.promptColumn]);
    return readStrings(t.getChild(this.info.promptColumn)!, t.numRows);
  }

  /**
   * Decodes row group `g`: prompts and [rows, L, D] float32. Validates every row: nulls, lengths,
   * and (unless `nonFinite` is given, which then receives counts instead) NaN / Inf.
   */
  async readRowGroup(g: number, nonFinite?: NonFiniteReport): Promise<DecodedGroup> {
    const { path, promptColumn, embeddingColumn, shape } = this.info;
    const t = await this.readTable(g, this.fullColumns());
    const rows = t.numRows;
    const base = this.rowStart[g]!;
    if (rows !== this.info.rowGroupRows[g]) {
      throw new EmbeddingFormatError({ file: path, rowGroup: g }, `decoded ${rows} rows, the footer says ${this.info.rowGroupRows[g]}`);
    }
    const prompts = readStrings(t.getChild(promptColumn)!, rows);
    const col = t.getChild(embeddingColumn)!;
    const perRow = shape[0] * shape[1];
    const chunks: Float32Array[] = [];
    let row0 = 0;
    for (const data of col.data) {
      chunks.push(this.flattenChunk(data, g, base + row0, perRow));
      row0 += data.length;
    }
    const embeds = chunks.length === 1 ? chunks[0]! : concat(chunks, rows * perRow);
    scanFinite(embeds, perRow, path, g, base, nonFinite);
    return { rows, prompts, embeds };
  }

  /** One Arrow chunk of the embedding column → contiguous float32 [n, L, D] (view when possible). */
  private flattenChunk(data: Data, g: number, firstRow: number, perRow: number): Float32Array {
    const { path, shape } = this.info;
    const n = data.length;
    const where = (r: number) => ({ file: path, rowGroup: g, row: firstRow + r });
    if (data.nullCount > 0) {
      for (let r = 0; r < n; r++) if (!isValidAt(data, r)) throw new EmbeddingFormatError(where(r), `'${this.info.embeddingColumn}' is null`);
    }
    if (this.leaf === 'bytes') return this.bytesChunk(data, g, firstRow, perRow);

    // Map row boundaries through every list level down to leaf indices, checking uniform lengths.
    const expectDims = this.levels.length === 1 ? [perRow] : squeezeTo(this.levels.length, shape);
    let bounds: Float64Array = new Float64Array(n + 1);
    for (let r = 0; r <= n; r++) bounds[r] = r;
    let cur: Data = data;
    for (let k = 0; k < this.levels.length; k++) {
      const level = this.levels[k]!;
      const want = expectDims[k]!;
      const next = new Float64Array(bounds.length);
      const offsets = cur.valueOffsets as Int32Array | BigInt64Array | undefined;
      const stride = level.size ?? 0;
      const at = (i: number) => (level.kind === 'fixed_size_list' ? i * stride : Number(offsets![i]!));
      if (k === 0) {
        for (let r = 0; r <= n; r++) next[r] = at(r);
        for (let r = 0; r < n; r++) {
          const len = next[r + 1]! - next[r]!;
          if (len !== want) throw new EmbeddingFormatError(where(r), lengthProblem(r + firstRow, len, want, this.levels.length === 1, shape, 0));
        }
      } else {
        // Every item of this level inside the rows must have the same length.
        for (let r = 0; r < n; r++) {
          for (let i = bounds[r]!; i < bounds[r + 1]!; i++) {
            const len = at(i + 1) - at(i);
            if (len !== want) {
              throw new EmbeddingFormatError(where(r), `item ${i - bounds[r]!} has ${len} values, expected ${want} (shape [${shape.join(', ')}])`);
            }
          }
        }
        for (let r = 0; r <= n; r++) next[r] = at(bounds[r]!);
      }
      bounds = next;
      const child: Data = cur.children[0]!;
      if (child.nullCount > 0) {
        for (let i = 0; i < child.length; i++) {
          if (!isValidAt(child, i)) {
            const r = upperBound(bounds, i) - 1;
            throw new EmbeddingFormatError(where(Math.max(0, r)), `null value inside the embedding`);
          }
        }
      }
      cur = child;
    }
    const start = bounds[0]!;
    const end = bounds[n]!;
    const values = cur.values as Float32Array | Float64Array | Uint16Array;
    if (this.leaf === 'float32') return (values as Float32Array).subarray(start, end);
    const out = new Float32Array(end - start);
    if (this.leaf === 'float64') out.set((values as Float64Array).subarray(start, end));
    else halfToFloat((values as Uint16Array).subarray(start, end), out);
    return out;
  }

  private bytesChunk(data: Data, g: number, firstRow: number, perRow: number): Float32Array {
    const { path, shape, dtype } = this.info;
    const n = data.length;
    const width = dtype === 'float16' ? 2 : dtype === 'float64' ? 8 : 4;
    const want = perRow * width;
    const bytes = data.values as Uint8Array;
    const offsets = data.valueOffsets as Int32Array | BigInt64Array | undefined;
    const fixed = DataType.isFixedSizeBinary(data.type) ? data.type.byteWidth : 0;
    const at = (i: number) => (offsets ? Number(offsets[i]!) : i * fixed);
    for (let r = 0; r < n; r++) {
      const len = at(r + 1) - at(r);
      if (len !== want) {
        throw new EmbeddingFormatError(
          { file: path, rowGroup: g, row: firstRow + r },
          `row ${firstRow + r} has ${len} bytes = ${len / width} ${dtype} values, expected ${perRow} (shape [${shape.join(', ')}])`,
        );
      }
    }
    const start = at(0);
    const out = new Float32Array(n * perRow);
    const src = bytes.subarray(start, start + n * want);
    if (dtype === 'float32') {
      if (LITTLE_ENDIAN) new Uint8Array(out.buffer).set(src);
      else {
        const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
        for (let i = 0; i < out.length; i++) out[i] = dv.getFloat32(i * 4, true);
      }
    } else if (dtype === 'float16') {
      const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
      const h = new Uint16Array(out.length);
      for (let i = 0; i < h.length; i++) h[i] = dv.getUint16(i * 2, true);
      halfToFloat(h, out);
    } else {
      const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
      for (let i = 0; i < out.length; i++) out[i] = dv.getFloat64(i * 8, true);
    }
    return out;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.ahead.clear();
    this.pf.free();
  }
}

// ---------------------------------------------------------------------------------------------

async function checkMagic(path: string): Promise<void> {
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (err) {
    throw new EmbeddingFormatError({ file: path }, `cannot open: ${errorMessage(err)}`, { cause: err });
  }
  const fh = await open(path, 'r');
  try {
    const head = Buffer.alloc(4);
    const tail = Buffer.alloc(8);
    await fh.read(head, 0, Math.min(4, size), 0);
    if (size >= 8) await fh.read(tail, 0, 8, size - 8);
    if (head.toString('latin1') !== 'PAR1') {
      throw new EmbeddingFormatError({ file: path }, `not a Parquet file (starts with ${JSON.stringify(head.subarray(0, Math.min(4, size)).toString('latin1'))}, expected "PAR1")`);
    }
    if (size < 12) throw new EmbeddingFormatError({ file: path }, `truncated Parquet file (${size} bytes)`);
    if (tail.subarray(4).toString('latin1') !== 'PAR1') {
      throw new EmbeddingFormatError({ file: path }, `truncated or corrupt Parquet file: no "PAR1" footer magic at the end (${size} bytes; was the file cut short?)`);
    }
    const footer = tail.readUInt32LE(0);
    if (footer + 12 > size) throw new EmbeddingFormatError({ file: path }, `corrupt Parquet footer: footer length ${footer} exceeds the file size ${size}`);
  } finally {
    await fh.close();
  }
}

function isStringType(t: DataType): boolean {
  if (DataType.isDictionary(t)) return isStringType(t.dictionary);
  return DataType.isUtf8(t) || DataType.isLargeUtf8(t) || DataType.isUtf8View(t);
}

function analyseType(path: string, field: Field): { levels: Level[]; leaf: LeafKind; layout: string } {
  const levels: Level[] = [];
  let t: DataType = field.type;
  const names: string[] = [];
  for (;;) {
    if (DataType.isList(t)) {
      levels.push({ kind: 'list' });
      names.push('list');
    } else if (DataType.isLargeList(t)) {
      levels.push({ kind: 'large_list' });
      names.push('large_list');
    } else if (DataType.isFixedSizeList(t)) {
      levels.push({ kind: 'fixed_size_list', size: t.listSize });
      names.push(`fixed_size_list`);
    } else break;
    t = (t as DataType & { children: Field[] }).children[0]!.type;
  }
  const bad = (why: string) => new EmbeddingFormatError({ file: path }, `unsupported embedding column '${field.name}' of type ${field.type}: ${why}`);
  let leaf: LeafKind;
  let leafName: string;
  if (DataType.isFloat(t)) {
    const p = (t as { precision: number }).precision;
    leaf = p === 0 ? 'float16' : p === 1 ? 'float32' : 'float64';
    leafName = leaf;
  } else if (levels.length === 0 && (DataType.isBinary(t) || DataType.isLargeBinary(t) || DataType.isFixedSizeBinary(t))) {
    leaf = 'bytes';
    leafName = DataType.isLargeBinary(t) ? 'large_binary' : DataType.isFixedSizeBinary(t) ? `fixed_size_binary[${t.byteWidth}]` : 'binary';
  } else if (levels.length === 0) {
    throw bad('expected a list of floats or raw float bytes');
  } else {
    throw bad(`the list values are ${t}, expected float32 (or float16)`);
  }
  let layout = leafName;
  for (let i = names.length - 1; i >= 0; i--) {
    const size = levels[i]!.size;
    layout = `${names[i]}<${layout}>${size !== undefined ? `[${size}]` : ''}`;
  }
  return { levels, leaf, layout };
}

/** Per-row dims of the first row (bytes: [byteLength]). */
async function firstRowDims(pf: pw.ParquetFile, path: string, g: number, column: string, levels: Level[], leaf: LeafKind, _rows: number): Promise<number[]> {
  let t;
  try {
    t = tableFromIPC((await pf.read({ rowGroups: [g], columns: [column], limit: 1, batchSize: 1 })).intoIPCStream());
  } catch (err) {
    throw new EmbeddingFormatError({ file: path, rowGroup: g }, `cannot decode the row group: ${errorMessage(err)}`, { cause: err });
  }
  const data = t.getChild(column)!.data[0]!;
  if (leaf === 'bytes') {
    const off = data.valueOffsets as Int32Array | BigInt64Array | undefined;
    return [off ? Number(off[1]!) - Number(off[0]!) : (data.type as { byteWidth: number }).byteWidth];
  }
  const dims: number[] = [];
  let cur: Data = data;
  let i = 0;
  for (const level of levels) {
    const off = cur.valueOffsets as Int32Array | BigInt64Array | undefined;
    const begin = level.kind === 'fixed_size_list' ? i * level.size! : Number(off![i]!);
    const end = level.kind === 'fixed_size_list' ? (i + 1) * level.size! : Number(off![i + 1]!);
    dims.push(end - begin);
    i = begin;
    cur = cur.children[0]!;
  }
  return dims;
}

function parseShape(path: string, raw: string): [number, number] {
  const nums = (raw.match(/-?\d+/g) ?? []).map(Number);
  const dims = squeeze(nums);
  if (dims.length !== 2 || dims.some((d) => !Number.isInteger(d) || d <= 0)) {
    throw new EmbeddingFormatError({ file: path }, `${SHAPE_KEY} is ${JSON.stringify(raw)}; expected a JSON list [L, D] of positive integers`);
  }
  return [dims[0]!, dims[1]!];
}

function parseDtype(path: string, raw: string | undefined): EmbeddingDtype | undefined {
  if (raw === undefined) return undefined;
  const s = raw.trim().toLowerCase().replace(/^["']|["']$/g, '');
  if (['float32', 'f4', '<f4', 'float'].includes(s)) return 'float32';
  if (['float16', 'f2', '<f2', 'half'].includes(s)) return 'float16';
  if (['float64', 'f8', '<f8', 'double'].includes(s)) return 'float64';
  throw new EmbeddingFormatError({ file: path }, `${DTYPE_KEY} is ${JSON.stringify(raw)}: unsupported dtype (expected float32 or float16)`);
}

/** Drops leading 1s of a shape with more than two dims ([1, 77, 1024] → [77, 1024]). */
function squeeze(dims: number[]): number[] {
  const d = [...dims];
  while (d.length > 2 && d[0] === 1) d.shift();
  return d;
}

/** Expected per-level lengths for a nested layout of `depth` levels whose squeezed shape is [L, D]. */
function squeezeTo(depth: number, shape: [number, number]): number[] {
  const d: number[] = [...shape];
  while (d.length < depth) d.unshift(1);
  return d;
}

function product(d: number[]): number {
  return d.reduce((a, b) => a * b, 1);
}

function rowStartOf(rowGroupRows: number[], g: number): number {
  let s = 0;
  for (let i = 0; i < g; i++) s += rowGroupRows[i]!;
  return s;
}

/**
 * Guess [L, D] from a flat row of n values when the file says nothing (duckdb, polars):
 * a multiple of 77 (CLIP's padded token count) gives [77, n/77]; otherwise the largest L with
 * D = n/L an integer and D ≥ 2·L (fewer tokens than channels: [4, 8], [8, 32], [16, 64], ...).
 */
/** Every [L, D] with L · D = n and L ≤ D: what a flat row of n values could be. */
export function shapeCandidates(n: number): [number, number][] {
  const out: [number, number][] = [];
  for (let l = 1; l * l <= n; l++) if (n % l === 0) out.push([l, n / l]);
  return out;
}

export function inferShape(n: number): [number, number] {
  if (n % 77 === 0) return [77, n / 77];
  let best = 1;
  for (let l = 1; l * l * 2 <= n; l++) if (n % l === 0) best = l;
  return [best, n / best];
}

function lengthProblem(row: number, len: number, want: number, flat: boolean, shape: [number, number], _k: number): string {
  if (flat) return `row ${row} has ${len} values, expected ${want} (shape [${shape.join(', ')}])`;
  return `row ${row} has ${len} items, expected ${want} (shape [${shape.join(', ')}])`;
}

function isValidAt(data: Data, i: number): boolean {
  const bitmap = data.nullBitmap;
  if (!bitmap || bitmap.length === 0) return true;
  const j = data.offset + i;
  return (bitmap[j >> 3]! & (1 << (j & 7))) !== 0;
}

function readStrings(vec: Vector, n: number): (string | null)[] {
  const out = new Array<string | null>(n);
  for (let i = 0; i < n; i++) out[i] = (vec.get(i) as string | null) ?? null;
  return out;
}

function upperBound(a: Float64Array, x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function concat(chunks: Float32Array[], total: number): Float32Array {
  const out = new Float32Array(total);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

/** Refuses (or, with `report`, counts) NaN / ±Inf; rows are reported as file rows. */
function scanFinite(values: Float32Array, perRow: number, file: string, g: number, base: number, report?: NonFiniteReport): void {
  const n = values.length;
  // Fast pass on the bits (exponent all ones = NaN or ±Inf): ~1.5x quicker than a float compare.
  const bits = new Uint32Array(values.buffer, values.byteOffset, n);
  let first = -1;
  for (let i = 0; i < n; i++) {
    if ((bits[i]! & 0x7f800000) === 0x7f800000) {
      first = i;
      break;
    }
  }
  if (first < 0) return;
  for (let i = first; i < n; i++) {
    const v = values[i]!;
    if (v - v !== 0) {
      const local = Math.floor(i / perRow);
      if (!report) {
        const idx = i - local * perRow;
        throw new EmbeddingFormatError(
          { file, rowGroup: g, row: base + local },
          `non-finite value (${v}) in row ${base + local} at value index ${idx}`,
        );
      }
      if (Number.isNaN(v)) report.nanCount++;
      else report.infCount++;
      report.firstRow ??= base + local;
    }
  }
}

const HALF_TABLE = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const f = h & 0x3ff;
    if (e === 0) t[h] = s * f * 2 ** -24;
    else if (e === 31) t[h] = f ? NaN : s * Infinity;
    else t[h] = s * (1 + f / 1024) * 2 ** (e - 15);
  }
  return t;
})();

/** IEEE half → float32 (exact). */
export function halfToFloat(src: Uint16Array, dst: Float32Array): void {
  for (let i = 0; i < src.length; i++) dst[i] = HALF_TABLE[src[i]!]!;
}

/** float32 → IEEE half bits (round to nearest even); used by writers and tests. */
export function floatToHalf(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}
