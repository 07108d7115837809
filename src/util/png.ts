/**
 * Image grids as 8-bit PNG (grayscale, gray+alpha, RGB or RGBA by channel count), via fast-png.
 * Pixel mapping as diffusers' VaeImageProcessor: [-1,1] → x/2 + 0.5, clamp to [0,1], round(x·255);
 * NaN becomes 0. Written atomically (temp file beside the target, then rename). Rows and column
 * spans may carry text labels (a 5x7 bitmap font): the prompt beside each row, the model above its
 * columns.
 */
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { encode } from 'fast-png';
import { ADVANCE, drawText, GLYPH_HEIGHT, textWidth } from './font.ts';

export interface GridOptions {
  /** Grid size; defaults: cols = ceil(sqrt(N)), rows = ceil(N / cols). rows·cols must be ≥ N. */
  rows?: number;
  cols?: number;
  /** Value range of the input: [-1, 1] (decoder output) or [0, 1]. Default [-1, 1]. */
  range?: [-1, 1] | [0, 1];
  /** Pixels between and around tiles (as torchvision's make_grid). Default 2. */
  padding?: number;
  /** Byte value (0..255) of padding and of empty cells. Default 0 (black). */
  padValue?: number;
  /** Text left of each grid row (e.g. its prompt); one per row. Longer than `maxLabelChars`: cut, ending in "...". */
  rowLabels?: readonly string[];
  /** Text above a span of columns [from, to) (e.g. "teacher, 25 steps" over the teacher's half). */
  columnLabels?: readonly { text: string; from: number; to: number }[];
  /** Font pixel size in image pixels. Default: 1 per 28 pixels of tile height (at least 1). */
  labelScale?: number;
  /** Longest row label drawn. Default 48 characters. */
  maxLabelChars?: number;
}

