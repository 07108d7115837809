import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import type { Tensor4D } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { NoiseSchedule } from '../../src/models/schedule.ts';
import { ddimPrevTimestep, ddimSample, ddimStep, ddimTimesteps } from '../../src/models/ddim.ts';
import { SCHEDULER_FIXTURE, maxAbsDiff, nchwToNhwc, readFixture } from './scheduler-fixture.ts';

const fixtureConfig = JSON.parse(readFileSync(`${SCHEDULER_FIXTURE}/scheduler_config.json`, 'utf8')) as Record<string, unknown>;
const sched = (over: Record<string, unknown> = {}) => NoiseSchedule.fromConfig({ ...fixtureConfig, ...over });

beforeAll(async () => {
  await initBackend(process.env.SWIFTBRUSH_BACKEND ?? 'wasm');
});

describe('ddimTimesteps (diffusers 0.30 DDIMScheduler.set_timesteps)', () => {
  it('leading + steps_offset 1: the fixture 25 timesteps', () => {
    const want = Array.from(readFixture().get('ddim25_timesteps')!.data);
    expect(ddimTimesteps(sched(), 25)).toEqual(want);
  });

  it('trailing and linspace match numpy (values from np.arange / np.linspace, round half-even)', () => {
    expect(ddimTimesteps(sched({ timestep_spacing: 'trailing' }), 25)).toEqual(Array.from({ length: 25 }, (_, i) => 999 - 40 * i));
    expect(ddimTimesteps(sched({ timestep_spacing: 'trailing' }), 7)).toEqual([999, 856, 713, 570, 428, 285, 142]);
    expect(ddimTimesteps(sched({ timestep_spacing: 'linspace' }), 7)).toEqual([999, 832, 666, 500, 333, 166, 0]);
    expect(ddimTimesteps(sched({ timestep_spacing: 'linspace' }), 25)).toEqual(
      [999, 957, 916, 874, 832, 791, 749, 708, 666, 624, 583, 541, 500, 458, 416, 375, 333, 291, 250, 208, 166, 125, 83, 42, 0],
    );
    // independent formula for every n where numpy's float arange has exactly n entries
    for (const n of [1, 2, 3, 4, 10, 20, 50, 100]) {
      const tr = ddimTimesteps(sched({ timestep_spacing: 'trailing' }), n);
      expect(tr).toEqual(Array.from({ length: n }, (_, i) => Math.round(1000 - (i * 1000) / n) - 1));
      const ls = ddimTimesteps(sched({ timestep_spacing: 'linspace' }), n);
      expect(ls[0]).toBe(n === 1 ? 0 : 999); // np.linspace(0, 999, 1) = [0]
      expect(ls.at(-1)).toBe(0);
      const ld = ddimTimesteps(sched({ steps_offset: 0 }), n);
      expect(ld).toEqual(Array.from({ length: n }, (_, i) => (n - 1 - i) * Math.floor(1000 / n)));
    }
  });

  it('refuses step counts diffusers cannot serve', () => {
    expect(() => ddimTimesteps(sched(), 0)).toThrow(/numInferenceSteps/);
    expect(() => ddimTimesteps(sched(), 1001)).toThrow(/numInferenceSteps/);
    expect(() => ddimTimesteps(sched(), 1000)).toThrow(/out of \[0, 999\]/); // leading + offset 1 → 1000
    expect(() => ddimTimesteps(sched({ timestep_spacing: 'trailing' }), 61)).toThrow(/62 entries/); // numpy arange quirk
  });
});

