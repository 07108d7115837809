import { describe, expect, it } from 'vitest';
import { HELDOUT_PER_CLASS, IMAGE_PIXELS, loadMnist, loadSplit, toUnitRange, clampModelRange } from '../../src/mnist/dataset.ts';

describe('mnist dataset split', () => {
  const { train, heldout } = loadMnist();

  it('is 9,000 train / 1,000 held-out, 100 held-out per class', () => {
    expect(train.n).toBe(9000);
    expect(heldout.n).toBe(1000);
    expect(train.images.length).toBe(9000 * IMAGE_PIXELS);
    expect(train.shape).toEqual([9000, 28, 28, 1]);
    const counts = new Array(10).fill(0);
    for (const l of heldout.labels) counts[l]++;
    expect(counts).toEqual(new Array(10).fill(HELDOUT_PER_CLASS));
    const trainCounts = new Array(10).fill(0);
    for (const l of train.labels) trainCounts[l]++;
    expect(trainCounts).toEqual([901, 1027, 891, 932, 880, 763, 914, 970, 844, 878]);
  });

  it('held-out digits are the last 100 of each class and never appear in train', () => {
    const lengths = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];
    for (let i = 0; i < heldout.n; i++) expect(heldout.sourceIndex[i]).toBeGreaterThanOrEqual(lengths[heldout.labels[i]!]! - 100);
    const seen = new Set<string>();
    for (let i = 0; i < train.n; i++) seen.add(`${train.labels[i]}:${train.sourceIndex[i]}`);
    expect(seen.size).toBe(9000);
    for (let i = 0; i < heldout.n; i++) expect(seen.has(`${heldout.labels[i]}:${heldout.sourceIndex[i]}`)).toBe(false);
  });

  it('pixels are in [-1, 1] with background -1', () => {
    let min = Infinity, max = -Infinity, bg = 0;
    for (const v of train.images) { min = Math.min(min, v); max = Math.max(max, v); if (v === -1) bg++; }
    expect(min).toBe(-1);
    expect(max).toBe(1);
    expect(bg / train.images.length).toBeGreaterThan(0.7);
  });

  it('order is fixed (golden first labels) and prefixes are class-mixed', () => {
    const first = Array.from(loadSplit('train', 20).labels);
    expect(new Set(first).size).toBeGreaterThanOrEqual(7);
    expect(first).toMatchSnapshot();
    expect(Array.from(loadSplit('heldout', 10).labels)).toMatchSnapshot();
  });

  it('range helpers clamp', () => {
    expect(Array.from(toUnitRange(new Float32Array([-3, -1, 0, 1, 5, NaN])))).toEqual([0, 0, 0.5, 1, 1, 0]);
    expect(Array.from(clampModelRange(new Float32Array([-3, 0.5, 5, NaN])))).toEqual([-1, 0.5, 1, -1]);
  });
});
