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
});
