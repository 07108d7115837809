/**
 * `swiftbrush import-npy --prompts prompts.txt --dir DIR --out FILE.parquet`: converts the official
 * SwiftBrush preparation layout (`{i}.npy` per prompt line) into one embedding Parquet file.
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import { log } from '../log.ts';
import { importNpy } from '../streams/npy.ts';
import { int } from './options.ts';

export function register(program: Command): void {
  program
    .command('import-npy')
    .description('convert prompts.txt + a folder of {i}.npy embeddings (official SwiftBrush layout) to Parquet')
    .requiredOption('--prompts <file>', 'prompts file, one prompt a line (line i ↔ DIR/{i}.npy) (required)')
    .option('--dir <dir>', 'folder of {i}.npy (default: the prompts file path without .txt)')
    .requiredOption('--out <file>', 'output .parquet (required)')
    .option('--null-npy <file>', 'embedding of the empty prompt, stored as a row with prompt ""')
    .option('--row-group-size <n>', 'rows per row group', int(1), 1024)
    .addOption(new Option('--compression <codec>', 'Parquet compression').choices(['snappy', 'zstd', 'none']).default('snappy'))
    .action(async (opts: { prompts: string; dir?: string; out: string; nullNpy?: string; rowGroupSize: number; compression: 'snappy' | 'zstd' | 'none' }) => {
      const t0 = performance.now();
      const r = await importNpy(opts.prompts, opts.out, {
        dir: opts.dir,
        nullNpy: opts.nullNpy,
        rowGroupSize: opts.rowGroupSize,
        compression: opts.compression,
        onProgress: (done, total) => {
          if (done % 10_000 === 0) log.info({ done, total }, 'import-npy');
        },
      });
      process.stdout.write(`wrote ${opts.out}: ${r.rows} rows of [${r.shape.join(', ')}] float32 in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    });
}
