/**
 * Batch striding (`batchStride` N, `batchOffset` r): the N strided streams of one stream together
 * emit exactly its batches (rows, prompts, positions), also shuffled and resumed — what the
 * processes of an MPI run rely on to compute the single-process run's windows.
 */
import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { firstValueFrom, toArray } from 'rxjs';
import { embeddingBatches, type EmbeddingBatch, type EmbeddingStreamOptions } from '../../src/streams/reader.ts';

const FILES = [fileURLToPath(new URL('../../data/embeddings.parquet', import.meta.url))];

const all = (o: Partial<EmbeddingStreamOptions>) => firstValueFrom(embeddingBatches({ files: FILES, batchSize: 3, epochs: 2, ...o }).pipe(toArray()));
const key = (b: EmbeddingBatch) => `${b.position.epoch}:${b.position.batchIndex}:${b.prompts.join('|')}:${b.embeds.length}:${b.embeds[0]}:${b.embeds.at(-1)}`;

describe('batchStride / batchOffset', () => {
  for (const [name, o] of [
    ['in file order', {}],
    ['shuffled (buffer)', { shuffle: true, seed: 5, shuffleBuffer: 16 }],
    ['shuffled, resumed at batch 7', { shuffle: true, seed: 5, shuffleBuffer: 16, startBatch: 7 }],
  ] as const) {
    it(`3 strided streams interleave into the unstrided one (${name})`, async () => {
      const whole = await all(o);
      const parts = await Promise.all([0, 1, 2].map((r) => all({ ...o, batchStride: 3, batchOffset: r })));
      const start = 'startBatch' in o ? o.startBatch : 0;
      parts.forEach((part, r) => {
        expect(part.length).toBeGreaterThan(0);
        part.forEach((b, j) => expect(b.position.batchIndex).toBe(start + r + 3 * j));
      });
      const merged = parts.flat().sort((a, b) => a.position.batchIndex - b.position.batchIndex);
      expect(merged.map(key)).toEqual(whole.map(key));
      for (const b of merged) expect(b.embeds).toEqual(whole.find((w) => w.position.batchIndex === b.position.batchIndex)!.embeds);
    });
  }

  it('refuses an offset outside the stride, by name', async () => {
    await expect(all({ batchStride: 2, batchOffset: 2 })).rejects.toThrow(/batchOffset 2 must be < batchStride 2/);
  });
});
