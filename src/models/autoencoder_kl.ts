/**
 * AutoencoderKL (Stable Diffusion's VAE), built from a diffusers config.json and addressed by
 * diffusers' state-dict keys (`encoder.*`, `decoder.*`, `quant_conv`, `post_quant_conv`).
 * `encode` and `decode` take and return NHWC; `vae-forward` converts from/to PyTorch's NCHW.
 *
 * As in diffusers, `encode`/`decode` work on the raw latent space; the pipeline's scaling
 * (z_model = (z − shift_factor) · scaling_factor) is `scaleLatents` / `unscaleLatents`.
 * Everything runs in float32, so `force_upcast` (diffusers' fp16 guard) has nothing to change.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tf } from '../tf.ts';
import type { Tensor4D } from '../tf.ts';
import { fileValues, ParamStore, type ParamSpec } from './params.ts';
import { Conv2d } from './layers.ts';
import { Decoder, DiagonalGaussianDistribution, Encoder } from './vae.ts';
import type { StoredTensor } from './safetensors.ts';
import { checkAgainst, WeightFiles, type TensorSource } from './weights.ts';
import { CONFIG_NAME, WEIGHTS_NAME } from './unet_2d_condition.ts';

/** The keys of a diffusers AutoencoderKL config this port reads. */
export interface AutoencoderKLConfig {
  _class_name?: string;
  in_channels: number;
  out_channels: number;
  down_block_types: string[];
  up_block_types: string[];
  block_out_channels: number[];
  layers_per_block: number;
  act_fn: string;
  latent_channels: number;
  norm_num_groups: number;
  sample_size: number | number[];
  scaling_factor: number;
  shift_factor: number | null;
  latents_mean: number[] | null;
  latents_std: number[] | null;
  force_upcast: boolean;
  use_quant_conv: boolean;
  use_post_quant_conv: boolean;
  mid_block_add_attention: boolean;
  [key: string]: unknown;
}

/** diffusers' defaults for AutoencoderKL (0.30), so partial configs read the same. */
export const AUTOENCODER_KL_DEFAULTS: AutoencoderKLConfig = {
  in_channels: 3,
  out_channels: 3,
  down_block_types: ['DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D'],
  block_out_channels: [64],
  layers_per_block: 1,
  act_fn: 'silu',
  latent_channels: 4,
  norm_num_groups: 32,
  sample_size: 32,
  scaling_factor: 0.18215,
  shift_factor: null,
  latents_mean: null,
  latents_std: null,
  force_upcast: true,
  use_quant_conv: true,
  use_post_quant_conv: true,
  mid_block_add_attention: true,
};

/** Fills defaults and refuses every option this port cannot honour, naming it. */
export function parseAutoencoderKLConfig(raw: Record<string, unknown>, source = CONFIG_NAME): AutoencoderKLConfig {
  const c = { ...AUTOENCODER_KL_DEFAULTS, ...raw } as AutoencoderKLConfig;
  if (c._class_name && c._class_name !== 'AutoencoderKL') throw new Error(`${source}: _class_name '${c._class_name}' is not AutoencoderKL`);
  if (c.act_fn !== 'silu' && c.act_fn !== 'swish') throw new Error(`${source}: act_fn '${c.act_fn}' is not supported (supported: silu, swish)`);
  for (const t of c.down_block_types) if (t !== 'DownEncoderBlock2D') throw new Error(`${source}: down block type '${t}' is not supported (supported: DownEncoderBlock2D)`);
  for (const t of c.up_block_types) if (t !== 'UpDecoderBlock2D') throw new Error(`${source}: up block type '${t}' is not supported (supported: UpDecoderBlock2D)`);
  const n = c.block_out_channels.length;
  if (n === 0 || c.down_block_types.length !== n || c.up_block_types.length !== n) throw new Error(`${source}: down_block_types (${c.down_block_types.length}), up_block_types (${c.up_block_types.length}) and block_out_channels (${n}) must have the same, non-zero length`);
  if (!(Number.isInteger(c.layers_per_block) && c.layers_per_block >= 1)) throw new Error(`${source}: layers_per_block must be a positive integer, got ${JSON.stringify(c.layers_per_block)}`);
  if (!(typeof c.scaling_factor === 'number' && Number.isFinite(c.scaling_factor) && c.scaling_factor !== 0)) throw new Error(`${source}: scaling_factor must be a finite non-zero number, got ${JSON.stringify(c.scaling_factor)}`);
  if (c.shift_factor !== null && !(typeof c.shift_factor === 'number' && Number.isFinite(c.shift_factor))) throw new Error(`${source}: shift_factor must be a number or null, got ${JSON.stringify(c.shift_factor)}`);
  // SDXL pipelines rescale latents per channel with these; the SD pipelines this project exports do not.
  for (const key of ['latents_mean', 'latents_std'] as const) if (c[key] !== null) throw new Error(`${source}: '${key}' (per-channel latent statistics) is not supported; only scaling_factor and shift_factor are`);
  return c;
}

export class AutoencoderKL {
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  readonly quant_conv: Conv2d | null;
  readonly post_quant_conv: Conv2d | null;

  private constructor(readonly config: AutoencoderKLConfig, readonly store: ParamStore) {
    const c = config;
    const coder = { blockOutChannels: c.block_out_channels, layersPerBlock: c.layers_per_block, groups: c.norm_num_groups, midBlockAddAttention: c.mid_block_add_attention };
    this.encoder = new Encoder(store, 'encoder', { ...coder, inChannels: c.in_channels, outChannels: c.latent_channels });
    this.decoder = new Decoder(store, 'decoder', { ...coder, inChannels: c.latent_channels, outChannels: c.out_channels });
    const z = c.latent_channels;
    this.quant_conv = c.use_quant_conv ? new Conv2d(store, 'quant_conv', 2 * z, 2 * z, 1) : null;
    this.post_quant_conv = c.use_post_quant_conv ? new Conv2d(store, 'post_quant_conv', z, z, 1) : null;
  }

