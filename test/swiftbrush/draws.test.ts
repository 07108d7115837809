/** Where a micro-step's random draws come from: seeded (every run, unchanged numbers) or given (a draws file). */
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../src/backend.ts';
import { tf } from '../../src/tf.ts';
import { GivenDraws, SeededDraws, type Draws } from '../../src/swiftbrush/draws.ts';
import { STREAMS, StepRng } from '../../src/util/rng.ts';
import type { StoredTensor } from '../../src/models/safetensors.ts';

beforeAll(async () => {
  await initBackend('wasm');
});

describe('SeededDraws', () => {
  it('draws what the run seed, micro-step and stream key (the numbers of every earlier run)', () => {
    const draws: Draws = new SeededDraws(11);
    const rng = new StepRng(11);
    const shape: [number, number, number, number] = [2, 4, 4, 1];
    const same = (a: tf.Tensor, b: tf.Tensor) => {
      expect(Array.from(a.dataSync())).toEqual(Array.from(b.dataSync()));
      tf.dispose([a, b]);
    };
    same(draws.latents(7, shape), rng.normal(7, STREAMS.latent, shape));
    same(draws.noise(7, shape), rng.normal(7, STREAMS.noise, shape));
    same(draws.loraNoise(7, shape), rng.normal(7, STREAMS.loraNoise, shape));
    expect(draws.timesteps(7, 5, 20, 980)).toEqual(rng.ints(7, STREAMS.timestep, 5, 20, 980));
    expect(draws.loraTimesteps(7, 5, 0, 999)).toEqual(rng.ints(7, STREAMS.loraTimestep, 5, 0, 999));
    const u = rng.uniform(7, STREAMS.dropout)();
    expect(draws.loraUsesNullPrompt(7, u + 1e-9)).toBe(true);
    expect(draws.loraUsesNullPrompt(7, u)).toBe(false);
    expect(draws.guidanceScale).toBeUndefined();
  });
});

describe('GivenDraws', () => {
  const B = 2, C = 3, H = 2, W = 2, L = 4, D = 5;
  const seq = (n: number) => Float32Array.from({ length: n }, (_, i) => i);
  const file = (): Map<string, StoredTensor> => new Map<string, StoredTensor>([
    ['latents', { dtype: 'F32', shape: [B, C, H, W], data: seq(B * C * H * W) }],
    ['prompt_embeds', { dtype: 'F32', shape: [B, L, D], data: seq(B * L * D) }],
    ['null_embeds', { dtype: 'F32', shape: [L, D], data: seq(L * D) }],
    ['timesteps', { dtype: 'I64', shape: [B], data: BigInt64Array.of(37n, 850n) }],
    ['noise', { dtype: 'F32', shape: [B, C, H, W], data: seq(B * C * H * W).map((v) => -v) }],
    ['lora_timesteps', { dtype: 'I64', shape: [B], data: BigInt64Array.of(5n, 640n) }],
    ['lora_noise', { dtype: 'F32', shape: [B, C, H, W], data: seq(B * C * H * W).map((v) => 2 * v) }],
    ['lora_null', { dtype: 'I64', shape: [1], data: BigInt64Array.of(1n) }],
    ['guidance_scale', { dtype: 'F32', shape: [1], data: Float32Array.of(3) }],
  ]);

  it('serves its micro-step in NHWC, its timesteps, null-prompt flag and guidance scale', () => {
    const d = GivenDraws.fromTensors(file(), 'd.safetensors');
    const z = d.latents(0, [B, H, W, C]);
    // NHWC[b, h, w, c] = NCHW[b, c, h, w]
    expect(z.shape).toEqual([B, H, W, C]);
    expect(z.arraySync()[1]![0]![1]![2]).toBe(1 * C * H * W + 2 * H * W + 0 * W + 1);
    z.dispose();
    expect(d.timesteps(0, B, 20, 980)).toEqual([37, 850]);
    expect(d.loraTimesteps(0, B, 0, 999)).toEqual([5, 640]);
    expect(d.loraUsesNullPrompt(0)).toBe(true);
    expect(d.guidanceScale).toBe(3);
    expect(d.batch).toBe(B);
    expect(d.nullEmbeds.shape).toEqual([L, D]);
  });

  it('refuses another micro-step instead of repeating its draws', () => {
    const d = GivenDraws.fromTensors(file(), 'd.safetensors');
    expect(() => d.noise(1, [B, H, W, C])).toThrow(/d\.safetensors: the draws are for micro-step 0, but 'noise' was asked for micro-step 1/);
    expect(() => d.timesteps(3, B, 0, 999)).toThrow(/'timesteps' was asked for micro-step 3/);
  });
});
