/**
 * `swiftbrush inspect FILES… [--json] [--shape L,D]`: rows, row groups, layout, shape, dtype and
 * statistics over every embedding value (count, mean, std, min, max, NaN / Inf counts) of each file
 * (paths, globs or comma lists, as `distill --embeddings` takes them), to check a set before a long
 * run. A flat file without shape metadata gets its row length and the shapes it could be, not a
 * guess. Exits non-zero when a file is unreadable or holds non-finite values.
 */
import type { Command } from 'commander';
import { expandFiles } from '../streams/reader.ts';
import { inspectEmbeddings, type InspectReport } from '../streams/inspect.ts';

export function register(program: Command): void {
  program
    .command('inspect')
    .description('check embedding Parquet files: layout, shape, row groups and value statistics')
    .argument('<files...>', 'embedding Parquet file(s): paths, globs or comma lists')
    .option('--json', 'print the report as JSON on stdout (an array when there are several files)')
    .option('--shape <L,D>', 'embedding shape for flat lists without swiftbrush.embedding_shape metadata')
    .option('--allow-float64', 'accept float64 embeddings (narrowed to float32)')
    .action(async (specs: string[], opts: { json?: boolean; shape?: string; allowFloat64?: boolean }) => {
      const shape = opts.shape ? parseShapeOption(opts.shape) : undefined;
      const files = expandFiles(specs);
      const reports: InspectReport[] = [];
      for (const file of files) {
        const r = await inspectEmbeddings(file, { shape, allowFloat64: opts.allowFloat64 });
        reports.push(r);
        if (!opts.json) process.stdout.write((reports.length > 1 ? '\n' : '') + toText(r));
      }
      if (opts.json) process.stdout.write(JSON.stringify(reports.length === 1 ? toJson(reports[0]!) : reports.map(toJson), null, 1) + '\n');
      const bad = reports.filter((r) => r.nanCount + r.infCount > 0);
      if (bad.length) {
        throw new Error(bad.map((r) => `${r.file}: ${r.nanCount} NaN and ${r.infCount} Inf values; the first in row ${r.firstNonFiniteRow} (a training stream refuses this file)`).join('\n'));
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
    `rows         ${r.rows} in ${plural(r.rowGroups, 'row group')} (${summarise(r.rowGroupRows)})`,
    `layout       ${r.layout}, ${r.dtype}`,
    r.shape
      ? `shape        [${r.shape.join(', ')}] per row (${r.shapeSource})`
      : `shape        unknown: ${r.rowLength} values per row and no swiftbrush.embedding_shape metadata, so [L, D] could be ${r.shapeCandidates!.map((c) => `[${c.join(', ')}]`).join(', ')}; \`--shape L,D\` settles it (distill, sample and eval take D from the UNet's cross_attention_dim)`,
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
  return min === max ? `${plural(max, 'row')} each` : `${min}-${max} rows each`;
}

function plural(n: number, what: string): string {
  return `${n} ${what}${n === 1 ? '' : 's'}`;
}
