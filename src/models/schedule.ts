/**
 * The DDPM/DDIM noise schedule, read from a diffusers `scheduler_config.json`.
 *
 * Numerics: diffusers builds `betas` in float32 (`torch.linspace(..., dtype=float32)`), forms
 * `alphas = 1 - betas` in float32 and `torch.cumprod` (which on CPU accumulates in double and rounds
 * each output to float32). We emulate exactly that with `Math.fround`, including torch's CPU linspace
 * kernel (start/end halves, fused multiply-add base per 8-lane vector), so `alphasCumprod` holds the
 * same float32 values diffusers holds (bit-identical against the fixture). They are stored in a
 * Float64Array for convenience; every value is exactly representable in float32.
 *
 * Tensors are NHWC `[B, H, W, C]`; per-sample coefficients are shaped `[B, 1, 1, 1]`.
 * All tfjs helpers run inside `tf.tidy` and never dispose their inputs.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { tf } from '../tf.ts';
import type { Tensor } from '../tf.ts';

export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2';
export type PredictionType = 'epsilon' | 'v_prediction' | 'sample';
export type TimestepSpacing = 'leading' | 'trailing' | 'linspace';

/** The resolved config: diffusers' DDIMScheduler keys with diffusers' defaults filled in. */
export interface SchedulerConfig {
  _class_name: string;
  _diffusers_version?: string;
  num_train_timesteps: number;
  beta_start: number;
  beta_end: number;
  beta_schedule: BetaSchedule;
  trained_betas: number[] | null;
  clip_sample: boolean;
  clip_sample_range: number;
  set_alpha_to_one: boolean;
  steps_offset: number;
  prediction_type: PredictionType;
  thresholding: boolean;
  dynamic_thresholding_ratio: number;
  sample_max_value: number;
  timestep_spacing: TimestepSpacing;
  rescale_betas_zero_snr: boolean;
  /** Keys we do not interpret (e.g. PNDM's `skip_prk_steps`) are kept so `toJSON` round-trips them. */
  [key: string]: unknown;
}

/** diffusers 0.30 `DDIMScheduler.__init__` defaults (a DDPMScheduler config lacks `set_alpha_to_one`: True, as `DDIMScheduler.from_config` gives). */
export const DDIM_DEFAULTS = {
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: 'linear',
  trained_betas: null,
  clip_sample: true,
  clip_sample_range: 1.0,
  set_alpha_to_one: true,
  steps_offset: 0,
  prediction_type: 'epsilon',
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  sample_max_value: 1.0,
  timestep_spacing: 'leading',
  rescale_betas_zero_snr: false,
} as const;

const BETA_SCHEDULES: readonly string[] = ['linear', 'scaled_linear', 'squaredcos_cap_v2'];
const PREDICTION_TYPES: readonly string[] = ['epsilon', 'v_prediction', 'sample'];
const SPACINGS: readonly string[] = ['leading', 'trailing', 'linspace'];

const f32 = Math.fround;

/**
 * `torch.linspace(start, end, steps, dtype=torch.float32)` on CPU, bit for bit: the kernel computes
 * `step = (end - start) / (steps - 1)` in float, fills 8-lane vectors from a base `start + step*idx`
 * (first half) or `end - step*(steps-idx-1)` (second half; the fused multiply-add the compiler emits
 * rounds once) plus `j*step`, and the tail (past the last full pair of vectors) scalar.
 */
export function torchLinspaceF32(start: number, end: number, steps: number): Float32Array {
  const out = new Float32Array(steps);
  if (steps === 1) {
    out[0] = f32(start);
    return out;
  }
  const s = f32(start);
  const e = f32(end);
  const step = f32((e - s) / (steps - 1));
  const halfway = Math.floor(steps / 2);
  const base = (idx: number) => (idx < halfway ? f32(s + step * idx) : f32(e - step * (steps - idx - 1)));
  const V = 8;
  const vectorised = Math.floor(steps / (2 * V)) * 2 * V;
  let idx = 0;
  for (; idx < vectorised; idx += V) {
    const b = base(idx);
    for (let j = 0; j < V; j++) out[idx + j] = f32(b + f32(j * step));
  }
  for (; idx < steps; idx++) out[idx] = base(idx);
  return out;
}

