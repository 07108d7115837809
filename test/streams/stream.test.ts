/** Stream semantics: backpressure, shuffling, sharding, resume, null prompt, limit, last batch. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { concatMap, firstValueFrom, lastValueFrom, Subject, take, tap, toArray } from 'rxjs';
import { embeddingBatches, expandFiles, readNullEmbedding, type EmbeddingBatch, type EmbeddingStreamOptions } from '../../src/streams/reader.ts';
import { writeEmbeddingParquet } from '../../src/streams/writer.ts';
import { makeRows, tempDir } from './helpers.ts';

const tmp = tempDir();
const L = 3;
const D = 4;
let fileA = '';
let fileB = '';
let withNull = '';
const N_A = 95; // 10 row groups of 10 (last 5)
const N_B = 40;

beforeAll(async () => {
  fileA = join(tmp.dir, 'a.parquet');
  fileB = join(tmp.dir, 'b.parquet');
  withNull = join(tmp.dir, 'with-null.parquet');
  const a = makeRows(N_A, L, D, (r) => `a${r}`);
  await writeEmbeddingParquet(fileA, a.prompts, a.embeds, [L, D], { rowGroupSize: 10 });
  const b = makeRows(N_B, L, D, (r) => `b${r}`);
  b.embeds.forEach((_, i) => (b.embeds[i]! += 1000));
  await writeEmbeddingParquet(fileB, b.prompts, b.embeds, [L, D], { rowGroupSize: 8, compression: 'zstd' });
  const c = makeRows(25, L, D, (r) => (r === 13 ? '' : `c${r}`));
  await writeEmbeddingParquet(withNull, c.prompts, c.embeds, [L, D], { rowGroupSize: 10 });
});
afterAll(() => tmp.cleanup());

const all = (o: Partial<EmbeddingStreamOptions>) =>
  lastValueFrom(embeddingBatches({ files: [fileA, fileB], batchSize: 8, ...o }).pipe(toArray()));
const key = (bs: EmbeddingBatch[]) => bs.map((b) => b.prompts.join(','));
const rowOf = (b: EmbeddingBatch, i: number) => b.embeds[i * L * D]!;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Polls `cond` (the machine may be busy: no fixed delays for progress). */
async function until(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error('timed out waiting');
    await sleep(2);
  }
}

describe('batches', () => {
  it('rows fill batches across row groups and files; the last batch is short, not padded; dropLast drops it', async () => {
    const b = await all({});
    expect(b.map((x) => x.shape[0])).toEqual([...Array(16).fill(8), 7]);
    expect(b.flatMap((x) => x.prompts)).toEqual([...Array.from({ length: N_A }, (_, r) => `a${r}`), ...Array.from({ length: N_B }, (_, r) => `b${r}`)]);
    // Each row's embedding travels with its prompt.
    for (const x of b) x.prompts.forEach((p, i) => expect(rowOf(x, i)).toBe(p[0] === 'a' ? Number(p.slice(1)) : 1000 + Number(p.slice(1))));
    expect(b[16]!.embeds.length).toBe(7 * L * D);
    const d = await all({ dropLast: true });
    expect(d.map((x) => x.shape[0])).toEqual(Array(16).fill(8));
  });

  it('epochs continue the global batch index; each epoch ends with its own short batch', async () => {
    const b = await all({ epochs: 3 });
    expect(b.length).toBe(51);
    expect(b.map((x) => x.position.batchIndex)).toEqual(Array.from({ length: 51 }, (_, i) => i));
    expect(b.map((x) => x.position.epoch)).toEqual([...Array(17).fill(0), ...Array(17).fill(1), ...Array(17).fill(2)]);
    expect(b[16]!.shape[0]).toBe(7);
    expect(b[33]!.shape[0]).toBe(7);
  });

  it('epochs: Infinity streams until unsubscribed', async () => {
    const b = await lastValueFrom(embeddingBatches({ files: [fileB], batchSize: 16, epochs: Infinity }).pipe(take(10), toArray()));
    expect(b.map((x) => x.position.epoch)).toEqual([0, 0, 0, 1, 1, 1, 2, 2, 2, 3]);
  });

  it('limit keeps the first rows of the data set', async () => {
    const b = await all({ limit: 23 });
    expect(b.flatMap((x) => x.prompts)).toEqual(Array.from({ length: 23 }, (_, r) => `a${r}`));
    const c = await all({ limit: 100, shuffle: true, seed: 4, epochs: 2 });
    const rows = c.flatMap((x) => x.prompts);
    expect(rows.length).toBe(200);
    expect(new Set(rows.slice(0, 100))).toEqual(new Set([...Array.from({ length: 95 }, (_, r) => `a${r}`), 'b0', 'b1', 'b2', 'b3', 'b4']));
  });

  it('null-prompt rows are not trained on; readNullEmbedding finds them', async () => {
    const b = await lastValueFrom(embeddingBatches({ files: [withNull], batchSize: 5 }).pipe(toArray()));
    const prompts = b.flatMap((x) => x.prompts);
    expect(prompts.length).toBe(24);
    expect(prompts).not.toContain('');
    expect(b.map((x) => x.shape[0])).toEqual([5, 5, 5, 5, 4]);
    const nul = await readNullEmbedding([fileA, withNull]);
    expect(nul.shape).toEqual([L, D]);
    expect(nul.row).toBe(13);
    expect(nul.embeds[0]).toBe(13);
    expect(nul.embeds.length).toBe(L * D);
    await expect(readNullEmbedding(fileA)).rejects.toThrow(/no null-prompt row \(prompt == ""\)/);
  });

  it('expandFiles: globs, comma lists, directories', () => {
    expect(expandFiles(join(tmp.dir, '*.parquet'))).toEqual([fileA, fileB, withNull].sort());
    expect(expandFiles(`${fileB},${fileA}`)).toEqual([fileB, fileA]);
    expect(expandFiles(tmp.dir)).toEqual([fileA, fileB, withNull].sort());
    expect(() => expandFiles(join(tmp.dir, 'nope*.parquet'))).toThrow(/no file matches/);
  });
});

