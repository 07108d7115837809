/** The Parquet fixtures: inspect --json vs expected.json, every bad file refused with a clear message. */
import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { lastValueFrom, toArray } from 'rxjs';
import { Command } from 'commander';
import { embeddingBatches, inspectEmbeddings } from '../../src/streams/reader.ts';
import { register as registerInspect } from '../../src/cli/inspect.ts';

const run = promisify(execFile);
const FIX = join(import.meta.dirname, '../fixtures');
const GOOD = join(FIX, 'parquet');
const BAD = join(FIX, 'parquet-bad');
const BIN = join(import.meta.dirname, '../../bin/swiftbrush.mjs');
const expected = JSON.parse(readFileSync(join(GOOD, 'expected.json'), 'utf8')) as Record<string, Record<string, unknown>>;
const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-300);

/** Real process: bin/swiftbrush.mjs (slow to start: every command module loads). */
async function spawnCli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [BIN, ...args], { env: { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'error' } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/**
 * The inspect command in-process (same register() and action as the binary; main.ts's error
 * handler reproduced: message on stderr, exit code 1).
 */
async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const program = new Command('swiftbrush').exitOverride();
  registerInspect(program);
  let stdout = '';
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string) => ((stdout += chunk), true)) as typeof process.stdout.write;
  try {
    await program.parseAsync(['node', 'swiftbrush', ...args]);
    return { code: 0, stdout, stderr: '' };
  } catch (err) {
    return { code: 1, stdout, stderr: `swiftbrush: error: ${(err as Error).message}\n` };
  } finally {
    process.stdout.write = write;
  }
}

describe('the swiftbrush binary', () => {
  it('inspect --json prints the report and exits 0 on a good file, 1 with the problem on a bad one', async () => {
    const [good, bad] = await Promise.all([
      spawnCli('inspect', '--json', join(GOOD, 'pyarrow_list_snappy.parquet')),
      spawnCli('inspect', '--json', join(BAD, 'short_row23.parquet')),
    ]);
    expect(good.code, good.stderr).toBe(0);
    expect(JSON.parse(good.stdout)).toMatchObject({ rows: 300, rowGroups: 5, shape: [8, 32] });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/short_row23\.parquet, row group 1, row 23: row 23 has 31 values, expected 32/);
  });
});