/** diffusers' `betas_for_alpha_bar` (cosine), computed in float64 then stored as float32. */
function cosineBetas(n: number, maxBeta = 0.999): Float32Array {
  const alphaBar = (t: number) => Math.cos(((t + 0.008) / 1.008) * Math.PI / 2) ** 2;
  const betas = new Float32Array(n);
  for (let i = 0; i < n; i++) betas[i] = Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), maxBeta);
  return betas;
}

/** float32 `torch.cumprod` on CPU: double accumulator, float32 outputs. */
function cumprodF32(alphas: Float32Array): Float32Array {
  const out = new Float32Array(alphas.length);
  let acc = 1;
  for (let i = 0; i < alphas.length; i++) {
    acc *= alphas[i]!;
    out[i] = acc;
  }
  return out;
}

/** diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023), in float32 like the torch original. */
function rescaleZeroTerminalSnr(betas: Float32Array): Float32Array {
  const n = betas.length;
  const alphas = betas.map((b) => f32(1 - b));
  const sqrtBar = cumprodF32(alphas).map((a) => f32(Math.sqrt(a)));
  const s0 = sqrtBar[0]!;
  const sT = sqrtBar[n - 1]!;
  const scale = f32(s0 / f32(s0 - sT));
  const bar = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const v = f32(f32(sqrtBar[i]! - sT) * scale);
    bar[i] = f32(v * v);
  }
  const out = new Float32Array(n);
  out[0] = f32(1 - bar[0]!);
  for (let i = 1; i < n; i++) out[i] = f32(1 - f32(bar[i]! / bar[i - 1]!));
  return out;
}

function fail(msg: string): never {
  throw new Error(`scheduler config: ${msg}`);
}

function resolveConfig(raw: object): SchedulerConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) fail('expected a JSON object');
  const input = raw as Record<string, unknown>;
  const cfg: Record<string, unknown> = { _class_name: 'DDIMScheduler', ...input };
  for (const [k, v] of Object.entries(DDIM_DEFAULTS)) if (cfg[k] === undefined) cfg[k] = v;

  const num = (k: string) => {
    const v = cfg[k];
    if (typeof v !== 'number' || !Number.isFinite(v)) fail(`'${k}' must be a finite number, got ${JSON.stringify(v)}`);
    return v;
  };
  const bool = (k: string) => {
    if (typeof cfg[k] !== 'boolean') fail(`'${k}' must be true or false, got ${JSON.stringify(cfg[k])}`);
  };
  const T = num('num_train_timesteps');
  if (!Number.isInteger(T) || T < 1) fail(`'num_train_timesteps' must be a positive integer, got ${T}`);
  num('beta_start');
  num('beta_end');
  num('clip_sample_range');
  const offset = num('steps_offset');
  if (!Number.isInteger(offset) || offset < 0) fail(`'steps_offset' must be a non-negative integer, got ${offset}`);
  for (const k of ['clip_sample', 'set_alpha_to_one', 'thresholding', 'rescale_betas_zero_snr']) bool(k);
  if (!BETA_SCHEDULES.includes(cfg.beta_schedule as string)) {
    fail(`unsupported beta_schedule ${JSON.stringify(cfg.beta_schedule)} (supported: ${BETA_SCHEDULES.join(', ')})`);
  }
  if (!PREDICTION_TYPES.includes(cfg.prediction_type as string)) {
    fail(`unsupported prediction_type ${JSON.stringify(cfg.prediction_type)} (supported: ${PREDICTION_TYPES.join(', ')})`);
  }
  if (!SPACINGS.includes(cfg.timestep_spacing as string)) {
    fail(`unsupported timestep_spacing ${JSON.stringify(cfg.timestep_spacing)} (supported: ${SPACINGS.join(', ')})`);
  }
  if (cfg.thresholding === true) {
    fail("'thresholding': true (dynamic thresholding, Imagen) is not supported; set it to false");
  }
  const tb = cfg.trained_betas;
  if (tb !== null) {
    if (!Array.isArray(tb) || tb.length !== T || tb.some((b) => typeof b !== 'number' || !(b >= 0 && b < 1))) {
      fail(`'trained_betas' must be null or ${T} numbers in [0, 1)`);
    }
  }
  return cfg as SchedulerConfig;
}

