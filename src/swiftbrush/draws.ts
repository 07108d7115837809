/**
 * Where the random draws of a SwiftBrush micro-step come from. The operators ask a `Draws` for
 * each of them, keyed by the micro-step:
 *
 * - `SeededDraws` (every run): a generator seeded by (run seed, micro-step, stream), so a resumed
 *   run needs no saved RNG state beyond the micro-step, and adding a draw never shifts another.
 * - `GivenDraws` (`swiftbrush step`): fixed tensors from a safetensors file in PyTorch layouts, the
 *   way a PyTorch script would pass them, so one micro-step can be compared with another
 *   implementation draw for draw.
 */
import { tf } from '../tf.ts';
import type { Tensor4D } from '../tf.ts';
import { readSafetensors, type StoredTensor } from '../models/safetensors.ts';
import { STREAMS, StepRng } from '../util/rng.ts';

/** The random draws of one micro-step. Tensors are NHWC; the caller owns what it gets. */
export interface Draws {
  /** z ~ N(0, I): the student's input noise, `shape` [B, H, W, C]. */
  latents(microStep: number, shape: [number, number, number, number]): Tensor4D;
  /** t per sample, uniform in [low, high] (the VSD timesteps). */
  timesteps(microStep: number, batch: number, low: number, high: number): number[];
  /** ε ~ N(0, I) added to x̂0 at t. */
  noise(microStep: number, shape: [number, number, number, number]): Tensor4D;
  /** t′ per sample, uniform in [low, high] (the LoRA teacher's timesteps). */
  loraTimesteps(microStep: number, batch: number, low: number, high: number): number[];
  /** ε′ ~ N(0, I) added to sg(x̂0) at t′. */
  loraNoise(microStep: number, shape: [number, number, number, number]): Tensor4D;
  /** One draw per micro-batch: the LoRA teacher trains on the null prompt (true with `probability`). */
  loraUsesNullPrompt(microStep: number, probability: number): boolean;
  /** A CFG scale that comes with the draws; it replaces the config's (see createDistillState). */
  readonly guidanceScale?: number;
}

/** The draws of a training run: keyed by (seed, micro-step, stream), identical on every backend. */
export class SeededDraws implements Draws {
  private readonly rng: StepRng;

  constructor(readonly seed: number) {
    this.rng = new StepRng(seed);
  }

  latents(microStep: number, shape: [number, number, number, number]): Tensor4D {
    return this.rng.normal(microStep, STREAMS.latent, shape) as Tensor4D;
  }

  timesteps(microStep: number, batch: number, low: number, high: number): number[] {
    return this.rng.ints(microStep, STREAMS.timestep, batch, low, high);
  }

  noise(microStep: number, shape: [number, number, number, number]): Tensor4D {
    return this.rng.normal(microStep, STREAMS.noise, shape) as Tensor4D;
  }

  loraTimesteps(microStep: number, batch: number, low: number, high: number): number[] {
    return this.rng.ints(microStep, STREAMS.loraTimestep, batch, low, high);
  }

  loraNoise(microStep: number, shape: [number, number, number, number]): Tensor4D {
    return this.rng.normal(microStep, STREAMS.loraNoise, shape) as Tensor4D;
  }

  loraUsesNullPrompt(microStep: number, probability: number): boolean {
    return this.rng.uniform(microStep, STREAMS.dropout)() < probability;
  }
}

/** The keys of a draws file (PyTorch layouts), as `swiftbrush step` reads them. */
export const DRAW_KEYS = {
  latents: 'z [B, C, H, W]',
  prompt_embeds: 'y [B, L, D]',
  null_embeds: 'y0 [L, D]',
  timesteps: 't [B], integers',
  noise: 'ε [B, C, H, W]',
  lora_timesteps: "t′ [B], integers",
  lora_noise: "ε′ [B, C, H, W]",
  lora_null: '[1]: 1 = the LoRA teacher trains on the null prompt',
  guidance_scale: '[1]: the CFG scale w',
} as const;

function float32(t: StoredTensor): Float32Array {
  if (t.data instanceof Float32Array) return t.data;
  if (t.data instanceof BigInt64Array) return Float32Array.from(t.data, (v) => Number(v));
  return Float32Array.from(t.data as ArrayLike<number>);
}

/**
 * One micro-step's draws given as tensors (a draws file: `DRAW_KEYS`). Serves exactly that
 * micro-step: asking for another one, or for a shape, range or batch the file does not hold, is
 * an error naming the file and the key, never a silent reuse or resize.
 */
export class GivenDraws implements Draws {
  readonly guidanceScale: number;
  /** y [B, L, D] and y0 [L, D]: the step's conditioning, given with its draws. */
  readonly promptEmbeds: { shape: [number, number, number]; data: Float32Array };
  readonly nullEmbeds: { shape: [number, number]; data: Float32Array };