describe('backpressure', () => {
  it('with demand: never more than `prefetch` batches beyond the demand (counted in decoded row groups)', async () => {
    // One row group = one batch (10 rows), so decoded row groups == batches produced.
    for (const prefetch of [1, 2, 3]) {
      let decoded = 0;
      let demanded = 0;
      let maxAhead = -Infinity;
      const demand = new Subject<void>();
      const seen: number[] = [];
      await new Promise<void>((resolve, reject) => {
        embeddingBatches({
          files: [fileA],
          batchSize: 10,
          prefetch,
          readAhead: 0,
          demand,
          onRowGroupRead: (e) => {
            if (e.mode === 'full') decoded++;
            maxAhead = Math.max(maxAhead, decoded - demanded);
          },
        })
          .pipe(
            // A slow asynchronous consumer: it lets the reader run as far ahead as it will (waits
            // for it to stall at the bound, then a little longer to catch any overshoot) before it
            // asks for one more batch.
            concatMap(async (b) => {
              const target = Math.min(prefetch, 10 - demanded);
              const t0 = Date.now();
              while (decoded - demanded < target && Date.now() - t0 < 5000) await sleep(2);
              await sleep(15);
              expect(decoded - demanded).toBe(target);
              seen.push(b.position.batchIndex);
              demanded++;
              demand.next();
            }),
          )
          .subscribe({ error: reject, complete: resolve });
      });
      expect(seen).toEqual(Array.from({ length: 10 }, (_, i) => i));
      expect(maxAhead).toBe(prefetch);
    }
  });

  it('with demand but no consumer progress, decoding stops at `prefetch` batches', async () => {
    let decoded = 0;
    const demand = new Subject<void>();
    const got: EmbeddingBatch[] = [];
    const sub = embeddingBatches({ files: [fileA], batchSize: 10, prefetch: 2, readAhead: 0, demand, onRowGroupRead: () => decoded++ }).subscribe((b) => got.push(b));
    await until(() => got.length >= 2);
    await sleep(50);
    expect(got.length).toBe(2);
    expect(decoded).toBe(2);
    demand.next();
    await until(() => got.length >= 3);
    await sleep(50);
    expect(got.length).toBe(3);
    expect(decoded).toBe(3);
    sub.unsubscribe();
  });

  it('with read-ahead (default 1) one extra row group is decoding in the background, no more', async () => {
    let decoded = 0;
    const demand = new Subject<void>();
    const sub = embeddingBatches({ files: [fileA], batchSize: 10, prefetch: 2, demand, onRowGroupRead: () => decoded++ }).subscribe();
    await until(() => decoded >= 2);
    await sleep(50);
    expect(decoded).toBe(2); // consumed by the two allowed batches (the 3rd is only in flight in the worker)
    sub.unsubscribe();
  });

  it('without demand: a lazy pull; a synchronous consumer is never more than `prefetch` batches behind', async () => {
    let decoded = 0;
    let delivered = 0;
    let maxAhead = 0;
    await lastValueFrom(
      embeddingBatches({ files: [fileA], batchSize: 10, prefetch: 2, readAhead: 0, onRowGroupRead: () => (decoded++, (maxAhead = Math.max(maxAhead, decoded - delivered))) }).pipe(
        tap(() => delivered++),
      ),
    );
    expect(delivered).toBe(10);
    expect(maxAhead).toBeLessThanOrEqual(2);
  });

  it('unsubscribing early stops decoding', async () => {
    let decoded = 0;
    await firstValueFrom(embeddingBatches({ files: [fileA], batchSize: 10, readAhead: 0, onRowGroupRead: () => decoded++ }));
    await sleep(100);
    expect(decoded).toBeLessThanOrEqual(2);
  });
});