  /** A freshly initialised model (PyTorch's default init, seeded); frozen unless `trainable`. */
  static fromConfig(raw: Record<string, unknown>, options: { seed?: number; trainable?: boolean; source?: string } = {}): AutoencoderKL {
    return new AutoencoderKL(parseAutoencoderKLConfig(raw, options.source), new ParamStore(options.seed ?? 0, options.trainable ?? false));
  }

  /** Every parameter's diffusers name, kind and PyTorch shape for a config, without allocating any. */
  static parameterSpecs(raw: Record<string, unknown>, source?: string): ParamSpec[] {
    return new AutoencoderKL(parseAutoencoderKLConfig(raw, source), new ParamStore(0, false, { specOnly: true })).store.specs();
  }

  /**
   * Loads `dir/config.json` and the weights as diffusers' `from_pretrained` finds them (the UNet's
   * way: `diffusion_pytorch_model[.variant].safetensors` or its sharded index, F16/BF16 widened);
   * every variable is built from the file's tensor, one at a time, never initialised first.
   */
  static async fromPretrained(dir: string, options: { trainable?: boolean; variant?: string } = {}): Promise<AutoencoderKL> {
    const configPath = join(dir, CONFIG_NAME);
    let raw: Record<string, unknown>;
    try {
      raw = JSON.parse(await readFile(configPath, 'utf8'));
    } catch (err) {
      throw new Error(`${configPath}: cannot read the VAE config (${(err as Error).message})`);
    }
    const config = parseAutoencoderKLConfig(raw, configPath);
    const weights = WeightFiles.open(dir, WEIGHTS_NAME, options.variant);
    try {
      checkAgainst(AutoencoderKL.parameterSpecs(raw, configPath), weights, 'the VAE config');
      return new AutoencoderKL(config, new ParamStore(0, options.trainable ?? false, fileValues(weights)));
    } finally {
      weights.close();
    }
  }

  /** Assigns every parameter from a PyTorch-layout state dict or weight files; any missing, unexpected or mis-shaped key is an error naming the source. */
  loadStateDict(tensors: Map<string, StoredTensor> | TensorSource, source = 'state dict'): void {
    this.store.loadStateDict(tensors, source, 'the VAE config');
  }

  /** How many times the decoder upsamples each side (2^(levels − 1)). */
  get downscale(): number {
    return 2 ** (this.config.block_out_channels.length - 1);
  }

  /** The latent side length for an image side of `n` pixels: each stride-2 conv (padded (0,1)) maps n to ⌊(n − 2) / 2⌋ + 1. */
  latentSize(n: number): number {
    for (let i = 1; i < this.config.block_out_channels.length; i++) n = Math.floor((n - 2) / 2) + 1;
    return n;
  }

  /** image NHWC [B, H, W, in_channels] (in [−1, 1]) → the posterior over raw latents [B, H/f, W/f, latent_channels]. */
  encode(image: Tensor4D): DiagonalGaussianDistribution {
    if (image.shape[3] !== this.config.in_channels) throw new Error(`AutoencoderKL.encode: image has ${image.shape[3]} channels, the VAE's in_channels is ${this.config.in_channels}`);
    const moments = this.encoder.forward(image);
    return new DiagonalGaussianDistribution(this.quant_conv ? this.quant_conv.forward(moments) : moments);
  }

  /** raw latents NHWC [B, h, w, latent_channels] → image [B, h·f, w·f, out_channels] (not clamped). */
  decode(latents: Tensor4D): Tensor4D {
    if (latents.shape[3] !== this.config.latent_channels) throw new Error(`AutoencoderKL.decode: latents have ${latents.shape[3]} channels, the VAE's latent_channels is ${this.config.latent_channels}`);
    return this.decoder.forward(this.post_quant_conv ? this.post_quant_conv.forward(latents) : latents);
  }

  /** Raw latents → the diffusion model's space: (z − shift_factor) · scaling_factor. */
  scaleLatents(z: Tensor4D): Tensor4D {
    const { scaling_factor: s, shift_factor: shift } = this.config;
    return tf.mul(shift ? tf.sub(z, shift) : z, s);
  }

  /** The diffusion model's latents → raw latents: z / scaling_factor + shift_factor (what pipelines do before decode). */
  unscaleLatents(z: Tensor4D): Tensor4D {
    const { scaling_factor: s, shift_factor: shift } = this.config;
    const raw: Tensor4D = tf.div(z, s);
    return shift ? tf.add(raw, shift) : raw;
  }

  /**
   * The diffusion model's latents → images in [−1, 1]: unscale, decode, clamp (as diffusers' image
   * processor does). Decodes `sliceSize` samples at a time, each in its own tidy scope, so that
   * only one slice's activations are alive at once (diffusers' enable_slicing).
   */
  decodeToImages(z: Tensor4D, sliceSize = 1): Tensor4D {
    const n = z.shape[0];
    const step = Math.max(1, Math.min(n, sliceSize));
    const slices: Tensor4D[] = [];
    for (let i = 0; i < n; i += step) {
      slices.push(tf.tidy(() => tf.clipByValue(this.decode(this.unscaleLatents(tf.slice(z, [i, 0, 0, 0], [Math.min(step, n - i), -1, -1, -1]))), -1, 1) as Tensor4D));
    }
    if (slices.length === 1) return slices[0]!;
    const out = tf.concat(slices, 0);
    tf.dispose(slices);
    return out;
  }

  dispose(): void {
    this.store.dispose();
  }
}
