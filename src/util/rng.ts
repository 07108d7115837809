/**
 * Seeded randomness that resumes exactly: every draw of a training step comes from a generator
 * seeded by (run seed, step, stream), so a resumed run needs no saved RNG state beyond the step.
 */
import { tf } from '../tf.ts';
import type { Tensor } from '../tf.ts';

/** mulberry32 over a 32-bit state: uniforms in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A 32-bit hash of integers (splitmix-style mixing), for deriving per-step seeds. */
export function mixSeed(...parts: number[]): number {
  let h = 0x9e3779b9;
  for (const p of parts) {
    h = Math.imul(h ^ (p >>> 0), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
  }
  return h >>> 0;
}

/** Named streams so that adding a draw to one never shifts another. */
export const STREAMS = { noise: 1, timestep: 2, latent: 3, loraNoise: 4, loraTimestep: 5, dropout: 6, batch: 7, validation: 8 } as const;

export class StepRng {
  constructor(readonly seed: number) {}

  uniform(step: number, stream: number): () => number {
    return mulberry32(mixSeed(this.seed, step, stream));
  }

  /** n integers uniform in [low, high] inclusive. */
  ints(step: number, stream: number, n: number, low: number, high: number): number[] {
    const u = this.uniform(step, stream);
    return Array.from({ length: n }, () => low + Math.floor(u() * (high - low + 1)));
  }

  /** Standard normal tensor (tfjs' seeded generator runs in JS: identical on every backend). */
  normal(step: number, stream: number, shape: number[]): Tensor {
    return tf.randomNormal(shape, 0, 1, 'float32', mixSeed(this.seed, step, stream));
  }
}