export class NoiseSchedule {
  readonly config: Readonly<SchedulerConfig>;
  readonly numTrainTimesteps: number;
  readonly predictionType: PredictionType;
  /** float32 betas as diffusers holds them. */
  readonly betas: Float32Array;
  /** ᾱ_t for t = 0 … T-1: diffusers' float32 values (exactly representable), in a Float64Array. */
  readonly alphasCumprod: Float64Array;
  /** ᾱ used past the last step (prev timestep < 0): 1 with `set_alpha_to_one`, else ᾱ_0. */
  readonly finalAlphaCumprod: number;

  private constructor(config: SchedulerConfig) {
    this.config = Object.freeze({ ...config });
    const T = config.num_train_timesteps;
    this.numTrainTimesteps = T;
    this.predictionType = config.prediction_type;
    let betas: Float32Array;
    if (config.trained_betas) betas = Float32Array.from(config.trained_betas);
    else if (config.beta_schedule === 'linear') betas = torchLinspaceF32(config.beta_start, config.beta_end, T);
    else if (config.beta_schedule === 'scaled_linear') {
      betas = torchLinspaceF32(Math.sqrt(config.beta_start), Math.sqrt(config.beta_end), T).map((b) => f32(b * b));
    } else betas = cosineBetas(T);
    if (config.rescale_betas_zero_snr) betas = rescaleZeroTerminalSnr(betas);
    this.betas = betas;
    this.alphasCumprod = Float64Array.from(cumprodF32(betas.map((b) => f32(1 - b))));
    this.finalAlphaCumprod = config.set_alpha_to_one ? 1 : this.alphasCumprod[0]!;
  }

  /** Validates and resolves a scheduler config (any diffusers DDPM/DDIM/PNDM-style object). */
  static fromConfig(config: object): NoiseSchedule {
    return new NoiseSchedule(resolveConfig(config));
  }

