import { afterAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import * as pw from 'parquet-wasm';
import { lastValueFrom, toArray } from 'rxjs';
import { embeddingBatches, inspectEmbeddings, type EmbeddingBatch } from '../../src/streams/reader.ts';
import { EmbeddingFormatError } from '../../src/streams/errors.ts';
import { floatToHalf, halfToFloat, inferShape } from '../../src/streams/parquet.ts';
import { makeRows, tempDir, writeLayout, type Layout } from './helpers.ts';

const tmp = tempDir();
afterAll(() => tmp.cleanup());

async function readAll(files: string[], extra: Record<string, unknown> = {}): Promise<EmbeddingBatch[]> {
  return lastValueFrom(embeddingBatches({ files, batchSize: 7, ...extra }).pipe(toArray()));
}
function concat(batches: EmbeddingBatch[]): { embeds: Float32Array; prompts: string[] } {
  const n = batches.reduce((a, b) => a + b.embeds.length, 0);
  const embeds = new Float32Array(n);
  let o = 0;
  for (const b of batches) {
    embeds.set(b.embeds, o);
    o += b.embeds.length;
  }
  return { embeds, prompts: batches.flatMap((b) => b.prompts) };
}

describe('layouts written by arrow-rs (other shapes and row-group sizes than the fixtures)', () => {
  const shape: [number, number] = [5, 12];
  const n = 53;
  const { prompts, embeds } = makeRows(n, ...shape);
  const halfRounded = new Float32Array(embeds.length);
  halfToFloat(Uint16Array.from(embeds, (v) => floatToHalf(v)), halfRounded);
  const cases: [Layout, Record<string, unknown>][] = [
    ['list', {}],
    ['large_list', {}],
    ['fixed_size_list', {}],
    ['list_of_lists', { shapeMeta: false }],
    ['binary_f32', {}],
    ['binary_f16', {}],
    ['binary_f16', { dtypeMeta: false }],
    ['list_f16', { compression: pw.Compression.ZSTD }],
    ['list', { compression: pw.Compression.UNCOMPRESSED, v2: false, rowGroupSize: 5 }],
  ];
  for (const [layout, opts] of cases) {
    it(`${layout} ${JSON.stringify(opts)}`, async () => {
      const file = join(tmp.dir, `${layout}-${Object.keys(opts).join('-')}.parquet`);
      writeLayout(file, layout, prompts, embeds, shape, { rowGroupSize: 10, ...opts });
      const want = layout.endsWith('f16') ? halfRounded : embeds;
      const batches = await readAll([file]);
      expect(batches.map((b) => b.shape[0])).toEqual([7, 7, 7, 7, 7, 7, 7, 4]);
      expect(batches.every((b) => b.shape[1] === 5 && b.shape[2] === 12 && b.embeds.length === b.shape[0] * 60)).toBe(true);
      const got = concat(batches);
      expect(got.prompts).toEqual(prompts);
      expect(got.embeds).toEqual(want);
      const r = await inspectEmbeddings(file);
      expect(r.rows).toBe(n);
      expect(r.shape).toEqual(shape);
      expect(r.rowGroups).toBe(Math.ceil(n / ((opts.rowGroupSize as number) ?? 10)));
    });
  }

  it('float64 lists are refused by default and narrowed to float32 with allowFloat64', async () => {
    const file = join(tmp.dir, 'f64.parquet');
    writeLayout(file, 'list_f64', prompts, embeds, shape);
    await expect(readAll([file])).rejects.toThrow(/float64.*allow-float64/);
    expect(concat(await readAll([file], { allowFloat64: true })).embeds).toEqual(embeds);
  });

  it('flat lists without shape metadata: a guessed shape, or the caller’s', async () => {
    const file = join(tmp.dir, 'noshape.parquet');
    writeLayout(file, 'list', prompts, embeds, shape, { shapeMeta: false });
    expect((await inspectEmbeddings(file)).shapeSource).toBe('inferred');
    const b = await readAll([file], { shape });
    expect(b[0]!.shape).toEqual([7, 5, 12]);
    expect(inferShape(77 * 1024)).toEqual([77, 1024]);
    expect(inferShape(256)).toEqual([8, 32]);
    expect(inferShape(16 * 64)).toEqual([16, 64]);
    expect(inferShape(32)).toEqual([4, 8]);
    expect(inferShape(77 * 768)).toEqual([77, 768]);
  });

  it('a flat [7, 24] file without metadata: inspect reports the ambiguity, the model\'s width settles it', async () => {
    const file = join(tmp.dir, 'seven-by-24.parquet');
    const rows = makeRows(12, 7, 24);
    writeLayout(file, 'list', rows.prompts, rows.embeds, [7, 24], { shapeMeta: false });
    const r = await inspectEmbeddings(file);
    expect(r.shape).toBeNull();
    expect(r.rowLength).toBe(168);
    expect(r.shapeCandidates).toContainEqual([7, 24]);
    expect(r.shapeCandidates).toContainEqual([8, 21]);
    expect((await inspectEmbeddings(file, { shape: [7, 24] })).shape).toEqual([7, 24]);
    // distill / sample / eval pass the UNet's cross_attention_dim as the width.
    const b = await readAll([file], { width: 24 });
    expect(b[0]!.shape).toEqual([7, 7, 24]);
    expect(concat(b).embeds).toEqual(rows.embeds);
    await expect(readAll([file], { width: 32 })).rejects.toThrow(/seven-by-24\.parquet: rows hold 168 values .*cross_attention_dim 32 does not divide 168/);
  });

  it('a non-finite value in a later file names file, row group and row; the batches before it were whole', async () => {
    const file = join(tmp.dir, 'clean.parquet');
    const { prompts: p, embeds: e } = makeRows(40, 2, 3);
    writeLayout(file, 'list', p, e, [2, 3], { rowGroupSize: 10 });
    const bad = join(tmp.dir, 'nan.parquet');
    const e2 = e.slice();
    e2[33 * 6 + 4] = Infinity;
    writeLayout(bad, 'list', p, e2, [2, 3], { rowGroupSize: 10 });
    const seen: EmbeddingBatch[] = [];
    const err = await new Promise<unknown>((resolve) =>
      embeddingBatches({ files: [file, bad], batchSize: 8, prefetch: 1 }).subscribe({ next: (b) => seen.push(b), error: resolve, complete: () => resolve(null) }),
    );
    expect(err).toBeInstanceOf(EmbeddingFormatError);
    const fe = err as EmbeddingFormatError;
    expect(fe.file).toBe(bad);
    expect(fe.rowGroup).toBe(3);
    expect(fe.row).toBe(33);
    expect(fe.message).toMatch(/nan\.parquet, row group 3, row 33: non-finite value \(Infinity\) in row 33/);
    // 40 good rows + 30 good rows of the bad file = 70 rows → 8 full batches (64 rows) were emitted, none partial.
    expect(seen.every((b) => b.shape[0] === 8)).toBe(true);
    expect(seen.length).toBe(8);
  });
});