describe('ddimStep', () => {
  it('matches the fixture DDIM step (t=961 → 921, eta 0) within 1e-5', () => {
    const fx = readFixture();
    const get = (k: string) => nchwToNhwc(fx.get(k)!.data as Float32Array, fx.get(k)!.shape);
    const [mo, s, want] = ['ddim_step.model_output', 'ddim_step.sample', 'ddim_step.prev_sample'].map(get);
    const schedule = sched();
    const t = ddimTimesteps(schedule, 25)[0]!;
    const prevT = ddimPrevTimestep(schedule, t, 25);
    expect([t, prevT]).toEqual([961, 921]);
    const before = tf.memory().numTensors;
    const [m, x] = [tf.tensor4d(mo!.data, mo!.shape), tf.tensor4d(s!.data, s!.shape)];
    const out = ddimStep(schedule, m, t, prevT, x);
    const d = maxAbsDiff(out.dataSync(), want!.data);
    expect(d).toBeLessThanOrEqual(1e-5);
    tf.dispose([m, x, out]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('v_prediction, clip_sample and the final alpha follow diffusers formulas', () => {
    const x = tf.tensor4d([0.3, -2.5, 1.7, 0.9], [1, 2, 2, 1]);
    const m = tf.tensor4d([0.1, 0.4, -0.8, 2.0], [1, 2, 2, 1]);
    const X = x.dataSync();
    const M = m.dataSync();
    for (const [over, t, prevT] of [
      [{ prediction_type: 'v_prediction' }, 500, 460],
      [{ prediction_type: 'v_prediction', clip_sample: true, clip_sample_range: 0.5 }, 40, 0],
      [{ prediction_type: 'epsilon', set_alpha_to_one: true }, 1, -39],
      [{ prediction_type: 'epsilon', set_alpha_to_one: false, clip_sample: true }, 1, -39],
      [{ prediction_type: 'sample' }, 700, 600],
    ] as const) {
      const s = sched(over);
      const out = ddimStep(s, m, t, prevT, x).dataSync();
      const a = s.alphaBar(t);
      const ap = prevT >= 0 ? s.alphaBar(prevT) : 'set_alpha_to_one' in over && over.set_alpha_to_one ? 1 : s.alphaBar(0);
      for (let i = 0; i < 4; i++) {
        let x0: number, eps: number;
        if (s.predictionType === 'v_prediction') [x0, eps] = [Math.sqrt(a) * X[i]! - Math.sqrt(1 - a) * M[i]!, Math.sqrt(a) * M[i]! + Math.sqrt(1 - a) * X[i]!];
        else if (s.predictionType === 'epsilon') [x0, eps] = [(X[i]! - Math.sqrt(1 - a) * M[i]!) / Math.sqrt(a), M[i]!];
        else [x0, eps] = [M[i]!, (X[i]! - Math.sqrt(a) * M[i]!) / Math.sqrt(1 - a)];
        if (s.config.clip_sample) x0 = Math.min(Math.max(x0, -s.config.clip_sample_range), s.config.clip_sample_range);
        expect(out[i]).toBeCloseTo(Math.sqrt(ap) * x0 + Math.sqrt(1 - ap) * eps, 5);
      }
    }
    tf.dispose([x, m]);
  });
});

describe('ddimSample with classifier-free guidance', () => {
  // A toy "UNet": deterministic functions of x and t that differ by condition.
  const toy = (x: Tensor4D, t: number, cond: 'cond' | 'uncond'): Tensor4D =>
    tf.tidy(() => tf.add(tf.mul(x, cond === 'cond' ? 0.9 : 0.7), tf.scalar((cond === 'cond' ? 0.05 : -0.03) * (t / 1000))) as Tensor4D);

  it('equals a hand-written loop of ddimStep with ε = ε_u + w(ε_c − ε_u); two-call and batched callbacks agree; no leaks', () => {
    const schedule = sched();
    const noise = tf.randomNormal([2, 4, 4, 3], 0, 1, 'float32', 7) as Tensor4D;
    const w = 4.5;
    const before = tf.memory().numTensors;
    let calls = 0;
    const out = ddimSample({ schedule, steps: 10, guidanceScale: w, noise, predict: (x, t, c) => (calls++, toy(x, t, c)) });
    expect(calls).toBe(20);
    let batchedCalls = 0;
    const outB = ddimSample({
      schedule, steps: 10, guidanceScale: w, noise,
      predictBatched: (x2, t) => {
        batchedCalls++;
        expect(x2.shape[0]).toBe(4);
        const [u, c] = tf.split(x2, 2, 0) as [Tensor4D, Tensor4D];
        return tf.concat([toy(u, t, 'uncond'), toy(c, t, 'cond')], 0);
      },
    });
    expect(batchedCalls).toBe(10);
    // reference loop
    let x: Tensor4D = noise.clone();
    for (const t of ddimTimesteps(schedule, 10)) {
      const next = tf.tidy(() => {
        const ec = toy(x, t, 'cond');
        const eu = toy(x, t, 'uncond');
        const e = tf.add(eu, tf.mul(w, tf.sub(ec, eu)));
        return ddimStep(schedule, e, t, t - 100, x) as Tensor4D;
      });
      x.dispose();
      x = next;
    }
    expect(maxAbsDiff(out.dataSync(), x.dataSync())).toBeLessThan(1e-6);
    expect(maxAbsDiff(outB.dataSync(), x.dataSync())).toBeLessThan(1e-6);
    tf.dispose([out, outB, x]);
    expect(tf.memory().numTensors).toBe(before);
    noise.dispose();
  });

  it('guidanceScale 1 calls the conditional model only', () => {
    const noise = tf.ones([1, 2, 2, 1]) as Tensor4D;
    const seen: string[] = [];
    const before = tf.memory().numTensors;
    const out = ddimSample({ schedule: sched(), steps: 3, guidanceScale: 1, noise, predict: (x, t, c) => (seen.push(c), toy(x, t, c)) });
    expect(seen).toEqual(['cond', 'cond', 'cond']);
    out.dispose();
    expect(tf.memory().numTensors).toBe(before);
    noise.dispose();
  });

  it('1 step from pure noise at t=999 (trailing, set_alpha_to_one) equals predictOriginal at 999', () => {
    const schedule = sched({ timestep_spacing: 'trailing', set_alpha_to_one: true });
    expect(ddimTimesteps(schedule, 1)).toEqual([999]);
    const z = tf.randomNormal([2, 3, 3, 4], 0, 1, 'float32', 11) as Tensor4D;
    const out = ddimSample({ schedule, steps: 1, guidanceScale: 4.5, noise: z, predict: toy });
    const x0 = tf.tidy(() => {
      const ec = toy(z, 999, 'cond');
      const eu = toy(z, 999, 'uncond');
      return schedule.predictOriginal(tf.add(eu, tf.mul(4.5, tf.sub(ec, eu))), z, [999]);
    });
    expect(maxAbsDiff(out.dataSync(), x0.dataSync())).toBe(0);
    tf.dispose([z, out, x0]);
  });

  it('releases the running sample when the callback throws', () => {
    const noise = tf.ones([1, 2, 2, 1]) as Tensor4D;
    const before = tf.memory().numTensors;
    let n = 0;
    expect(() =>
      ddimSample({ schedule: sched(), steps: 5, guidanceScale: 2, noise, predict: (x, t, c) => { if (++n === 5) throw new Error('boom'); return toy(x, t, c); } }),
    ).toThrow('boom');
    expect(tf.memory().numTensors).toBe(before);
    noise.dispose();
  });
});