  /** Loads `scheduler_config.json` from a file path, or from a folder holding it. */
  static async load(path: string): Promise<NoiseSchedule> {
    const file = (await stat(path)).isDirectory() ? join(path, 'scheduler_config.json') : path;
    let parsed: unknown;
    try {
      parsed = JSON.parse(await readFile(file, 'utf8'));
    } catch (err) {
      throw new Error(`cannot read scheduler config ${file}: ${err instanceof Error ? err.message : String(err)}`);
    }
    try {
      return NoiseSchedule.fromConfig(parsed as object);
    } catch (err) {
      throw new Error(`${file}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  /** ᾱ_t; t must be an integer train timestep in [0, T). */
  alphaBar(t: number): number {
    this.checkTimestep(t);
    return this.alphasCumprod[t]!;
  }

  /** ᾱ for a DDIM "previous" timestep: ᾱ_t for t ≥ 0, the final ᾱ for t < 0. */
  alphaBarPrev(t: number): number {
    return t >= 0 ? this.alphaBar(t) : this.finalAlphaCumprod;
  }

  private checkTimestep(t: number): void {
    if (!Number.isInteger(t) || t < 0 || t >= this.numTrainTimesteps) {
      throw new RangeError(`timestep ${t} is not an integer in [0, ${this.numTrainTimesteps - 1}]`);
    }
  }

  /** Per-sample sqrt(ᾱ_t) and sqrt(1 - ᾱ_t), float32 as diffusers computes them, shaped [B,1,1,1]. */
  coefficients(timesteps: number[]): { sqrtAlphaBar: Tensor; sqrtOneMinusAlphaBar: Tensor } {
    const [a, s] = this.coefficientArrays(timesteps);
    return { sqrtAlphaBar: tf.tensor4d(a, [a.length, 1, 1, 1]), sqrtOneMinusAlphaBar: tf.tensor4d(s, [s.length, 1, 1, 1]) };
  }

  /** The same coefficients as plain float32 arrays (one entry per timestep). */
  coefficientArrays(timesteps: number[]): [Float32Array, Float32Array] {
    if (timesteps.length === 0) throw new RangeError('timesteps is empty');
    const a = new Float32Array(timesteps.length);
    const s = new Float32Array(timesteps.length);
    timesteps.forEach((t, i) => {
      const ab = this.alphaBar(t);
      a[i] = Math.sqrt(ab);
      s[i] = Math.sqrt(f32(1 - ab));
    });
    return [a, s];
  }

  private checkBatch(x: Tensor, timesteps: number[], what: string): void {
    if (x.rank !== 4) throw new Error(`${what}: expected an NHWC [B,H,W,C] tensor, got shape [${x.shape.join(',')}]`);
    if (timesteps.length !== 1 && timesteps.length !== x.shape[0]) {
      throw new Error(`${what}: ${timesteps.length} timesteps for a batch of ${x.shape[0]} (give one per sample, or one for all)`);
    }
  }

  /** diffusers `add_noise`: x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε. */
  addNoise(x0: Tensor, noise: Tensor, timesteps: number[]): Tensor {
    this.checkBatch(x0, timesteps, 'addNoise');
    return tf.tidy(() => {
      const { sqrtAlphaBar, sqrtOneMinusAlphaBar } = this.coefficients(timesteps);
      return tf.add(tf.mul(sqrtAlphaBar, x0), tf.mul(sqrtOneMinusAlphaBar, noise));
    });
  }

  /** diffusers `get_velocity`: v = sqrt(ᾱ_t) ε - sqrt(1-ᾱ_t) x0 (the v-prediction training target). */
  velocity(x0: Tensor, noise: Tensor, timesteps: number[]): Tensor {
    this.checkBatch(x0, timesteps, 'velocity');
    return tf.tidy(() => {
      const { sqrtAlphaBar, sqrtOneMinusAlphaBar } = this.coefficients(timesteps);
      return tf.sub(tf.mul(sqrtAlphaBar, noise), tf.mul(sqrtOneMinusAlphaBar, x0));
    });
  }

  /**
   * x0 from the model output at x_t, per `prediction_type` (no clipping; `ddimStep` applies
   * `clip_sample`). epsilon: (x_t - sqrt(1-ᾱ) ε)/sqrt(ᾱ); v: sqrt(ᾱ) x_t - sqrt(1-ᾱ) v; sample: as is.
   */
  predictOriginal(modelOutput: Tensor, sample: Tensor, timesteps: number[]): Tensor {
    this.checkBatch(sample, timesteps, 'predictOriginal');
    return tf.tidy(() => {
      const { sqrtAlphaBar: a, sqrtOneMinusAlphaBar: s } = this.coefficients(timesteps);
      switch (this.predictionType) {
        case 'epsilon':
          return tf.div(tf.sub(sample, tf.mul(s, modelOutput)), a);
        case 'v_prediction':
          return tf.sub(tf.mul(a, sample), tf.mul(s, modelOutput));
        case 'sample':
          return tf.clone(modelOutput);
      }
    });
  }

  /** ε from the model output at x_t: epsilon as is; v: sqrt(ᾱ) v + sqrt(1-ᾱ) x_t; sample: (x_t - sqrt(ᾱ) x0)/sqrt(1-ᾱ). */
  predictEpsilon(modelOutput: Tensor, sample: Tensor, timesteps: number[]): Tensor {
    this.checkBatch(sample, timesteps, 'predictEpsilon');
    return tf.tidy(() => {
      const { sqrtAlphaBar: a, sqrtOneMinusAlphaBar: s } = this.coefficients(timesteps);
      switch (this.predictionType) {
        case 'epsilon':
          return tf.clone(modelOutput);
        case 'v_prediction':
          return tf.add(tf.mul(a, modelOutput), tf.mul(s, sample));
        case 'sample':
          return tf.div(tf.sub(sample, tf.mul(a, modelOutput)), s);
      }
    });
  }

  /** The diffusers `scheduler_config.json` object (resolved keys plus any keys we kept uninterpreted). */
  toJSON(): SchedulerConfig {
    return { ...this.config, trained_betas: this.config.trained_betas ? [...this.config.trained_betas] : null };
  }
}
