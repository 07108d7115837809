/**
 * Writing embedding Parquet: `prompt` (utf8) + `prompt_embeds` (list<float32>, flattened [L, D])
 * with the key-value metadata `swiftbrush.embedding_shape` = "[L, D]". Files are written through a
 * temp file in the same directory and renamed into place, so a crash never leaves a half file.
 *
 * `EmbeddingParquetWriter` streams: each `write` hands one Arrow record batch to parquet-wasm's
 * `transformParquetStream`, which flushes a row group every `rowGroupSize` rows, and the bytes go
 * straight to disk; memory stays around one row group however large the file.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import * as pw from 'parquet-wasm';
import { Field, Float32, List, makeData, RecordBatch, Schema, Struct, Table, tableToIPC, Utf8, vectorFromArray } from 'apache-arrow';
import { SHAPE_KEY } from './parquet.ts';

export type Compression = 'snappy' | 'zstd' | 'none';

export interface WriteOptions {
  /** Rows per row group (default 1024). */
  rowGroupSize?: number;
  /** Default 'snappy' (like pyarrow). */
  compression?: Compression;
  /** Extra key-value metadata for the file. */
  metadata?: Record<string, string>;
}

const CODECS: Record<Compression, pw.Compression> = {
  snappy: pw.Compression.SNAPPY,
  zstd: pw.Compression.ZSTD,
  none: pw.Compression.UNCOMPRESSED,
};

export class EmbeddingParquetWriter {
  private readonly controller: Promise<ReadableStreamDefaultController<pw.RecordBatch>>;
  private readonly done: Promise<void>;
  private readonly tmp: string;
  private readonly perRow: number;
  private readonly schema: Schema;
  private waiting: (() => void) | undefined;
  private desired = 1;
  private closed = false;
  private failed: unknown;
  rows = 0;