  private constructor(private readonly source: string, private readonly tensors: Map<string, StoredTensor>, readonly microStep: number) {
    const missing = Object.keys(DRAW_KEYS).filter((k) => !tensors.has(k));
    if (missing.length) throw new Error(`${source}: missing draw(s) ${missing.map((k) => `'${k}'`).join(', ')} (has: ${[...tensors.keys()].join(', ') || 'none'}); a draws file holds ${Object.entries(DRAW_KEYS).map(([k, v]) => `${k} ${v}`).join('; ')}`);
    const y = this.get('prompt_embeds', 3);
    const y0 = this.get('null_embeds', 2);
    if (y.shape[1] !== y0.shape[0] || y.shape[2] !== y0.shape[1]) throw new Error(`${source}: 'null_embeds' has shape [${y0.shape}], expected [L, D] = [${y.shape.slice(1)}] as 'prompt_embeds' [${y.shape}]`);
    this.promptEmbeds = { shape: y.shape as [number, number, number], data: float32(y) };
    this.nullEmbeds = { shape: y0.shape as [number, number], data: float32(y0) };
    this.guidanceScale = this.scalar('guidance_scale');
    if (!Number.isFinite(this.guidanceScale)) throw new Error(`${source}: 'guidance_scale' must be finite, got ${this.guidanceScale}`);
    const nullFlag = this.scalar('lora_null');
    if (nullFlag !== 0 && nullFlag !== 1) throw new Error(`${source}: 'lora_null' must be 0 or 1, got ${nullFlag}`);
  }

  /** Reads a draws file; its draws serve micro-step `microStep` (default 0). */
  static async read(path: string, microStep = 0): Promise<GivenDraws> {
    return new GivenDraws(path, (await readSafetensors(path)).tensors, microStep);
  }

  static fromTensors(tensors: Map<string, StoredTensor>, source = 'draws', microStep = 0): GivenDraws {
    return new GivenDraws(source, tensors, microStep);
  }

  /** The batch size B the draws are for. */
  get batch(): number {
    return this.promptEmbeds.shape[0];
  }

  latents(microStep: number, shape: [number, number, number, number]): Tensor4D {
    return this.image('latents', microStep, shape);
  }

  timesteps(microStep: number, batch: number, low: number, high: number): number[] {
    return this.ints('timesteps', microStep, batch, low, high);
  }

  noise(microStep: number, shape: [number, number, number, number]): Tensor4D {
    return this.image('noise', microStep, shape);
  }

  loraTimesteps(microStep: number, batch: number, low: number, high: number): number[] {
    return this.ints('lora_timesteps', microStep, batch, low, high);
  }

  loraNoise(microStep: number, shape: [number, number, number, number]): Tensor4D {
    return this.image('lora_noise', microStep, shape);
  }

  loraUsesNullPrompt(microStep: number): boolean {
    this.check('lora_null', microStep);
    return this.scalar('lora_null') === 1;
  }

  private check(key: string, microStep: number): void {
    if (microStep !== this.microStep) throw new Error(`${this.source}: the draws are for micro-step ${this.microStep}, but '${key}' was asked for micro-step ${microStep}`);
  }

  private get(key: string, rank: number): StoredTensor {
    const t = this.tensors.get(key)!;
    if (t.shape.length !== rank) throw new Error(`${this.source}: '${key}' has shape [${t.shape}], expected ${DRAW_KEYS[key as keyof typeof DRAW_KEYS]}`);
    return t;
  }

  private scalar(key: string): number {
    const t = this.tensors.get(key)!;
    if (t.data.length !== 1) throw new Error(`${this.source}: '${key}' must hold one value, got shape [${t.shape}]`);
    return float32(t)[0]!;
  }

  /** An NCHW draw as the NHWC tensor the step asks for. */
  private image(key: string, microStep: number, [b, h, w, c]: [number, number, number, number]): Tensor4D {
    this.check(key, microStep);
    const t = this.get(key, 4);
    if (t.shape.join(',') !== [b, c, h, w].join(',')) throw new Error(`${this.source}: '${key}' has shape [${t.shape}] (NCHW), but the step needs [${[b, c, h, w]}] (batch ${b}, the UNet's in_channels ${c} and sample_size ${h})`);
    return tf.tidy(() => tf.transpose(tf.tensor4d(float32(t), [b, c, h, w]), [0, 2, 3, 1]));
  }

  private ints(key: string, microStep: number, batch: number, low: number, high: number): number[] {
    this.check(key, microStep);
    const t = this.get(key, 1);
    const values = Array.from(float32(t));
    if (values.length !== batch) throw new Error(`${this.source}: '${key}' has ${values.length} values for a batch of ${batch}`);
    const bad = values.find((v) => !Number.isInteger(v) || v < low || v > high);
    if (bad !== undefined) throw new Error(`${this.source}: '${key}' holds ${bad}, expected integers in [${low}, ${high}]`);
    return values;
  }
}