describe('fixtures/parquet', () => {
  it('swiftbrush inspect --json matches expected.json for every file', async () => {
    const names = Object.keys(expected);
    expect(names.length).toBe(7);
    // One call with every file (inspect takes several, as distill does); the files without shape
    // metadata (polars, duckdb: flat lists) report their row length, not a guessed shape.
    const all = await cli('inspect', '--json', ...names.map((n) => join(GOOD, n)));
    expect(all.code, all.stderr).toBe(0);
    const reports = JSON.parse(all.stdout) as Record<string, unknown>[];
    expect(reports.length).toBe(names.length);
    const flat = names.filter((_, i) => reports[i]!.shapeSource === 'inferred');
    expect(flat.sort()).toEqual(['duckdb_list.parquet', 'polars_list_zstd.parquet']);
    const withShape = await cli('inspect', '--json', '--shape', '8,32', ...flat.map((n) => join(GOOD, n)));
    expect(withShape.code, withShape.stderr).toBe(0);
    const settled = JSON.parse(withShape.stdout) as Record<string, unknown>[];
    names.forEach((name, i) => {
      const got = reports[i] as Record<string, any>;
      const e = expected[name]!;
      expect(got.rows, name).toBe(e.rows);
      expect(got.rowGroups, name).toBe(e.row_groups);
      expect(got.rowLength, name).toBe(256);
      if (flat.includes(name)) {
        expect(got.shape, name).toBeNull();
        expect(got.shapeCandidates, name).toContainEqual([8, 32]);
        expect(got.shapeCandidates, name).toContainEqual([4, 64]);
        expect(settled[flat.indexOf(name)]!.shape, name).toEqual(e.shape);
      } else {
        expect(got.shape, name).toEqual(e.shape);
      }
      for (const k of ['sum', 'mean', 'std', 'min', 'max']) expect(rel(got[k], e[k] as number), `${name} ${k}`).toBeLessThan(1e-6);
      expect(got.count).toBe((e.rows as number) * 256);
      expect(got.nanCount).toBe(0);
      expect(got.firstPrompt).toBe(e.prompt0);
      expect(got.lastPrompt).toBe(e.prompt_last);
    });
  });

  for (const name of Object.keys(expected)) {
    it(`${name}: streamed batches carry the file's values in order`, async () => {
      const e = expected[name]!;
      const batches = await lastValueFrom(embeddingBatches({ files: [join(GOOD, name)], batchSize: 32 }).pipe(toArray()));
      expect(batches.map((b) => b.shape[0])).toEqual([32, 32, 32, 32, 32, 32, 32, 32, 32, 12]);
      expect(batches[0]!.shape.slice(1)).toEqual(e.shape);
      expect(batches[0]!.embeds[0]).toBe(e.row0_first);
      const last = batches[batches.length - 1]!;
      expect(last.embeds[last.embeds.length - 1]).toBe(e.last_row_last);
      expect(batches[0]!.prompts[0]).toBe(e.prompt0);
      expect(last.prompts[last.prompts.length - 1]).toBe(e.prompt_last);
      expect(batches.map((b) => b.position.batchIndex)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      let sum = 0;
      for (const b of batches) for (const v of b.embeds) sum += v;
      expect(rel(sum, e.sum as number)).toBeLessThan(1e-9);
    });
  }
});

describe('fixtures/parquet-bad', () => {
  const cases: [string, RegExp, { rowGroup?: number; row?: number }][] = [
    ['nan_row17.parquet', /row group 1, row 17: non-finite value \(NaN\) in row 17/, { rowGroup: 1, row: 17 }],
    ['short_row23.parquet', /row group 1, row 23: row 23 has 31 values, expected 32 \(shape \[4, 8\]\)/, { rowGroup: 1, row: 23 }],
    ['no_embedding_column.parquet', /no embedding column 'prompt_embeds' \(columns: prompt, text_vec\)/, {}],
    ['truncated.parquet', /truncated or corrupt Parquet file/, {}],
    ['not_parquet.parquet', /not a Parquet file/, {}],
    ['float64.parquet', /float64 values .*expected float32/, {}],
  ];
  const cliMessage: Record<string, RegExp> = { 'nan_row17.parquet': /1 NaN and 0 Inf values; the first in row 17/ };

  it('cases.json lists exactly these files', () => {
    const listed = Object.keys(JSON.parse(readFileSync(join(BAD, 'cases.json'), 'utf8'))).sort();
    expect(listed).toEqual(cases.map((c) => c[0]).sort());
  });

  it('swiftbrush inspect exits non-zero naming the problem (and row); good.parquet passes', async () => {
    const results: { code: number; stdout: string; stderr: string }[] = [];
    for (const c of cases) results.push(await cli('inspect', '--json', join(BAD, c[0])));
    results.push(await cli('inspect', join(BAD, 'good.parquet')));
    cases.forEach(([name, re], i) => {
      const r = results[i]!;
      expect(r.code, name).not.toBe(0);
      expect(r.stderr, name).toContain(name);
      expect(r.stderr, name).toMatch(cliMessage[name] ?? re);
    });
    expect(results[cases.length]!.code).toBe(0);
  });

  for (const [name, re, where] of cases) {
    it(`the stream refuses ${name} and stops`, async () => {
      const seen: number[] = [];
      const err = await new Promise<Error | null>((resolve) =>
        embeddingBatches({ files: [join(BAD, 'good.parquet'), join(BAD, name)], batchSize: 4 }).subscribe({
          next: (b) => seen.push(b.shape[0]),
          error: resolve,
          complete: () => resolve(null),
        }),
      );
      expect(err).not.toBeNull();
      expect(err!.message).toMatch(re);
      expect(err!.message).toContain(join(BAD, name));
      if (where.row !== undefined) expect(err).toMatchObject(where);
      // Nothing short or padded was emitted before the error.
      expect(seen.every((n) => n === 4)).toBe(true);
    });
  }

  it('inspectEmbeddings counts NaN instead of throwing', async () => {
    const r = await inspectEmbeddings(join(BAD, 'nan_row17.parquet'));
    expect(r.nanCount).toBe(1);
    expect(r.firstNonFiniteRow).toBe(17);
  });

  it('float64 is accepted when asked (narrowed to float32)', async () => {
    const b = await lastValueFrom(embeddingBatches({ files: [join(BAD, 'float64.parquet')], batchSize: 40, allowFloat64: true }).pipe(toArray()));
    expect(b[0]!.shape).toEqual([40, 4, 8]);
  });
});
