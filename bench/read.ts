/**
 * `npm run bench:read`: read throughput and peak memory of the embedding stream.
 *
 * Writes a ≥ 1 GB Parquet file of [16, 64] float32 rows (list<float32>, snappy, 1000-row groups;
 * random values, so snappy cannot shrink them) into a temp dir with the project's writer, then
 * streams it with `embeddingBatches` in a fresh process and reports MB/s of float payload (decimal
 * MB, payload = rows × 16 × 64 × 4 bytes) and that process's peak RSS. The temp dir is removed after.
 *
 *   node --import tsx bench/read.ts [--gb 1.05] [--batch 64] [--shuffle] [--json] [--keep FILE]
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { lastValueFrom, tap, count } from 'rxjs';
import { EmbeddingParquetWriter } from '../src/streams/writer.ts';
import { embeddingBatches } from '../src/streams/reader.ts';
import { Option } from 'commander';
import { flags, float, int } from './common.ts';

const L = 16;
const D = 64;
const GROUP = 1000;

interface Flags {
  gb: number;
  batch: number;
  shuffle?: boolean;
  json?: boolean;
  keep?: string;
  /** Internal: the child processes' phase. */
  phase?: 'write' | 'read';
  file?: string;
  readAhead?: number;
}
const o = flags<Flags>('read', 'read throughput and peak memory of the embedding stream', (p) =>
  p
    .option('--gb <n>', 'size of the Parquet file to write', float, 1.05)
    .option('--batch <n>', 'prompts per batch', int(1), 64)
    .option('--shuffle', 'shuffled reading')
    .option('--json', 'print one JSON object')
    .option('--keep <file>', 'write the file here and keep it (reused when it exists)')
    .addOption(new Option('--phase <phase>').choices(['write', 'read']).hideHelp())
    .addOption(new Option('--file <file>').hideHelp())
    .addOption(new Option('--read-ahead <n>').argParser(int(0)).hideHelp()),
);

async function writePhase(file: string, gb: number): Promise<void> {
  const rowBytes = L * D * 4;
  const rows = Math.ceil((gb * 1e9) / rowBytes / GROUP) * GROUP;
  const w = await EmbeddingParquetWriter.create(file, [L, D], { rowGroupSize: GROUP, compression: 'snappy' });
  let s = 0x12345678;
  const embeds = new Float32Array(GROUP * L * D);
  const t0 = performance.now();
  for (let r = 0; r < rows; r += GROUP) {
    for (let i = 0; i < embeds.length; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      embeds[i] = (s >>> 0) / 2 ** 31 - 1;
    }
    const prompts = Array.from({ length: GROUP }, (_, k) => `bench prompt ${r + k}`);
    await w.write(prompts, embeds);
  }
  await w.close();
  const seconds = (performance.now() - t0) / 1000;
  process.stdout.write(JSON.stringify({ rows, bytes: statSync(file).size, seconds }) + '\n');
}

async function readPhase(file: string, batchSize: number, shuffle: boolean, readAhead: number | undefined): Promise<void> {
  let peak = process.memoryUsage().rss;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  let rows = 0;
  let groups = 0;
  let checksum = 0;
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const batches = await lastValueFrom(
    embeddingBatches({ files: [file], batchSize, shuffle, seed: 1, readAhead, onRowGroupRead: () => groups++ }).pipe(
      tap((b) => {
        rows += b.shape[0];
        checksum += b.embeds[0]! + b.embeds[b.embeds.length - 1]!;
      }),
      count(),
    ),
  );
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6; // all threads (main + decode worker)
  clearInterval(sampler);
  peak = Math.max(peak, process.memoryUsage().rss, process.resourceUsage().maxRSS * 1024);
  const payload = rows * L * D * 4;
  process.stdout.write(
    JSON.stringify({ rows, batches, rowGroups: groups, seconds, cpuSeconds, payloadBytes: payload, mbPerSec: payload / 1e6 / seconds, peakRssMiB: peak / 2 ** 20, checksum }) + '\n',
  );
}

function child(args: string[]): Record<string, number> {
  const self = fileURLToPath(import.meta.url);
  const r = spawnSync(process.execPath, ['--import', 'tsx', self, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`bench child ${args[1]} failed (exit ${r.status})`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, number>;
}

async function main(): Promise<void> {
  if (o.phase === 'write') return writePhase(o.file!, o.gb);
  if (o.phase === 'read') return readPhase(o.file!, o.batch, Boolean(o.shuffle), o.readAhead);

  const { gb, batch, keep } = o;
  const dir = keep ? undefined : mkdtempSync(join(tmpdir(), 'swiftbrush-bench-'));
  const file = keep ?? join(dir!, 'bench.parquet');
  try {
    const w = keep && existsNonEmpty(file) ? { rows: NaN, bytes: statSync(file).size, seconds: 0 } : child(['--phase', 'write', '--file', file, '--gb', String(gb)]);
    const r = child(['--phase', 'read', '--file', file, '--batch', String(batch), ...(o.shuffle ? ['--shuffle'] : [])]);
    const result = {
      file: { rows: r.rows, rowGroups: r.rowGroups, bytes: w.bytes, shape: [L, D], rowGroupRows: GROUP, writeSeconds: w.seconds },
      read: { batchSize: batch, shuffle: Boolean(o.shuffle), seconds: r.seconds, cpuSeconds: r.cpuSeconds, loadAverage: loadavg()[0], payloadMB: r.payloadBytes! / 1e6, mbPerSec: r.mbPerSec, peakRssMiB: r.peakRssMiB },
    };
    if (o.json) process.stdout.write(JSON.stringify(result, null, 1) + '\n');
    else {
      process.stdout.write(
        `wrote ${(w.bytes! / 1e9).toFixed(2)} GB (${r.rows} rows of [${L}, ${D}] float32, ${r.rowGroups} row groups of ${GROUP}, snappy) in ${w.seconds!.toFixed(1)} s\n` +
          `read  ${(r.payloadBytes! / 1e6).toFixed(0)} MB float payload in ${r.seconds!.toFixed(2)} s: ${r.mbPerSec!.toFixed(1)} MB/s, ` +
          `peak RSS ${r.peakRssMiB!.toFixed(0)} MiB (batch ${batch}${o.shuffle ? ', shuffled' : ''})\n` +
          `      CPU ${r.cpuSeconds!.toFixed(2)} s over all threads (${((r.cpuSeconds! / r.payloadBytes!) * 1e9).toFixed(1)} CPU-s per GB); ` +
          `load average ${loadavg()[0]!.toFixed(2)} on ${availableParallelism()} cores (other processes slow the wall-clock rate)\n`,
      );
    }
  } finally {
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

function existsNonEmpty(p: string): boolean {
  try {
    return statSync(p).size > 0;
  } catch {
    return false;
  }
}

await main();
