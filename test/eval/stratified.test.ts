/** eval's samples are stratified by prompt for any n, and a small n is flagged next to its FD. */
import { describe, expect, it } from 'vitest';
import { markdownTable, stratifiedPromptIndex, type ModelFigures } from '../../src/eval/evaluate.ts';
import { PROMPTS } from '../../src/mnist/prompts.ts';

const count = (values: number[]) => values.reduce((m, v) => m.set(v, (m.get(v) ?? 0) + 1), new Map<number, number>());

describe('stratifiedPromptIndex', () => {
  it('n = 30 covers every digit three times, each with every thickness and every slant once', () => {
    const index = [...stratifiedPromptIndex(30)];
    expect(new Set(index).size).toBe(30);
    const specs = index.map((i) => PROMPTS[i]!);
    expect([...count(specs.map((p) => p.digit)).values()]).toEqual(Array(10).fill(3));
    for (let d = 0; d < 10; d++) {
      const mine = specs.filter((p) => p.digit === d);
      expect(new Set(mine.map((p) => p.thicknessBin)).size, `digit ${d}`).toBe(3);
      expect(new Set(mine.map((p) => p.slantBin)).size, `digit ${d}`).toBe(3);
    }
  });

  it.each([1, 7, 10, 45, 89])('n = %i < 90: distinct prompts, digits as even as n allows', (n) => {
    const index = [...stratifiedPromptIndex(n)];
    expect(new Set(index).size).toBe(n);
    const perDigit = [...count(index.map((i) => PROMPTS[i]!.digit)).values()];
    expect(Math.max(...perDigit) - Math.min(...perDigit)).toBeLessThanOrEqual(1);
    if (n >= 10) expect(perDigit.length).toBe(10);
  });

  it('n ≥ 90 goes round the prompts (each ⌊n/90⌋ or ⌈n/90⌉ times; the cached teacher figures use this order)', () => {
    const index = stratifiedPromptIndex(1000);
    expect([...index.subarray(0, 92)]).toEqual([...Array.from({ length: 90 }, (_, i) => i), 0, 1]);
    const counts = [...count([...index]).values()];
    expect(new Set(counts)).toEqual(new Set([11, 12]));
  });
});

describe('markdownTable', () => {
  const m = (fd: number, n: number): ModelFigures => ({ fd, digit_acc: 1, thickness_acc: 1, slant_acc: 1, samples_per_s: 1, n });
  it('marks an FD over fewer than 500 samples and says the ratio is not meaningful', () => {
    const table = markdownTable({ teacher_ddim25: m(20, 30), student_1step: m(26.8, 30) });
    expect(table).toMatch(/\| student_1step \| 26\.80\* \|/);
    expect(table).toMatch(/\* FD over n = 30 samples: biased upwards at small n .* use n ≥ 500/);
    expect(table).toMatch(/FD ratio 1\.34 \(n = 30 < 500: not meaningful\)/);
  });
  it('says nothing of the kind at n = 1000', () => {
    const table = markdownTable({ teacher_ddim25: m(20, 1000), student_1step: m(26.8, 1000) });
    expect(table).not.toMatch(/\*|not meaningful/);
  });
});
