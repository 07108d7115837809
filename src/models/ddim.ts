/**
 * DDIM sampling (eta 0) as diffusers 0.30 `DDIMScheduler` does it, with classifier-free guidance, for
 * the teacher's multi-step baseline. Tensors are NHWC [B,H,W,C].
 */
import { tf } from '../tf.ts';
import type { Tensor, Tensor4D } from '../tf.ts';
import type { NoiseSchedule } from './schedule.ts';

/** numpy's round(): half to even. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** `np.arange(start, stop, step)` for floats: length ceil((stop-start)/step), values start + i·((start+step)-start). */
function npArange(start: number, stop: number, step: number): number[] {
  const n = Math.max(0, Math.ceil((stop - start) / step));
  const delta = start + step - start;
  return Array.from({ length: n }, (_, i) => (i === 0 ? start : i === 1 ? start + step : start + i * delta));
}

/** `np.linspace(start, stop, num)` (endpoint included). */
function npLinspace(start: number, stop: number, num: number): number[] {
  if (num === 1) return [start];
  const step = (stop - start) / (num - 1);
  return Array.from({ length: num }, (_, i) => (i === num - 1 ? stop : i * step + start));
}

/**
 * The inference timesteps, descending, exactly as diffusers 0.30 `DDIMScheduler.set_timesteps`:
 * leading: `arange(n) * (T // n)` reversed, `+ steps_offset`; trailing: `round(arange(T, 0, -T/n)) - 1`;
 * linspace: `round(linspace(0, T-1, n))` reversed (numpy rounding, half to even). Throws where
 * diffusers would produce an out-of-range timestep (e.g. leading with steps_offset and n = T, or
 * trailing where numpy's float `arange` yields n+1 entries, as for T=1000, n=61).
 */
export function ddimTimesteps(schedule: NoiseSchedule, numInferenceSteps: number): number[] {
  const T = schedule.numTrainTimesteps;
  const n = numInferenceSteps;
  if (!Number.isInteger(n) || n < 1 || n > T) {
    throw new RangeError(`numInferenceSteps must be an integer in [1, ${T}] (num_train_timesteps), got ${n}`);
  }
  const spacing = schedule.config.timestep_spacing;
  let ts: number[];
  if (spacing === 'leading') {
    const ratio = Math.floor(T / n);
    ts = Array.from({ length: n }, (_, i) => (n - 1 - i) * ratio + schedule.config.steps_offset);
  } else if (spacing === 'trailing') {
    ts = npArange(T, 0, -T / n).map((v) => roundHalfEven(v) - 1);
  } else {
    ts = npLinspace(0, T - 1, n).map(roundHalfEven).reverse();
  }
  const bad = ts.filter((t) => t < 0 || t >= T);
  if (ts.length !== n || bad.length > 0) {
    throw new RangeError(
      `timestep_spacing '${spacing}' (steps_offset ${schedule.config.steps_offset}) with ${n} steps gives diffusers' timesteps ` +
        `[${ts.join(', ')}]: ${ts.length !== n ? `${ts.length} entries, not ${n}` : `out of [0, ${T - 1}]`}; choose another step count or spacing`,
    );
  }
  return ts;
}

/** diffusers' previous timestep inside `step()`: t - T // n (not the next list entry; they differ for linspace). */
export function ddimPrevTimestep(schedule: NoiseSchedule, t: number, numInferenceSteps: number): number {
  return t - Math.floor(schedule.numTrainTimesteps / numInferenceSteps);
}

/**
 * One DDIM step with eta 0 (diffusers `DDIMScheduler.step`): x0 and ε from the model output per
 * `prediction_type` (ε from the unclipped x0), x0 clipped to ±clip_sample_range when `clip_sample`,
 * then x_prev = sqrt(ᾱ_prev) x0 + sqrt(1-ᾱ_prev) ε with ᾱ_prev = the final ᾱ when prevT < 0
 * (1 with `set_alpha_to_one`, else ᾱ_0). Tidy; inputs are not disposed; the caller owns the result.
 */
export function ddimStep(schedule: NoiseSchedule, modelOutput: Tensor, t: number, prevT: number, sample: Tensor): Tensor {
  const alphaPrev = schedule.alphaBarPrev(prevT);
  return tf.tidy(() => {
    let x0 = schedule.predictOriginal(modelOutput, sample, [t]);
    const eps = schedule.predictEpsilon(modelOutput, sample, [t]);
    if (schedule.config.clip_sample) {
      const r = schedule.config.clip_sample_range;
      x0 = tf.clipByValue(x0, -r, r);
    }
    const a = Math.fround(Math.sqrt(alphaPrev));
    const s = Math.fround(Math.sqrt(Math.fround(1 - alphaPrev)));
    return tf.add(tf.mul(tf.scalar(a), x0), tf.mul(tf.scalar(s), eps));
  });
}

