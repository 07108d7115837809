import { readFileSync } from 'node:fs';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import type { Tensor4D } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { NoiseSchedule, torchLinspaceF32 } from '../../src/models/schedule.ts';
import { SCHEDULER_FIXTURE, maxAbsDiff, nchwToNhwc, readFixture } from './scheduler-fixture.ts';

const fixtureConfig = JSON.parse(readFileSync(`${SCHEDULER_FIXTURE}/scheduler_config.json`, 'utf8')) as Record<string, unknown>;

/** Independent float64 reference: diffusers' formulas without float32 rounding. */
function refAlphasCumprod(kind: 'linear' | 'scaled_linear' | 'cos', T: number, b0 = 0.0001, b1 = 0.02): Float64Array {
  const betas = new Float64Array(T);
  for (let i = 0; i < T; i++) {
    if (kind === 'linear') betas[i] = b0 + ((b1 - b0) * i) / (T - 1);
    else if (kind === 'scaled_linear') betas[i] = (Math.sqrt(b0) + ((Math.sqrt(b1) - Math.sqrt(b0)) * i) / (T - 1)) ** 2;
    else {
      const ab = (t: number) => Math.cos(((t + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
      betas[i] = Math.min(1 - ab((i + 1) / T) / ab(i / T), 0.999);
    }
  }
  const out = new Float64Array(T);
  let acc = 1;
  for (let i = 0; i < T; i++) out[i] = acc *= 1 - betas[i]!;
  return out;
}

function rand(shape: [number, number, number, number], seed: number): Tensor4D {
  return tf.randomNormal(shape, 0, 1, 'float32', seed) as Tensor4D;
}

beforeAll(async () => {
  await initBackend(process.env.SWIFTBRUSH_BACKEND ?? 'wasm');
});

describe('NoiseSchedule vs the diffusers fixture (SD-2.1-style DDIM, scaled_linear)', () => {
  const fx = readFixture();
  const s = NoiseSchedule.fromConfig(fixtureConfig);

  it('alphas_cumprod matches (bit-identical float32)', () => {
    const ref = fx.get('alphas_cumprod')!.data;
    const d = maxAbsDiff(s.alphasCumprod, ref);
    expect(d).toBeLessThanOrEqual(1e-5);
    expect(d).toBe(0); // emulates torch's float32 linspace + cumprod exactly
    expect(s.alphaBar(999)).toBeCloseTo(0.0046601, 7);
    expect(s.numTrainTimesteps).toBe(1000);
    expect(s.predictionType).toBe('epsilon');
    expect(s.finalAlphaCumprod).toBe(s.alphasCumprod[0]); // set_alpha_to_one false
  });

  it('add_noise matches (NCHW fixture transposed to NHWC)', () => {
    const x0 = nchwToNhwc(fx.get('add_noise.x0')!.data as Float32Array, fx.get('add_noise.x0')!.shape);
    const noise = nchwToNhwc(fx.get('add_noise.noise')!.data as Float32Array, fx.get('add_noise.noise')!.shape);
    const want = nchwToNhwc(fx.get('add_noise.out')!.data as Float32Array, fx.get('add_noise.out')!.shape);
    const t = Array.from(fx.get('add_noise.t')!.data);
    expect(t).toEqual([20, 980]);
    const before = tf.memory().numTensors;
    const [a, b] = [tf.tensor4d(x0.data, x0.shape), tf.tensor4d(noise.data, noise.shape)];
    const out = s.addNoise(a, b, t);
    expect(out.shape).toEqual(want.shape);
    expect(maxAbsDiff(out.dataSync(), want.data)).toBeLessThanOrEqual(1e-5);
    tf.dispose([a, b, out]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('toJSON gives back the diffusers config, and load reads a file or a folder', async () => {
    expect(s.toJSON()).toEqual(fixtureConfig);
    const fromDir = await NoiseSchedule.load(SCHEDULER_FIXTURE);
    const fromFile = await NoiseSchedule.load(`${SCHEDULER_FIXTURE}/scheduler_config.json`);
    expect(Array.from(fromDir.alphasCumprod)).toEqual(Array.from(s.alphasCumprod));
    expect(fromFile.toJSON()).toEqual(fixtureConfig);
    const round = NoiseSchedule.fromConfig(JSON.parse(JSON.stringify(s)));
    expect(round.toJSON()).toEqual(fixtureConfig);
  });
});

describe('NoiseSchedule: other configs vs independent float64 formulas', () => {
  it('linear (DDIM defaults), scaled_linear and squaredcos_cap_v2', () => {
    const lin = NoiseSchedule.fromConfig({});
    expect(maxAbsDiff(lin.alphasCumprod, refAlphasCumprod('linear', 1000))).toBeLessThan(1e-5);
    const sl = NoiseSchedule.fromConfig({ beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, num_train_timesteps: 500 });
    expect(maxAbsDiff(sl.alphasCumprod, refAlphasCumprod('scaled_linear', 500, 0.00085, 0.012))).toBeLessThan(1e-5);
    const cos = NoiseSchedule.fromConfig({ beta_schedule: 'squaredcos_cap_v2' });
    expect(maxAbsDiff(cos.alphasCumprod, refAlphasCumprod('cos', 1000))).toBeLessThan(1e-5);
    for (const x of [lin, sl, cos]) for (const v of x.alphasCumprod) expect(Math.fround(v)).toBe(v);
  });

  it('torch linspace emulation: endpoints exact, monotone, float32', () => {
    const l = torchLinspaceF32(0.0001, 0.02, 1000);
    expect(l[0]).toBe(Math.fround(0.0001));
    expect(l[999]).toBe(Math.fround(0.02));
    for (let i = 1; i < 1000; i++) expect(l[i]!).toBeGreaterThan(l[i - 1]!);
  });

  it('rescale_betas_zero_snr: terminal ᾱ is 0, others follow the rescaled sqrt(ᾱ) line', () => {
    const base = NoiseSchedule.fromConfig({ beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012 });
    const z = NoiseSchedule.fromConfig({ beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, rescale_betas_zero_snr: true, prediction_type: 'v_prediction' });
    expect(z.alphaBar(999)).toBe(0);
    const s0 = Math.sqrt(base.alphasCumprod[0]!);
    const sT = Math.sqrt(base.alphasCumprod[999]!);
    const ref = Array.from(base.alphasCumprod, (a) => (((Math.sqrt(a) - sT) * s0) / (s0 - sT)) ** 2);
    expect(maxAbsDiff(z.alphasCumprod, ref)).toBeLessThan(1e-5);
  });

  it('DDPMScheduler config: DDIM defaults fill the gaps, unknown keys survive toJSON', () => {
    const s = NoiseSchedule.fromConfig({ _class_name: 'DDPMScheduler', variance_type: 'fixed_small', beta_schedule: 'linear' });
    expect(s.config.set_alpha_to_one).toBe(true);
    expect(s.finalAlphaCumprod).toBe(1);
    expect(s.toJSON()._class_name).toBe('DDPMScheduler');
    expect(s.toJSON().variance_type).toBe('fixed_small');
  });

  it('trained_betas are used as given', () => {
    const betas = Array.from({ length: 10 }, (_, i) => 0.01 * (i + 1));
    const s = NoiseSchedule.fromConfig({ num_train_timesteps: 10, trained_betas: betas });
    let acc = 1;
    betas.forEach((b, i) => {
      acc *= 1 - b;
      expect(s.alphaBar(i)).toBeCloseTo(acc, 6);
    });
  });
});

describe('NoiseSchedule tfjs helpers', () => {
  const t = [3, 500, 999];
  it('coefficients are [B,1,1,1] sqrt(ᾱ), sqrt(1-ᾱ)', () => {
    const s = NoiseSchedule.fromConfig(fixtureConfig);
    const { sqrtAlphaBar, sqrtOneMinusAlphaBar } = s.coefficients(t);
    expect(sqrtAlphaBar.shape).toEqual([3, 1, 1, 1]);
    const a = sqrtAlphaBar.dataSync();
    const b = sqrtOneMinusAlphaBar.dataSync();
    t.forEach((ti, i) => {
      expect(a[i]).toBeCloseTo(Math.sqrt(s.alphaBar(ti)), 7);
      expect(b[i]).toBeCloseTo(Math.sqrt(1 - s.alphaBar(ti)), 7);
    });
    tf.dispose([sqrtAlphaBar, sqrtOneMinusAlphaBar]);
  });

  for (const prediction_type of ['epsilon', 'v_prediction', 'sample'] as const) {
    it(`${prediction_type}: predictOriginal / predictEpsilon invert addNoise, match hand formulas, leak nothing`, () => {
      const s = NoiseSchedule.fromConfig({ ...fixtureConfig, prediction_type });
      const x0 = rand([3, 4, 5, 2], 1);
      const eps = rand([3, 4, 5, 2], 2);
      const before = tf.memory().numTensors;
      const xt = s.addNoise(x0, eps, t);
      const target = prediction_type === 'epsilon' ? eps.clone() : prediction_type === 'v_prediction' ? s.velocity(x0, eps, t) : x0.clone();
      const x0hat = s.predictOriginal(target, xt, t);
      const epshat = s.predictEpsilon(target, xt, t);
      // hand formulas per element, float64
      const [X0, E, XT, M] = [x0, eps, xt, target].map((q) => q.dataSync());
      const per = 4 * 5 * 2;
      const refX0 = new Float64Array(X0!.length);
      const refE = new Float64Array(X0!.length);
      for (let i = 0; i < X0!.length; i++) {
        const ab = s.alphaBar(t[Math.floor(i / per)]!);
        const [sa, sb] = [Math.sqrt(ab), Math.sqrt(1 - ab)];
        const [m, xti] = [M![i]!, XT![i]!];
        if (prediction_type === 'epsilon') [refX0[i], refE[i]] = [(xti - sb * m) / sa, m];
        else if (prediction_type === 'v_prediction') [refX0[i], refE[i]] = [sa * xti - sb * m, sa * m + sb * xti];
        else [refX0[i], refE[i]] = [m, (xti - sa * m) / sb];
      }
      const scale = prediction_type === 'epsilon' ? 1 / Math.sqrt(s.alphaBar(999)) : 1; // 1/sqrt(ᾱ_999) ≈ 14.6 amplifies float32 rounding
      expect(maxAbsDiff(x0hat.dataSync(), refX0)).toBeLessThan(1e-5 * scale);
      expect(maxAbsDiff(epshat.dataSync(), refE)).toBeLessThan(prediction_type === 'sample' ? 1e-4 : 1e-5);
      // inversion: x0 and ε come back (loose where 1/sqrt(ᾱ) or 1/sqrt(1-ᾱ) amplifies rounding)
      expect(maxAbsDiff(x0hat.dataSync(), X0!)).toBeLessThan(1e-4);
      expect(maxAbsDiff(epshat.dataSync(), E!)).toBeLessThan(prediction_type === 'sample' ? 1e-2 : 1e-5);
      tf.dispose([xt, target, x0hat, epshat]);
      expect(tf.memory().numTensors).toBe(before);
      tf.dispose([x0, eps]);
    });
  }

  it('SwiftBrush student formula: x0 = (z - sqrt(1-ᾱ_999) ε)/sqrt(ᾱ_999) with ᾱ_999 from the schedule', () => {
    const s = NoiseSchedule.fromConfig(fixtureConfig);
    const z = rand([1, 2, 2, 1], 3);
    const e = rand([1, 2, 2, 1], 4);
    const x0 = s.predictOriginal(e, z, [999]);
    const ab = s.alphaBar(999);
    const [Z, E, X] = [z, e, x0].map((q) => q.dataSync());
    for (let i = 0; i < 4; i++) expect(X![i]).toBeCloseTo((Z![i]! - Math.sqrt(1 - ab) * E![i]!) / Math.sqrt(ab), 4);
    tf.dispose([z, e, x0]);
  });

  it('rejects bad timesteps and batch mismatches', () => {
    const s = NoiseSchedule.fromConfig(fixtureConfig);
    const x = tf.zeros([2, 2, 2, 1]);
    expect(() => s.alphaBar(1000)).toThrow(/timestep 1000/);
    expect(() => s.alphaBar(1.5)).toThrow(/timestep 1.5/);
    expect(() => s.addNoise(x, x, [1, 2, 3])).toThrow(/3 timesteps for a batch of 2/);
    expect(() => s.addNoise(tf.zeros([2, 2]), x, [1])).toThrow(/NHWC/);
    x.dispose();
  });
});

describe('NoiseSchedule config validation', () => {
  it('refuses thresholding: true, naming the option', () => {
    expect(() => NoiseSchedule.fromConfig({ ...fixtureConfig, thresholding: true })).toThrow(/'thresholding'/);
  });
  it('refuses unknown schedules, prediction types and spacings', () => {
    expect(() => NoiseSchedule.fromConfig({ beta_schedule: 'sigmoid' })).toThrow(/beta_schedule "sigmoid"/);
    expect(() => NoiseSchedule.fromConfig({ prediction_type: 'flow' })).toThrow(/prediction_type "flow"/);
    expect(() => NoiseSchedule.fromConfig({ timestep_spacing: 'karras' })).toThrow(/timestep_spacing "karras"/);
    expect(() => NoiseSchedule.fromConfig({ num_train_timesteps: 0 })).toThrow(/num_train_timesteps/);
    expect(() => NoiseSchedule.fromConfig({ trained_betas: [0.1] })).toThrow(/trained_betas/);
  });
  it('names the file when loading fails', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sched-'));
    writeFileSync(join(dir, 'scheduler_config.json'), JSON.stringify({ thresholding: true }));
    await expect(NoiseSchedule.load(dir)).rejects.toThrow(/scheduler_config\.json: .*thresholding/);
  });
});
