/**
 * The VAE's Encoder, Decoder and DiagonalGaussianDistribution, named and wired as in diffusers'
 * models/autoencoders/vae.py (group norm, no time embedding, eps 1e-6). Activations are NHWC.
 */
import { tf } from '../tf.ts';
import type { Tensor4D } from '../tf.ts';
import type { ParamStore } from './params.ts';
import { Conv2d, GroupNorm, silu } from './layers.ts';
import { DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D } from './unet_2d_blocks.ts';

const VAE_EPS = 1e-6;

export interface CoderOptions {
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  groups: number;
  midBlockAddAttention: boolean;
}

/** image [B, H, W, in] → moments [B, h, w, 2·out] (mean and logvar, double_z). */
export class Encoder {
  readonly conv_in: Conv2d;
  readonly down_blocks: DownEncoderBlock2D[] = [];
  readonly mid_block: UNetMidBlock2D;
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;

  constructor(store: ParamStore, name: string, o: CoderOptions) {
    const ch = o.blockOutChannels;
    const last = ch[ch.length - 1]!;
    const common = { groups: o.groups, eps: VAE_EPS };
    this.conv_in = new Conv2d(store, `${name}.conv_in`, o.inChannels, ch[0]!, 3, 1, 1);
    let out = ch[0]!;
    ch.forEach((c, i) => {
      const inCh = out;
      out = c;
      this.down_blocks.push(new DownEncoderBlock2D(store, `${name}.down_blocks.${i}`, { ...common, numLayers: o.layersPerBlock, inChannels: inCh, outChannels: out, addDownsample: i !== ch.length - 1 }));
    });
    this.mid_block = new UNetMidBlock2D(store, `${name}.mid_block`, { ...common, numLayers: 1, inChannels: last, addAttention: o.midBlockAddAttention });
    this.conv_norm_out = new GroupNorm(store, `${name}.conv_norm_out`, o.groups, last, VAE_EPS);
    this.conv_out = new Conv2d(store, `${name}.conv_out`, last, 2 * o.outChannels, 3, 1, 1);
  }

  forward(x: Tensor4D): Tensor4D {
    let h = this.conv_in.forward(x);
    for (const block of this.down_blocks) h = block.forward(h);
    h = this.mid_block.forward(h);
    return this.conv_out.forward(silu(this.conv_norm_out.forward(h)));
  }
}

/** latents [B, h, w, in] → image [B, H, W, out]. */
export class Decoder {
  readonly conv_in: Conv2d;
  readonly mid_block: UNetMidBlock2D;
  readonly up_blocks: UpDecoderBlock2D[] = [];
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;

  constructor(store: ParamStore, name: string, o: CoderOptions) {
    const rev = [...o.blockOutChannels].reverse();
    const common = { groups: o.groups, eps: VAE_EPS };
    this.conv_in = new Conv2d(store, `${name}.conv_in`, o.inChannels, rev[0]!, 3, 1, 1);
    this.mid_block = new UNetMidBlock2D(store, `${name}.mid_block`, { ...common, numLayers: 1, inChannels: rev[0]!, addAttention: o.midBlockAddAttention });
    let out = rev[0]!;
    rev.forEach((c, i) => {
      const prev = out;
      out = c;
      this.up_blocks.push(new UpDecoderBlock2D(store, `${name}.up_blocks.${i}`, { ...common, numLayers: o.layersPerBlock + 1, inChannels: prev, outChannels: out, addUpsample: i !== rev.length - 1 }));
    });
    this.conv_norm_out = new GroupNorm(store, `${name}.conv_norm_out`, o.groups, o.blockOutChannels[0]!, VAE_EPS);
    this.conv_out = new Conv2d(store, `${name}.conv_out`, o.blockOutChannels[0]!, o.outChannels, 3, 1, 1);
  }

  forward(z: Tensor4D): Tensor4D {
    let h = this.mid_block.forward(this.conv_in.forward(z));
    for (const block of this.up_blocks) h = block.forward(h);
    return this.conv_out.forward(silu(this.conv_norm_out.forward(h)));
  }
}

/**
 * The posterior q(z | x) = N(mean, exp(logvar)) from the encoder's moments (split on channels,
 * logvar clamped to [−30, 20] as diffusers does). Tensors belong to the caller's tidy scope.
 */
export class DiagonalGaussianDistribution {
  readonly mean: Tensor4D;
  readonly logvar: Tensor4D;
  readonly std: Tensor4D;

  constructor(moments: Tensor4D) {
    const [mean, logvar] = tf.split(moments, 2, 3) as [Tensor4D, Tensor4D];
    this.mean = mean;
    this.logvar = tf.clipByValue(logvar, -30, 20) as Tensor4D;
    this.std = tf.exp(tf.mul(this.logvar, 0.5)) as Tensor4D;
  }

  /** mean + std · noise, with the caller's N(0, I) draw (shape of the mean) so that samples are reproducible. */
  sample(noise: Tensor4D): Tensor4D {
    if (noise.shape.join() !== this.mean.shape.join()) throw new Error(`DiagonalGaussianDistribution.sample: noise [${noise.shape}] differs from the latent shape [${this.mean.shape}]`);
    return tf.add(this.mean, tf.mul(this.std, noise));
  }

  /** The posterior's mode (its mean), as diffusers' `mode()`. */
  mode(): Tensor4D {
    return this.mean;
  }
}
