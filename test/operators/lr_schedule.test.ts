/** The student's lr schedule follows diffusers' get_scheduler formulas (warm-up, constant, linear, cosine). */
import { describe, expect, it } from 'vitest';
import { lrFactor } from '../../src/swiftbrush/optim_step.ts';

const at = (step: number, lrScheduler: 'constant' | 'linear' | 'cosine', lrWarmupSteps = 10, lrDecaySteps = 100) => lrFactor(step, { lrScheduler, lrWarmupSteps, lrDecaySteps });

describe('lrFactor', () => {
  it('warms up linearly from 0 (step/warmup), then holds 1 for constant', () => {
    expect([0, 5, 9, 10, 99, 500].map((s) => at(s, 'constant'))).toEqual([0, 0.5, 0.9, 1, 1, 1]);
    expect(at(0, 'constant', 0)).toBe(1); // no warm-up: the official constant lr
  });

  it('linear: max(0, (T − step) / (T − warmup)) after warm-up', () => {
    expect([10, 55, 100, 150].map((s) => at(s, 'linear'))).toEqual([1, 0.5, 0, 0]);
    expect(at(5, 'linear')).toBe(0.5);
  });

  it('cosine: ½(1 + cos(π·progress)) after warm-up, 0 at T and after', () => {
    expect(at(10, 'cosine')).toBe(1);
    expect(at(55, 'cosine')).toBeCloseTo(0.5, 12);
    expect(at(32.5, 'cosine')).toBeCloseTo(0.5 * (1 + Math.cos(Math.PI / 4)), 12);
    expect(at(100, 'cosine')).toBeCloseTo(0, 12);
    expect(at(130, 'cosine')).toBeCloseTo(0, 12);
  });
});
