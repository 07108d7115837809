/**
 * Image grids as 8-bit PNG (grayscale, gray+alpha, RGB or RGBA by channel count), via fast-png.
 * Pixel mapping as diffusers' VaeImageProcessor: [-1,1] → x/2 + 0.5, clamp to [0,1], round(x·255);
 * NaN becomes 0. Written atomically (temp file beside the target, then rename).
 */
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { encode } from 'fast-png';

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

  const width = cols * W + (cols + 1) * padding;
  const height = rows * H + (rows + 1) * padding;
  const data = new Uint8Array(width * height * C).fill(padValue);
  for (let n = 0; n < N; n++) {
    const x0 = padding + (n % cols) * (W + padding);
    const y0 = padding + Math.floor(n / cols) * (H + padding);
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
