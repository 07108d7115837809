import { describe, expect, it } from 'vitest';
import { loadMnist } from '../../src/mnist/dataset.ts';
import { computeThresholds, measureAttributes, SLANT_THRESHOLDS, THICKNESS_THRESHOLDS, zhangSuen } from '../../src/mnist/attributes.ts';

/** A blank [1,28,28,1] image in [-1, 1] with ink where `ink(r, c)` says. */
function draw(ink: (r: number, c: number) => boolean): Float32Array {
  const img = new Float32Array(784).fill(-1);
  for (let r = 0; r < 28; r++) for (let c = 0; c < 28; c++) if (ink(r, c)) img[r * 28 + c] = 1;
  return img;
}

describe('Zhang-Suen thinning', () => {
  it('leaves a one-pixel line alone and thins a thick bar to its centre line', () => {
    const line = new Uint8Array(10 * 10);
    for (let c = 2; c < 8; c++) line[5 * 10 + c] = 1;
    expect(zhangSuen(line, 10)).toBe(6);
    const bar = new Uint8Array(30 * 30);
    for (let r = 10; r < 15; r++) for (let c = 5; c < 25; c++) bar[r * 30 + c] = 1;
    const n = zhangSuen(bar, 30);
    expect(n).toBeGreaterThanOrEqual(14);
    expect(n).toBeLessThanOrEqual(20);
    // the skeleton is one pixel wide: at most one pixel per column
    for (let c = 0; c < 30; c++) {
      let k = 0;
      for (let r = 0; r < 30; r++) k += bar[r * 30 + c]!;
      expect(k).toBeLessThanOrEqual(1);
    }
  });
});

describe('measureAttributes', () => {
  it('thickness ≈ stroke width for bars of width 1, 2, 4', () => {
    const widths = [1, 2, 4].map((w) => measureAttributes(draw((r, c) => c >= 12 && c < 12 + w && r >= 4 && r < 24)).thickness[0]!);
    expect(widths[0]).toBeCloseTo(1, 5);
    expect(widths[1]).toBeGreaterThan(1.8);
    expect(widths[1]).toBeLessThan(2.3);
    // thinning shortens a thick stroke at its ends, so short thick strokes read a little bolder
    expect(widths[2]).toBeGreaterThan(3.6);
    expect(widths[2]).toBeLessThan(5.5);
  });

  it('slant is the shear dx/dy, positive when the top leans right', () => {
    const right = draw((r, c) => c === 14 + Math.round(0.5 * (14 - r)) && r >= 4 && r < 24);
    const left = draw((r, c) => c === 14 - Math.round(0.5 * (14 - r)) && r >= 4 && r < 24);
    const vertical = draw((r, c) => c === 14 && r >= 4 && r < 24);
    // the train split leans right: its middle tertile ("upright") is 0.012 … 0.255
    const upright = draw((r, c) => c === 14 + Math.round(0.12 * (14 - r)) && r >= 4 && r < 24);
    const a = measureAttributes(new Float32Array([...right, ...left, ...upright, ...vertical]));
    expect(a.slant[0]).toBeCloseTo(0.5, 1);
    expect(a.slant[1]).toBeCloseTo(-0.5, 1);
    expect(a.slant[2]).toBeCloseTo(0.12, 1);
    expect(a.slant[3]).toBe(0);
    expect(Array.from(a.slantBin)).toEqual([2, 0, 1, 0]);
  });

  it('handles empty, out-of-range and NaN images', () => {
    const empty = new Float32Array(784).fill(-1);
    const wild = draw((r, c) => c >= 12 && c < 14 && r >= 4 && r < 24).map((v, i) => (i % 7 === 0 ? NaN : v * 3));
    const a = measureAttributes(new Float32Array([...empty, ...wild]));
    expect(a.thickness[0]).toBe(0);
    expect(a.slant[0]).toBe(0);
    expect(a.thicknessBin[0]).toBe(0);
    expect(Number.isFinite(a.thickness[1])).toBe(true);
    expect(Number.isFinite(a.slant[1])).toBe(true);
  });

  it('shipped thresholds are the tertiles of the train split', () => {
    const t = computeThresholds(loadMnist().train.images);
    expect(t.thickness[0]).toBeCloseTo(THICKNESS_THRESHOLDS[0], 12);
    expect(t.thickness[1]).toBeCloseTo(THICKNESS_THRESHOLDS[1], 12);
    expect(t.slant[0]).toBeCloseTo(SLANT_THRESHOLDS[0], 12);
    expect(t.slant[1]).toBeCloseTo(SLANT_THRESHOLDS[1], 12);
    const a = measureAttributes(loadMnist().train.images);
    for (const bins of [a.thicknessBin, a.slantBin]) {
      const counts = [0, 0, 0];
      for (const b of bins) counts[b]!++;
      for (const c of counts) expect(Math.abs(c - 3000)).toBeLessThan(30);
    }
  });
});
