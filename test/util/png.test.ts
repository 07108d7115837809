import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { decode } from 'fast-png';
import { imageGrid, writeImageGrid } from '../../src/util/png.ts';

describe('writeImageGrid', () => {
  it('grayscale [-1,1], 2x3 grid with padding: layout, values, padding, round trip via decode', async () => {
    const [N, H, W, C] = [5, 3, 4, 1];
    const images = new Float32Array(N * H * W * C);
    for (let n = 0; n < N; n++) for (let i = 0; i < H * W; i++) images[n * H * W + i] = -1 + (2 * ((n * 7 + i) % 11)) / 10;
    images[0] = NaN;
    images[1] = 5;
    images[2] = -5;
    const dir = mkdtempSync(join(tmpdir(), 'png-'));
    const path = join(dir, 'sub', 'grid.png');
    const layout = await writeImageGrid(path, images, [N, H, W, C], { rows: 2, cols: 3, range: [-1, 1], padding: 1, padValue: 255 });
    expect(layout).toEqual({ rows: 2, cols: 3, width: 3 * 4 + 4, height: 2 * 3 + 3, channels: 1 });
    expect(readdirSync(join(dir, 'sub'))).toEqual(['grid.png']); // temp file renamed away
    const png = decode(readFileSync(path));
    expect([png.width, png.height, png.channels, png.depth]).toEqual([16, 9, 1, 8]);
    const px = (x: number, y: number) => png.data[y * 16 + x]!;
    expect(px(0, 0)).toBe(255); // padding
    expect(px(1, 1)).toBe(0); // NaN → 0
    expect(px(2, 1)).toBe(255); // clamped
    expect(px(3, 1)).toBe(0);
    // image 4 sits at row 1, col 1: origin (1 + 1*(4+1), 1 + 1*(3+1)) = (6, 5)
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++) {
        const v = images[4 * H * W + y * W + x]!;
        expect(px(6 + x, 5 + y)).toBe(Math.round(Math.min(1, Math.max(0, v / 2 + 0.5)) * 255));
      }
    // empty cell (row 1, col 2) is pad colour
    expect(px(11, 5)).toBe(255);
  });

  it('RGB [0,1] with default layout (ceil sqrt) and default padding 2', () => {
    const [N, H, W, C] = [4, 2, 2, 3];
    const images = new Float32Array(N * H * W * C).map((_, i) => (i % 3) / 2);
    const g = imageGrid(images, [N, H, W, C], { range: [0, 1] });
    expect([g.rows, g.cols, g.width, g.height, g.channels]).toEqual([2, 2, 10, 10, 3]);
    const at = (x: number, y: number) => Array.from(g.data.subarray((y * 10 + x) * 3, (y * 10 + x) * 3 + 3));
    expect(at(2, 2)).toEqual([0, 128, 255]); // 0.5·255 = 127.5 → 128 (half to even)
    expect(at(0, 0)).toEqual([0, 0, 0]);
  });

  it('refuses bad shapes and grids', () => {
    expect(() => imageGrid(new Float32Array(8), [2, 2, 2, 1], { rows: 1, cols: 1 })).toThrow(/cannot hold 2/);
    expect(() => imageGrid(new Float32Array(7), [2, 2, 2, 1])).toThrow(/7 values/);
    expect(() => imageGrid(new Float32Array(10), [1, 1, 2, 5])).toThrow(/5 channels/);
  });

  it('labels rows and column spans: a left margin and a top band, text in the contrasting colour', () => {
    const [N, H, W, C] = [4, 28, 28, 1];
    const images = new Float32Array(N * H * W * C).fill(-1);
    const plain = imageGrid(images, [N, H, W, C], { rows: 2, cols: 2 });
    const g = imageGrid(images, [N, H, W, C], { rows: 2, cols: 2, rowLabels: ['a seven', 'an eight'], columnLabels: [{ text: 'teacher, 25 steps', from: 0, to: 1 }, { text: 'student', from: 1, to: 2 }] });
    // Margin: the longest label (8 characters, 6 px each less the last gap) + a 3 px gap + padding.
    expect(g.width).toBe(plain.width + 8 * 6 - 1 + 3 + 2);
    // Band: "teacher, 25 steps" wraps into 2 lines over a 28 px column (4 characters fit per line).
    expect(g.height).toBeGreaterThan(plain.height + 2 * 7);
    const inked = (x0: number, x1: number, y0: number, y1: number) => {
      let n = 0;
      for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) n += g.data[y * g.width + x] === 255 ? 1 : 0;
      return n;
    };
    const left = g.width - plain.width;
    const top = g.height - plain.height;
    expect(inked(0, left, top, g.height)).toBeGreaterThan(20); // the row labels
    expect(inked(left, g.width, 0, top)).toBeGreaterThan(20); // the column labels
    expect(inked(left, g.width, top, g.height)).toBe(0); // the images stay as they were (all black)
    const white = imageGrid(images, [N, H, W, C], { rows: 2, cols: 2, padValue: 255, rowLabels: ['x', 'y'] });
    expect(Array.from(white.data).some((v) => v === 0)).toBe(true); // dark text on a light background
  });

  it('refuses labels that do not match the grid', () => {
    const images = new Float32Array(4 * 4).fill(0);
    expect(() => imageGrid(images, [4, 2, 2, 1], { rows: 2, cols: 2, rowLabels: ['one'] })).toThrow(/1 row labels for 2 rows/);
    expect(() => imageGrid(images, [4, 2, 2, 1], { rows: 2, cols: 2, columnLabels: [{ text: 't', from: 1, to: 3 }] })).toThrow(/column label 't' spans \[1, 3\) of 2 columns/);
  });
});
