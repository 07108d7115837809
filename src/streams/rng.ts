/**
 * Small deterministic PRNG for shuffling (row-group order and the shuffle buffer). Streams are
 * derived from (seed, epoch, purpose) by hashing, so an epoch's order does not depend on how many
 * numbers earlier epochs drew: resuming at any epoch reproduces the same order.
 */

/** splitmix32-style integer hash of several 32-bit words. */
export function hashSeed(...words: number[]): number {
  let h = 0x9e3779b9 | 0;
  for (const w of words) {
    h = Math.imul(h ^ (w | 0), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    // Mix the high bits of large (non-32-bit) inputs too.
    const hi = Math.floor(w / 4294967296) | 0;
    if (hi !== 0) h = Math.imul(h ^ hi, 0x27d4eb2f);
  }
  return h >>> 0;
}

/** mulberry32: fast, 32-bit state, good enough for shuffling. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** Uniform float in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
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
