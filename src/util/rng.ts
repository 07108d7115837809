/**
 * The project's seeded random numbers, in plain JS so that they are identical on every machine and
 * tfjs backend. One generator (mulberry32) and one seed hash: every stream of draws is seeded by
 * hashing what it belongs to, e.g. (run seed, micro-step, purpose) for a training step or
 * (seed, epoch, purpose) for the reader's shuffle. No stream depends on how many numbers another
 * drew, so a resumed run needs no saved generator state.
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

/**
 * A 32-bit hash of integers (splitmix-style mixing), for deriving seeds. Words beyond 32 bits
 * (a seed ≥ 2^32) mix their high bits in too, so they do not collide with their low 32 bits.
 */
export function mixSeed(...words: number[]): number {
  let h = 0x9e3779b9 | 0;
  for (const w of words) {
    h = Math.imul(h ^ (w | 0), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    const hi = Math.floor(w / 4294967296) | 0;
    if (hi !== 0) h = Math.imul(h ^ hi, 0x27d4eb2f);
  }
  return h >>> 0;
}

/** A mulberry32 stream with the helpers the shuffles need. */
export class Rng {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** In-place Fisher-Yates shuffle. */
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = a[i]!;
      a[i] = a[j]!;
      a[j] = t;
    }
    return a;
  }
}

/** Fisher-Yates permutation of 0..n-1 from a seed. */
export function permutation(n: number, seed: number): Int32Array {
  return Int32Array.from(new Rng(seed).shuffle(Array.from({ length: n }, (_, i) => i)));
}

/** Standard normals by Box-Muller over a mulberry32 stream (deterministic: V8's Math.log/cos/sqrt are fdlibm ports). */
export function normalSampler(seed: number): () => number {
  const u = mulberry32(seed);
  let spare: number | null = null;
  return () => {
    if (spare !== null) {
      const s = spare;
      spare = null;
      return s;
    }
    let u1 = u();
    while (u1 === 0) u1 = u();
    const u2 = u();
    const r = Math.sqrt(-2 * Math.log(u1));
    spare = r * Math.sin(2 * Math.PI * u2);
    return r * Math.cos(2 * Math.PI * u2);
  };
}

/** Named streams of a training step, so that adding a draw to one never shifts another. */
export const STREAMS = { noise: 1, timestep: 2, latent: 3, loraNoise: 4, loraTimestep: 5, dropout: 6, batch: 7, validation: 8 } as const;

/** The draws of a training step: each seeded by (run seed, step, stream). */
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