  private constructor(
    readonly path: string,
    readonly shape: [number, number],
    options: WriteOptions,
  ) {
    const [L, D] = shape;
    if (!(Number.isInteger(L) && Number.isInteger(D) && L > 0 && D > 0)) throw new Error(`invalid embedding shape [${shape.join(', ')}]`);
    this.perRow = L * D;
    this.tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now()}.tmp`);
    const rowGroupSize = options.rowGroupSize ?? 1024;
    if (!(Number.isInteger(rowGroupSize) && rowGroupSize > 0)) throw new Error(`rowGroupSize must be a positive integer, got ${rowGroupSize}`);
    const kv = new Map<string, string>([[SHAPE_KEY, JSON.stringify([L, D])], ...Object.entries(options.metadata ?? {})]);
    this.schema = new Schema(
      [new Field('prompt', new Utf8(), false), new Field('prompt_embeds', new List(new Field('item', new Float32(), false)), false)],
      kv,
    );
    const props = new pw.WriterPropertiesBuilder()
      .setCompression(CODECS[options.compression ?? 'snappy'])
      .setMaxRowGroupSize(rowGroupSize)
      .setKeyValueMetadata(kv)
      // No dictionaries: float embeddings never repeat and prompts rarely do; a dictionary only costs
      // time (built, then abandoned for plain pages) when writing and reading.
      .setDictionaryEnabled(false)
      .setCreatedBy('swiftbrush-rx')
      .build();
    let resolveController!: (c: ReadableStreamDefaultController<pw.RecordBatch>) => void;
    this.controller = new Promise((r) => (resolveController = r));
    const source = new ReadableStream<pw.RecordBatch>(
      {
        start: (c) => resolveController(c),
        pull: () => {
          this.desired = 1;
          this.waiting?.();
          this.waiting = undefined;
        },
      },
      { highWaterMark: 1 },
    );
    const tmp = this.tmp;
    this.done = (async () => {
      const bytes = await pw.transformParquetStream(source, props);
      await bytes.pipeTo(Writable.toWeb(createWriteStream(tmp)) as WritableStream<Uint8Array>);
    })();
    this.done.catch((err) => (this.failed = err));
  }

  static async create(path: string, shape: [number, number], options: WriteOptions = {}): Promise<EmbeddingParquetWriter> {
    await mkdir(dirname(path), { recursive: true });
    return new EmbeddingParquetWriter(path, shape, options);
  }

  /** Appends rows: `embeds` is [prompts.length, L, D] float32. Waits while the encoder is busy. */
  async write(prompts: string[], embeds: Float32Array): Promise<void> {
    if (this.closed) throw new Error(`${this.path}: write after close`);
    if (this.failed) throw this.failed;
    const n = prompts.length;
    if (embeds.length !== n * this.perRow) {
      throw new Error(`${this.path}: ${n} prompts need ${n * this.perRow} values ([${n}, ${this.shape.join(', ')}]), got ${embeds.length}`);
    }
    if (n === 0) return;
    for (let i = 0; i < embeds.length; i++) {
      const v = embeds[i]!;
      if (v - v !== 0) throw new Error(`${this.path}: non-finite value (${v}) in row ${this.rows + Math.floor(i / this.perRow)}`);
    }
    const batch = this.toWasm(prompts, embeds);
    const c = await this.controller;
    while (this.desired <= 0 && !this.failed) await new Promise<void>((r) => (this.waiting = r));
    if (this.failed) throw this.failed;
    c.enqueue(batch);
    this.desired = c.desiredSize ?? 0;
    this.rows += n;
  }

  private toWasm(prompts: string[], embeds: Float32Array): pw.RecordBatch {
    const n = prompts.length;
    const listType = this.schema.fields[1]!.type as List<Float32>;
    const offsets = new Int32Array(n + 1);
    for (let i = 0; i <= n; i++) offsets[i] = i * this.perRow;
    const child = makeData({ type: new Float32(), length: embeds.length, data: embeds });
    const list = makeData({ type: listType, length: n, valueOffsets: offsets, child });
    const text = vectorFromArray(prompts, new Utf8()).data[0]!;
    const struct = makeData({ type: new Struct(this.schema.fields), length: n, children: [text, list] });
    const table = new Table([new RecordBatch(this.schema, struct)]);
    const wasm = pw.Table.fromIPCStream(tableToIPC(table, 'stream'));
    const batches = wasm.recordBatches();
    wasm.free();
    if (batches.length !== 1) throw new Error(`internal: expected one record batch, got ${batches.length}`);
    return batches[0]!;
  }

  /** Finishes the file and renames it into place. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    (await this.controller).close();
    try {
      await this.done;
      await rename(this.tmp, this.path);
    } catch (err) {
      await rm(this.tmp, { force: true });
      throw err;
    }
  }

  /** Drops the temp file (after an error). */
  async abort(reason?: unknown): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      try {
        (await this.controller).error(reason ?? new Error('aborted'));
      } catch {
        /* already closed */
      }
    }
    await this.done.catch(() => undefined);
    await rm(this.tmp, { force: true });
  }
}

/**
 * Writes `prompts` with their embeddings ([prompts.length, L, D] float32) as list<float32> with
 * `swiftbrush.embedding_shape` metadata, atomically (temp file, then rename).
 */
export async function writeEmbeddingParquet(
  path: string,
  prompts: string[],
  embeds: Float32Array,
  shape: [number, number],
  options: WriteOptions = {},
): Promise<void> {
  const perRow = shape[0] * shape[1];
  if (embeds.length !== prompts.length * perRow) {
    throw new Error(`${path}: ${prompts.length} prompts need ${prompts.length * perRow} values ([${prompts.length}, ${shape.join(', ')}]), got ${embeds.length}`);
  }
  const w = await EmbeddingParquetWriter.create(path, shape, options);
  try {
    const step = options.rowGroupSize ?? 1024;
    for (let i = 0; i < prompts.length; i += step) {
      const j = Math.min(prompts.length, i + step);
      await w.write(prompts.slice(i, j), embeds.subarray(i * perRow, j * perRow));
    }
    await w.close();
  } catch (err) {
    await w.abort(err);
    throw err;
  }
}
