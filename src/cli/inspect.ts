/**
 * `swiftbrush inspect FILE.parquet [--json]`: rows, row groups, layout, shape, dtype and statistics
 * over every embedding value (count, mean, std, min, max, NaN / Inf counts), to check a set before a
 * long run. Exits non-zero when the file is unreadable or holds non-finite values.
 */
import type { Command } from 'commander';
import { inspectEmbeddings, type InspectReport } from '../streams/inspect.ts';

export function register(program: Command): void {
  program
    .command('inspect')
    .description('check an embedding Parquet file: layout, shape, row groups and value statistics')
    .argument('<file>', 'embedding Parquet file')
    .option('--json', 'print the report as JSON on stdout')
    .option('--shape <L,D>', 'embedding shape for flat lists without swiftbrush.embedding_shape metadata')
    .option('--allow-float64', 'accept float64 embeddings (narrowed to float32)')
    .action(async (file: string, opts: { json?: boolean; shape?: string; allowFloat64?: boolean }) => {
      const shape = opts.shape ? parseShapeOption(opts.shape) : undefined;
      const r = await inspectEmbeddings(file, { shape, allowFloat64: opts.allowFloat64 });
      if (opts.json) process.stdout.write(JSON.stringify(toJson(r), null, 1) + '\n');
      else process.stdout.write(toText(r));
      if (r.nanCount + r.infCount > 0) {
        throw new Error(`${file}: ${r.nanCount} NaN and ${r.infCount} Inf values; the first in row ${r.firstNonFiniteRow} (a training stream refuses this file)`);
      }
    });
}

export function parseShapeOption(s: string): [number, number] {
  const dims = (s.match(/\d+/g) ?? []).map(Number);
  if (dims.length !== 2 || dims.some((d) => d <= 0)) throw new Error(`--shape: expected L,D (e.g. 77,1024), got '${s}'`);
  return [dims[0]!, dims[1]!];
}

/** JSON report; `row_groups`, `prompt0`, `prompt_last` repeat fields under the names of the fixtures' expected.json. */
function toJson(r: InspectReport) {
  return { ...r, row_groups: r.rowGroups, prompt0: r.firstPrompt, prompt_last: r.lastPrompt };
}

function toText(r: InspectReport): string {
  const f = (x: number) => (Number.isFinite(x) ? x.toPrecision(7) : String(x));
  return [
    `file         ${r.file}`,
    `rows         ${r.rows} in ${r.rowGroups} row groups (${summarise(r.rowGroupRows)})`,
    `layout       ${r.layout}, ${r.dtype}`,
    `shape        [${r.shape.join(', ')}] per row (${r.shapeSource})`,
    `writer       ${r.writer ?? 'unknown'}; compression ${r.compression.join(', ') || 'none'}`,
    `values       count ${r.count}  mean ${f(r.mean)}  std ${f(r.std)}  min ${f(r.min)}  max ${f(r.max)}`,
    `non-finite   NaN ${r.nanCount}  Inf ${r.infCount}${r.firstNonFiniteRow !== undefined ? ` (first in row ${r.firstNonFiniteRow})` : ''}`,
    `null prompt  ${r.nullPromptRows} row(s) with prompt ""`,
    `prompts      first ${JSON.stringify(r.firstPrompt)}, last ${JSON.stringify(r.lastPrompt)}`,
    '',
  ].join('\n');
}

function summarise(rows: number[]): string {
  if (rows.length === 0) return 'none';
  const min = Math.min(...rows);
  const max = Math.max(...rows);
  return min === max ? `${max} rows each` : `${min}-${max} rows each`;
}