describe('shuffle, shards, resume', () => {
  it('same seed ⇒ same order; another seed or epoch ⇒ another order; every epoch holds every row once', async () => {
    const o = { shuffle: true, seed: 7, shuffleBuffer: 20, epochs: 2 };
    const a = await all(o);
    const b = await all(o);
    const c = await all({ ...o, seed: 8 });
    expect(key(a)).toEqual(key(b));
    expect(key(a)).not.toEqual(key(c));
    const e0 = a.filter((x) => x.position.epoch === 0).flatMap((x) => x.prompts);
    const e1 = a.filter((x) => x.position.epoch === 1).flatMap((x) => x.prompts);
    expect(e0).not.toEqual(e1);
    const plain = (await all({})).flatMap((x) => x.prompts);
    expect([...e0].sort()).toEqual([...plain].sort());
    expect([...e1].sort()).toEqual([...plain].sort());
    expect(e0).not.toEqual(plain);
    for (const x of a) x.prompts.forEach((p, i) => expect(rowOf(x, i)).toBe(p[0] === 'a' ? Number(p.slice(1)) : 1000 + Number(p.slice(1))));
  });

  it('shards (rank/worldSize over row groups) are disjoint and cover the data set', async () => {
    const plain = (await all({})).flatMap((x) => x.prompts);
    for (const world of [2, 3, 5]) {
      const shards = await Promise.all(Array.from({ length: world }, (_, rank) => all({ rank, worldSize: world, shuffle: true, seed: 1 })));
      const rows = shards.map((s) => s.flatMap((x) => x.prompts));
      const union = rows.flat();
      expect(union.length).toBe(plain.length);
      expect(new Set(union).size).toBe(plain.length);
      expect([...union].sort()).toEqual([...plain].sort());
    }
    await expect(all({ rank: 0, worldSize: 40 })).resolves.toBeDefined();
    await expect(all({ rank: 16, worldSize: 17 })).rejects.toThrow(/gets no row group/);
  });

  it('resume via startBatch reproduces the tail of the uninterrupted sequence', async () => {
    for (const o of [{}, { shuffle: true, seed: 3, shuffleBuffer: 30 }, { shuffle: true, seed: 5, shuffleBuffer: 1 }, { shuffle: true, seed: 9, dropLast: true }]) {
      const files = [fileA, withNull, fileB];
      const full = await lastValueFrom(embeddingBatches({ files, batchSize: 8, epochs: 3, ...o }).pipe(toArray()));
      for (const start of [1, 7, 19, 20, 21, full.length - 1, full.length]) {
        let decoded = 0;
        const tail = await lastValueFrom(
          embeddingBatches({ files, batchSize: 8, epochs: 3, startBatch: start, ...o, onRowGroupRead: (e) => e.mode === 'full' && decoded++ }).pipe(toArray()),
        );
        expect(key(tail), `${JSON.stringify(o)} start ${start}`).toEqual(key(full.slice(start)));
        expect(tail.map((b) => b.position)).toEqual(full.slice(start).map((b) => b.position));
        tail.forEach((b, i) => expect(b.embeds).toEqual(full[start + i]!.embeds));
        if (start === full.length) expect(decoded).toBe(0); // nothing left: no embedding decoded
      }
    }
  });
});

describe('errors and scheduling', () => {
  it('files of different shapes cannot share a stream', async () => {
    const other = join(tmp.dir, 'other-shape.parquet');
    const o = makeRows(4, 2, 6);
    await writeEmbeddingParquet(other, o.prompts, o.embeds, [2, 6]);
    await expect(all({ files: [fileA, other] })).rejects.toThrow(/other-shape\.parquet: embeddings have shape \[2, 6\] but .*a\.parquet has \[3, 4\]/);
  });

  it('a missing prompt (null) is an error naming the row, not a silent skip', async () => {
    const { writeLayout } = await import('./helpers.ts');
    const file = join(tmp.dir, 'null-prompt.parquet');
    const r = makeRows(12, L, D);
    writeLayout(file, 'list', r.prompts.map((p, i) => (i === 9 ? (null as unknown as string) : p)), r.embeds, [L, D], { rowGroupSize: 4 });
    await expect(all({ files: [file], batchSize: 2 })).rejects.toThrow(/null-prompt\.parquet, row group 2, row 9: prompt is null/);
  });

  it('option errors arrive as stream errors', async () => {
    await expect(all({ batchSize: 0 })).rejects.toThrow(/batchSize must be an integer >= 1/);
    await expect(all({ rank: 2, worldSize: 2 })).rejects.toThrow(/rank 2 must be < worldSize 2/);
    await expect(all({ files: [join(tmp.dir, 'missing.parquet')] })).rejects.toThrow(/missing\.parquet: cannot open/);
  });

  it('a scheduler moves deliveries (asyncScheduler) without changing order or content', async () => {
    const { asyncScheduler } = await import('rxjs');
    const a = await all({ shuffle: true, seed: 2 });
    const b = await all({ shuffle: true, seed: 2, scheduler: asyncScheduler });
    expect(key(b)).toEqual(key(a));
  });
});