/** numpy's round (half to even), as diffusers' `(images * 255).round()`. */
function roundHalfEven(p: number): number {
  const r = Math.round(p);
  return r - p === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export interface GridLayout {
  rows: number;
  cols: number;
  width: number;
  height: number;
  channels: number;
}

/** Builds the grid as 8-bit interleaved pixels, tiles row-major (image i at row ⌊i/cols⌋, column i mod cols). */
export function imageGrid(images: Float32Array, shape: readonly number[], opts: GridOptions = {}): { data: Uint8Array } & GridLayout {
  if (shape.length !== 4) throw new Error(`image grid: shape must be [N,H,W,C], got [${shape.join(',')}]`);
  const [N, H, W, C] = shape as [number, number, number, number];
  if (![N, H, W, C].every((d) => Number.isInteger(d) && d > 0)) throw new Error(`image grid: bad shape [${shape.join(',')}]`);
  if (C < 1 || C > 4) throw new Error(`image grid: ${C} channels; PNG takes 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)`);
  if (images.length !== N * H * W * C) throw new Error(`image grid: ${images.length} values for shape [${shape.join(',')}] (${N * H * W * C})`);
  const padding = opts.padding ?? 2;
  const padValue = opts.padValue ?? 0;
  if (!Number.isInteger(padding) || padding < 0) throw new Error(`image grid: padding must be a non-negative integer, got ${padding}`);
  if (!Number.isInteger(padValue) || padValue < 0 || padValue > 255) throw new Error(`image grid: padValue must be an integer in 0..255, got ${padValue}`);
  const cols = opts.cols ?? (opts.rows ? Math.ceil(N / opts.rows) : Math.ceil(Math.sqrt(N)));
  const rows = opts.rows ?? Math.ceil(N / cols);
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1 || rows * cols < N) {
    throw new Error(`image grid: ${rows}x${cols} cells cannot hold ${N} images`);
  }
  const range = opts.range ?? [-1, 1];
  const [lo, hi] = range;
  if (!((lo === -1 && hi === 1) || (lo === 0 && hi === 1))) throw new Error(`image grid: range must be [-1,1] or [0,1], got [${range.join(',')}]`);
  const scale = lo === -1 ? 0.5 : 1;
  const shift = lo === -1 ? 0.5 : 0;

  const fontScale = opts.labelScale ?? Math.max(1, Math.floor(H / 28));
  const maxChars = opts.maxLabelChars ?? 48;
  const rowLabels = opts.rowLabels?.map((t) => (t.length > maxChars ? `${t.slice(0, maxChars - 3)}...` : t));
  if (rowLabels && rowLabels.length !== rows) throw new Error(`image grid: ${rowLabels.length} row labels for ${rows} rows`);
  for (const l of opts.columnLabels ?? []) {
    if (!(Number.isInteger(l.from) && Number.isInteger(l.to) && 0 <= l.from && l.from < l.to && l.to <= cols)) throw new Error(`image grid: column label '${l.text}' spans [${l.from}, ${l.to}) of ${cols} columns`);
  }
  const gap = 3 * fontScale; // between a label and the images
  const left = rowLabels ? Math.max(0, ...rowLabels.map(textWidth)) * fontScale + gap + padding : 0;
  // Column labels wrap at spaces to fit over their columns.
  const spanWidth = (from: number, to: number) => (to - from) * (W + padding) - padding;
  const columnLabels = (opts.columnLabels ?? []).map((l) => ({ ...l, lines: wrap(l.text, Math.floor((spanWidth(l.from, l.to) / fontScale + 1) / ADVANCE)) }));
  const lineHeight = (GLYPH_HEIGHT + 2) * fontScale;
  const top = columnLabels.length ? Math.max(...columnLabels.map((l) => l.lines.length)) * lineHeight - 2 * fontScale + gap + padding : 0;

  const width = left + cols * W + (cols + 1) * padding;
  const height = top + rows * H + (rows + 1) * padding;
  const data = new Uint8Array(width * height * C).fill(padValue);
  const ink = padValue < 128 ? 255 : 0;
  rowLabels?.forEach((text, r) => {
    const y = top + padding + r * (H + padding) + Math.floor((H - GLYPH_HEIGHT * fontScale) / 2);
    drawText(data, width, C, padding, y, text, fontScale, ink);
  });
  for (const { lines, from, to } of columnLabels) {
    const x0 = left + padding + from * (W + padding);
    lines.forEach((line, i) => drawText(data, width, C, x0 + Math.max(0, Math.floor((spanWidth(from, to) - textWidth(line) * fontScale) / 2)), padding + i * lineHeight, line, fontScale, ink));
  }
  for (let n = 0; n < N; n++) {
    const x0 = left + padding + (n % cols) * (W + padding);
    const y0 = top + padding + Math.floor(n / cols) * (H + padding);
    for (let y = 0; y < H; y++) {
      let src = ((n * H + y) * W) * C;
      let dst = ((y0 + y) * width + x0) * C;
      for (let i = 0; i < W * C; i++) {
        const v = images[src++]! * scale + shift;
        data[dst++] = v > 0 ? (v < 1 ? roundHalfEven(v * 255) : 255) : 0; // NaN → 0
      }
    }
  }
  return { data, rows, cols, width, height, channels: C };
}

/** Splits `text` at spaces into lines of at most `chars` characters (a longer word keeps its own line). */
function wrap(text: string, chars: number): string[] {
  const lines: string[] = [];
  for (const word of text.split(/\s+/).filter(Boolean)) {
    const last = lines.at(-1);
    if (last !== undefined && last.length + 1 + word.length <= chars) lines[lines.length - 1] = `${last} ${word}`;
    else lines.push(word);
  }
  return lines;
}

/** Writes N images [N,H,W,C] as one PNG grid, atomically. Returns the layout written. */
export async function writeImageGrid(path: string, images: Float32Array, shape: readonly number[], opts: GridOptions = {}): Promise<GridLayout> {
  const { data, ...layout } = imageGrid(images, shape, opts);
  const png = encode({ width: layout.width, height: layout.height, data, channels: layout.channels, depth: 8 });
  await mkdir(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`);
  try {
    await writeFile(tmp, png);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  return layout;
}