export type Condition = 'cond' | 'uncond';

export interface DdimSampleOptions {
  schedule: NoiseSchedule;
  /** Number of inference steps (timesteps from `ddimTimesteps`, unless `timesteps` is given). */
  steps: number;
  /** w in ε = ε_u + w (ε_c − ε_u), applied to the raw model output (ε or v), as diffusers pipelines do. w = 1: one conditional call only. */
  guidanceScale: number;
  /** x_T, NHWC [B,H,W,C] (DDIM's init_noise_sigma is 1). Not disposed. */
  noise: Tensor4D;
  /**
   * The caller's UNet, one condition per call (two calls per step unless w = 1). Must be synchronous;
   * it runs inside `tf.tidy`, must not dispose `x`, and hands ownership of its result to the sampler.
   */
  predict?: (x: Tensor4D, t: number, cond: Condition) => Tensor4D;
  /**
   * Alternative to `predict`: ONE call per step on x2 = concat([x, x]) of shape [2B,...]; return
   * [2B,...] with rows 0..B-1 unconditional and B..2B-1 conditional (diffusers' order:
   * `cat([negative, positive])`, `chunk(2)`). Used for every step, also when w = 1.
   */
  predictBatched?: (x2: Tensor4D, t: number) => Tensor4D;
  /** Explicit descending timesteps (overrides `steps` for the list; the step still uses t - T // steps as diffusers does, unless `prevTimesteps` is given). */
  timesteps?: number[];
  /** Explicit previous timesteps, one per entry of the schedule (negative: the final ᾱ). */
  prevTimesteps?: number[];
  /** Observer after each step; `sample` is valid only during the call (do not dispose it). */
  onStep?: (info: { index: number; t: number; prevT: number; sample: Tensor4D }) => void;
}

/**
 * DDIM (eta 0) sampling with classifier-free guidance. Returns x_0 as a new NHWC tensor the caller
 * owns; every step runs in `tf.tidy`, and all intermediates are released (no tensor leaks).
 */
export function ddimSample(opts: DdimSampleOptions): Tensor4D {
  const { schedule, steps, guidanceScale: w, noise, predict, predictBatched } = opts;
  if ((predict ? 1 : 0) + (predictBatched ? 1 : 0) !== 1) throw new Error('ddimSample: give exactly one of predict or predictBatched');
  if (!Number.isFinite(w)) throw new Error(`ddimSample: guidanceScale must be finite, got ${w}`);
  if (noise.rank !== 4) throw new Error(`ddimSample: noise must be NHWC [B,H,W,C], got [${noise.shape.join(',')}]`);
  const timesteps = opts.timesteps ?? ddimTimesteps(schedule, steps);
  const prevs = opts.prevTimesteps ?? timesteps.map((t) => ddimPrevTimestep(schedule, t, steps));
  if (prevs.length !== timesteps.length) throw new Error(`ddimSample: ${prevs.length} prevTimesteps for ${timesteps.length} timesteps`);
  const B = noise.shape[0];

  const guided = (x: Tensor4D, t: number): Tensor4D => {
    if (predictBatched) {
      const out = predictBatched(tf.concat([x, x], 0), t);
      if (out.shape[0] !== 2 * B) throw new Error(`ddimSample: predictBatched returned batch ${out.shape[0]}, expected ${2 * B}`);
      const [u, c] = tf.split(out, 2, 0) as [Tensor4D, Tensor4D];
      return w === 1 ? c : tf.add(u, tf.mul(tf.scalar(w), tf.sub(c, u)));
    }
    const c = predict!(x, t, 'cond');
    if (w === 1) return c;
    const u = predict!(x, t, 'uncond');
    return tf.add(u, tf.mul(tf.scalar(w), tf.sub(c, u)));
  };

  let x: Tensor4D = noise;
  try {
    for (let i = 0; i < timesteps.length; i++) {
      const t = timesteps[i]!;
      const prevT = prevs[i]!;
      const next = tf.tidy(() => ddimStep(schedule, guided(x, t), t, prevT, x) as Tensor4D);
      if (x !== noise) x.dispose();
      x = next;
      opts.onStep?.({ index: i, t, prevT, sample: x });
    }
  } catch (err) {
    if (x !== noise) x.dispose();
    throw err;
  }
  return x === noise ? (tf.clone(noise) as Tensor4D) : x;
}
