import { afterAll, describe, expect, it } from 'vitest';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { lastValueFrom, toArray } from 'rxjs';
import { embeddingBatches, inspectEmbeddings } from '../../src/streams/reader.ts';
import { EmbeddingParquetWriter, writeEmbeddingParquet } from '../../src/streams/writer.ts';
import { importNpy, parseNpy, parsePromptLines, readNpy } from '../../src/streams/npy.ts';
import { floatToHalf } from '../../src/streams/parquet.ts';
import { makeRows, tempDir } from './helpers.ts';

const tmp = tempDir();
afterAll(() => tmp.cleanup());
const NPY = join(import.meta.dirname, '../fixtures/npy-prompts');

function npyBytes(descr: string, shape: number[], data: Uint8Array, extra = '', version = 1): Uint8Array {
  let header = `{'descr': '${descr}', 'fortran_order': ${extra === 'F' ? 'True' : 'False'}, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  const pre = version === 1 ? 10 : 12;
  header += ' '.repeat(64 - ((pre + header.length + 1) % 64)) + '\n';
  const h = Buffer.alloc(pre);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, 0]).copy(h);
  if (version === 1) h.writeUInt16LE(header.length, 8);
  else h.writeUInt32LE(header.length, 8);
  return Buffer.concat([h, Buffer.from(header, 'latin1'), data]);
}

describe('writer', () => {
  it('round trip: list<float32> + swiftbrush.embedding_shape, row groups, compression, atomic', async () => {
    const { prompts, embeds } = makeRows(250, 7, 9, (r) => `prompt ${r} — ünïcode ✓`);
    for (const compression of ['snappy', 'zstd', 'none'] as const) {
      const file = join(tmp.dir, `rt-${compression}.parquet`);
      await writeEmbeddingParquet(file, prompts, embeds, [7, 9], { rowGroupSize: 64, compression });
      const r = await inspectEmbeddings(file);
      expect(r).toMatchObject({ rows: 250, rowGroups: 4, rowGroupRows: [64, 64, 64, 58], layout: 'list<float32>', shape: [7, 9], shapeSource: 'metadata' });
      expect(r.metadata['swiftbrush.embedding_shape']).toBe('[7,9]');
      const b = await lastValueFrom(embeddingBatches({ files: [file], batchSize: 250 }).pipe(toArray()));
      expect(b.length).toBe(1);
      expect(b[0]!.prompts).toEqual(prompts);
      expect(b[0]!.embeds).toEqual(embeds);
    }
    expect(readdirSync(tmp.dir).filter((f) => f.includes('.tmp'))).toEqual([]);
  });

  it('refuses mismatched sizes and non-finite values and leaves no file behind', async () => {
    const file = join(tmp.dir, 'bad-write.parquet');
    await expect(writeEmbeddingParquet(file, ['a', 'b'], new Float32Array(5), [1, 3])).rejects.toThrow(/need 6 values/);
    const e = new Float32Array(6);
    e[4] = NaN;
    await expect(writeEmbeddingParquet(file, ['a', 'b'], e, [1, 3])).rejects.toThrow(/non-finite value \(NaN\) in row 1/);
    expect(readdirSync(tmp.dir).filter((f) => f.startsWith('bad-write') || f.startsWith('.bad-write'))).toEqual([]);
  });

  it('streaming writer: many writes, one file', async () => {
    const file = join(tmp.dir, 'stream.parquet');
    const w = await EmbeddingParquetWriter.create(file, [2, 2], { rowGroupSize: 100 });
    for (let i = 0; i < 7; i++) await w.write(Array.from({ length: 30 }, (_, k) => `${i}-${k}`), new Float32Array(120).fill(i));
    await w.close();
    const r = await inspectEmbeddings(file);
    expect(r.rowGroupRows).toEqual([100, 100, 10]);
    expect(r.mean).toBeCloseTo(3, 12);
  });
});

describe('npy', () => {
  it('parses the official preparation layout and import-npy converts it', async () => {
    const prompts = parsePromptLines(readFileSync(join(NPY, 'prompts.txt'), 'utf8'));
    expect(prompts.length).toBe(12);
    const arrays = await Promise.all(prompts.map((_, i) => readNpy(join(NPY, 'prompts', `${i}.npy`))));
    expect(arrays[0]!.shape).toEqual([8, 32]);
    expect(arrays[0]!.descr).toBe('<f4');
    const out = join(tmp.dir, 'npy.parquet');
    const r = await importNpy(join(NPY, 'prompts.txt'), out, { rowGroupSize: 5 });
    expect(r).toEqual({ rows: 12, shape: [8, 32] });
    const b = await lastValueFrom(embeddingBatches({ files: [out], batchSize: 12 }).pipe(toArray()));
    expect(b[0]!.prompts).toEqual(prompts);
    const want = new Float32Array(12 * 256);
    arrays.forEach((a, i) => want.set(a.data, i * 256));
    expect(b[0]!.embeds).toEqual(want);
    // --null-npy adds a row with prompt "" that training batches skip and readNullEmbedding returns.
    const out2 = join(tmp.dir, 'npy-null.parquet');
    await importNpy(join(NPY, 'prompts.txt'), out2, { dir: join(NPY, 'prompts'), nullNpy: join(NPY, 'prompts', '3.npy') });
    expect((await inspectEmbeddings(out2)).nullPromptRows).toBe(1);
  });

  it('import-npy names a missing file', async () => {
    const txt = join(tmp.dir, 'more.txt');
    writeFileSync(txt, readFileSync(join(NPY, 'prompts.txt'), 'utf8') + 'one more prompt\n');
    await expect(importNpy(txt, join(tmp.dir, 'x.parquet'), { dir: join(NPY, 'prompts') })).rejects.toThrow(/12\.npy: missing \(prompt 12/);
  });

  it('float16, version 2 headers, (1, L, D) and clear errors', () => {
    const h = Uint16Array.from([1, -2, 0.5, 65504].map(floatToHalf));
    const a = parseNpy(npyBytes('<f2', [1, 2, 2], new Uint8Array(h.buffer), '', 2));
    expect(Array.from(a.data)).toEqual([1, -2, 0.5, 65504]);
    expect(a.shape).toEqual([1, 2, 2]);
    const f4 = new Uint8Array(new Float32Array([1, 2, 3]).buffer);
    expect(() => parseNpy(Buffer.from('hello world'), 'x.npy')).toThrow(/x\.npy: not a \.npy file/);
    expect(() => parseNpy(npyBytes('>f4', [3], f4), 'x.npy')).toThrow(/dtype '>f4' is not supported/);
    expect(() => parseNpy(npyBytes('<f8', [3], f4), 'x.npy')).toThrow(/dtype '<f8'/);
    expect(() => parseNpy(npyBytes('<f4', [3], f4, 'F'), 'x.npy')).toThrow(/fortran_order/);
    expect(() => parseNpy(npyBytes('<f4', [4], f4), 'x.npy')).toThrow(/truncated data: shape \(4\) needs 16 bytes, file has 12/);
  });
});
