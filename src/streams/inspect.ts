/**
 * `inspectEmbeddings(file)`: what a user checks before a long run. Decodes every row group (one at a
 * time) and computes statistics over every embedding value in float64: per row group a two-pass
 * mean / sum of squared deviations, merged across row groups with Chan et al.'s formula.
 * Non-finite values are counted (not thrown) and excluded from the moments; the CLI exits non-zero
 * when there are any.
 */
import { EmbeddingFile, shapeCandidates, type EmbeddingDtype, type OpenOptions, type ShapeSource } from './parquet.ts';

export interface InspectReport {
  file: string;
  rows: number;
  rowGroups: number;
  rowGroupRows: number[];
  layout: string;
  /** Values per row (L · D). */
  rowLength: number;
  /**
   * [L, D] per row; null when the file says nothing about it (flat lists without metadata and no
   * `shape` option): then `shapeCandidates` lists what the rows could be.
   */
  shape: [number, number] | null;
  shapeSource: ShapeSource;
  shapeCandidates?: [number, number][];
  dtype: EmbeddingDtype;
  writer: string | undefined;
  compression: string[];
  /** Number of finite embedding values the moments are over. */
  count: number;
  sum: number;
  mean: number;
  /** Population standard deviation (ddof = 0, like numpy's default). */
  std: number;
  min: number;
  max: number;
  nanCount: number;
  infCount: number;
  /** File row of the first NaN / Inf, if any. */
  firstNonFiniteRow: number | undefined;
  /** Rows whose prompt is "" (the null prompt: excluded from training batches). */
  nullPromptRows: number;
  firstPrompt: string | null | undefined;
  lastPrompt: string | null | undefined;
  metadata: Record<string, string>;
}

export async function inspectEmbeddings(file: string, options: OpenOptions = {}): Promise<InspectReport> {
  const f = await EmbeddingFile.open(file, options);
  try {
    const { info } = f;
    const nf = { nanCount: 0, infCount: 0, firstRow: undefined as number | undefined };
    let count = 0;
    let mean = 0;
    let m2 = 0;
    let sum = 0;
    let min = Infinity;
    let max = -Infinity;
    let nullPromptRows = 0;
    let firstPrompt: string | null | undefined;
    let lastPrompt: string | null | undefined;
    for (let g = 0; g < f.numRowGroups; g++) {
      if (info.rowGroupRows[g] === 0) continue;
      const group = await f.readRowGroup(g, nf);
      if (firstPrompt === undefined) firstPrompt = group.prompts[0];
      lastPrompt = group.prompts[group.rows - 1];
      for (const p of group.prompts) if (p === '') nullPromptRows++;
      const v = group.embeds;
      // Pass 1: count, sum, min, max (finite values only).
      let n = 0;
      let s = 0;
      let lo = Infinity;
      let hi = -Infinity;
      for (let i = 0; i < v.length; i++) {
        const x = v[i]!;
        if (x - x !== 0) continue;
        n++;
        s += x;
        if (x < lo) lo = x;
        if (x > hi) hi = x;
      }
      if (n === 0) continue;
      const gm = s / n;
      // Pass 2: squared deviations around the group mean.
      let q = 0;
      for (let i = 0; i < v.length; i++) {
        const x = v[i]!;
        if (x - x !== 0) continue;
        const d = x - gm;
        q += d * d;
      }
      const total = count + n;
      const delta = gm - mean;
      m2 += q + (delta * delta * count * n) / total;
      mean += (delta * n) / total;
      count = total;
      sum += s;
      if (lo < min) min = lo;
      if (hi > max) max = hi;
    }
    return {
      file,
      rows: info.rows,
      rowGroups: info.rowGroupRows.length,
      rowGroupRows: info.rowGroupRows,
      layout: info.layout,
      rowLength: info.shape[0] * info.shape[1],
      shape: info.shapeSource === 'inferred' ? null : info.shape,
      shapeSource: info.shapeSource,
      ...(info.shapeSource === 'inferred' ? { shapeCandidates: shapeCandidates(info.shape[0] * info.shape[1]) } : {}),
      dtype: info.dtype,
      writer: info.createdBy,
      compression: info.compression,
      count,
      sum,
      mean: count ? mean : NaN,
      std: count ? Math.sqrt(m2 / count) : NaN,
      min: count ? min : NaN,
      max: count ? max : NaN,
      nanCount: nf.nanCount,
      infCount: nf.infCount,
      firstNonFiniteRow: nf.firstRow,
      nullPromptRows,
      firstPrompt,
      lastPrompt,
      metadata: info.metadata,
    };
  } finally {
    f.close();
  }
}
