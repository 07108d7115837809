/** Test helpers: write Parquet files in many layouts with parquet-wasm (arrow-rs writer). */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as pw from 'parquet-wasm';
import {
  Binary,
  Field,
  FixedSizeList,
  Float16,
  Float32,
  Float64,
  LargeList,
  List,
  makeData,
  RecordBatch,
  Schema,
  Struct,
  Table,
  tableToIPC,
  Utf8,
  vectorFromArray,
  type Data,
  type DataType,
} from 'apache-arrow';
import { floatToHalf } from '../../src/streams/parquet.ts';

export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'sb-streams-test-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Deterministic test data: value of row r, index k. */
export function makeRows(n: number, L: number, D: number, prompt = (r: number) => `prompt ${r}`) {
  const embeds = new Float32Array(n * L * D);
  for (let r = 0; r < n; r++) for (let k = 0; k < L * D; k++) embeds[r * L * D + k] = Math.fround(r + k / 1024);
  return { prompts: Array.from({ length: n }, (_, r) => prompt(r)), embeds };
}

export type Layout = 'list' | 'large_list' | 'fixed_size_list' | 'list_of_lists' | 'binary_f32' | 'binary_f16' | 'list_f16' | 'list_f64';

function offsets(n: number, step: number, big = false) {
  if (big) return BigInt64Array.from({ length: n + 1 }, (_, i) => BigInt(i * step));
  return Int32Array.from({ length: n + 1 }, (_, i) => i * step);
}

/** Writes `prompts`/`embeds` in the given layout. `shapeMeta` false omits swiftbrush.embedding_shape. */
export function writeLayout(
  path: string,
  layout: Layout,
  prompts: string[],
  embeds: Float32Array,
  shape: [number, number],
  opts: { rowGroupSize?: number; shapeMeta?: boolean; dtypeMeta?: boolean; compression?: pw.Compression; v2?: boolean } = {},
): void {
  const n = prompts.length;
  const [L, D] = shape;
  const per = L * D;
  let type: DataType;
  let data: Data;
  const f32 = () => makeData({ type: new Float32(), length: embeds.length, data: embeds });
  const halves = () => Uint16Array.from(embeds, (v) => floatToHalf(v));
  const kv = new Map<string, string>();
  if (opts.shapeMeta !== false) kv.set('swiftbrush.embedding_shape', JSON.stringify([L, D]));
  switch (layout) {
    case 'list':
      type = new List(new Field('item', new Float32(), true));
      data = makeData({ type: type as List, length: n, valueOffsets: offsets(n, per) as Int32Array, child: f32() });
      break;
    case 'large_list':
      type = new LargeList(new Field('item', new Float32(), true));
      data = makeData({ type: type as LargeList, length: n, valueOffsets: offsets(n, per, true) as BigInt64Array, child: f32() } as never);
      break;
    case 'fixed_size_list':
      type = new FixedSizeList(per, new Field('item', new Float32(), true));
      data = makeData({ type: type as FixedSizeList, length: n, child: f32() });
      break;
    case 'list_of_lists': {
      const innerType = new List(new Field('item', new Float32(), true));
      const inner = makeData({ type: innerType, length: n * L, valueOffsets: offsets(n * L, D) as Int32Array, child: f32() });
      type = new List(new Field('item', innerType, true));
      data = makeData({ type: type as List, length: n, valueOffsets: offsets(n, L) as Int32Array, child: inner });
      break;
    }
    case 'list_f16':
      type = new List(new Field('item', new Float16(), true));
      data = makeData({ type: type as List, length: n, valueOffsets: offsets(n, per) as Int32Array, child: makeData({ type: new Float16(), length: embeds.length, data: halves() }) });
      break;
    case 'list_f64':
      type = new List(new Field('item', new Float64(), true));
      data = makeData({ type: type as List, length: n, valueOffsets: offsets(n, per) as Int32Array, child: makeData({ type: new Float64(), length: embeds.length, data: Float64Array.from(embeds) }) });
      break;
    case 'binary_f32':
    case 'binary_f16': {
      const half = layout === 'binary_f16';
      const bytes = half ? new Uint8Array(halves().buffer) : new Uint8Array(embeds.buffer, embeds.byteOffset, embeds.byteLength);
      type = new Binary();
      data = makeData({ type: type as Binary, length: n, valueOffsets: offsets(n, per * (half ? 2 : 4)) as Int32Array, data: bytes });
      if (opts.dtypeMeta !== false) kv.set('swiftbrush.embedding_dtype', half ? 'float16' : 'float32');
      break;
    }
  }
  const schema = new Schema([new Field('prompt', new Utf8(), true), new Field('prompt_embeds', type, true)]);
  const text = vectorFromArray(prompts, new Utf8()).data[0]!;
  const rb = new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: n, children: [text, data] }));
  const table = pw.Table.fromIPCStream(tableToIPC(new Table([rb]), 'stream'));
  let props = new pw.WriterPropertiesBuilder()
    .setMaxRowGroupSize(opts.rowGroupSize ?? 1024)
    .setCompression(opts.compression ?? pw.Compression.SNAPPY)
    .setWriterVersion(opts.v2 === false ? pw.WriterVersion.V1 : pw.WriterVersion.V2);
  if (kv.size) props = props.setKeyValueMetadata(kv);
  writeFileSync(path, pw.writeParquet(table, props.build()));
}
