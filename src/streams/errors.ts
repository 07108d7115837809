/**
 * Errors of the embedding streams. Every refusal names the file and, where the problem sits in the
 * data, the row group and the row (0-based, counted from the start of the file) so a user can find
 * the offending record with pyarrow / duckdb.
 */
export interface EmbeddingErrorLocation {
  file: string;
  rowGroup?: number;
  /** Row index counted from the start of the file (0-based). */
  row?: number;
}

export class EmbeddingFormatError extends Error {
  readonly file: string;
  readonly rowGroup: number | undefined;
  readonly row: number | undefined;
  /** The problem alone, without the location prefix. */
  readonly problem: string;

  constructor(where: EmbeddingErrorLocation, problem: string, options?: { cause?: unknown }) {
    super(`${describeLocation(where)}: ${problem}`, options);
    this.name = 'EmbeddingFormatError';
    this.file = where.file;
    this.rowGroup = where.rowGroup;
    this.row = where.row;
    this.problem = problem;
  }
}

export function describeLocation(where: EmbeddingErrorLocation): string {
  let s = where.file;
  if (where.rowGroup !== undefined) s += `, row group ${where.rowGroup}`;
  if (where.row !== undefined) s += `, row ${where.row}`;
  return s;
}

/** Message of an unknown thrown value (wasm errors are plain Errors with a 'Parquet error: ' prefix). */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
