// The seeded streams are part of every result: these values were drawn before the three RNG modules
// became one (src/util/rng.ts), so a change to any stream shows here.
import { describe, expect, it } from 'vitest';
import { mixSeed, mulberry32, normalSampler, permutation, Rng } from '../../src/util/rng.ts';

describe('seeded random numbers', () => {
  it('keep their streams', () => {
    expect(mixSeed(0, 0, 0)).toBe(744138621);
    expect(mixSeed(7, 3, 1)).toBe(367315265);
    const u = mulberry32(mixSeed(7, 3, 1));
    expect([u(), u()]).toEqual([0.21474210475571454, 0.3035779057536274]);
    expect([...permutation(10, 5)]).toEqual([5, 3, 7, 8, 2, 0, 4, 1, 9, 6]);
    expect(normalSampler(3)()).toBe(0.7863846115586807);
  });

  it('Rng draws the mulberry32 stream and shuffles as permutation does', () => {
    const a = new Rng(11);
    const b = mulberry32(11);
    for (let i = 0; i < 5; i++) expect(a.next()).toBe(b());
    expect(new Rng(5).shuffle(Array.from({ length: 10 }, (_, i) => i))).toEqual([...permutation(10, 5)]);
  });

  it('mixes the high bits of a seed beyond 32 bits', () => {
    expect(mixSeed(2 ** 32 + 5, 1)).not.toBe(mixSeed(5, 1));
  });
});
