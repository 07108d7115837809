/** The UNet's and the VAE's down, mid and up blocks, named and wired as in diffusers' unet_2d_blocks.py. */
import { tf } from '../tf.ts';
import type { Tensor2D, Tensor3D, Tensor4D } from '../tf.ts';
import type { ParamStore } from './params.ts';
import { ResnetBlock2D, Downsample2D, Upsample2D } from './resnet.ts';
import { Attention, Transformer2DModel } from './attention.ts';
import { GroupNorm } from './layers.ts';

export interface BlockOptions {
  numLayers: number;
  inChannels: number;
  outChannels: number;
  tembChannels: number;
  groups: number;
  eps: number;
  /** Present for cross-attention blocks. */
  attention?: { heads: number; transformerLayers: number; crossAttentionDim: number; useLinearProjection: boolean; onlyCrossAttention?: boolean };
}

function attentions(store: ParamStore, name: string, count: number, channels: number, o: BlockOptions): Transformer2DModel[] {
  if (!o.attention) return [];
  const { heads } = o.attention;
  if (channels % heads !== 0) throw new Error(`${name}: ${channels} channels do not split into ${heads} attention heads`);
  return Array.from({ length: count }, (_, i) =>
    new Transformer2DModel(store, `${name}.attentions.${i}`, {
      heads,
      headDim: channels / heads,
      inChannels: channels,
      numLayers: o.attention!.transformerLayers,
      crossAttentionDim: o.attention!.crossAttentionDim,
      normNumGroups: o.groups,
      useLinearProjection: o.attention!.useLinearProjection,
      onlyCrossAttention: o.attention!.onlyCrossAttention ?? false,
    }),
  );
}

/** DownBlock2D, or CrossAttnDownBlock2D when `attention` is given. */
export class DownBlock2D {
  readonly resnets: ResnetBlock2D[] = [];
  readonly attentions: Transformer2DModel[];
  readonly downsamplers: Downsample2D[] = [];

  constructor(store: ParamStore, name: string, o: BlockOptions & { addDownsample: boolean; downsamplePadding: number }) {
    for (let i = 0; i < o.numLayers; i++) {
      this.resnets.push(new ResnetBlock2D(store, `${name}.resnets.${i}`, { inChannels: i === 0 ? o.inChannels : o.outChannels, outChannels: o.outChannels, tembChannels: o.tembChannels, groups: o.groups, eps: o.eps, outputScaleFactor: 1 }));
    }
    this.attentions = attentions(store, name, o.numLayers, o.outChannels, o);
    if (o.addDownsample) this.downsamplers.push(new Downsample2D(store, `${name}.downsamplers.0`, o.outChannels, o.downsamplePadding));
  }

  /** Returns the block output and every intermediate state the up path will concatenate. */
  forward(x: Tensor4D, temb: Tensor2D, context: Tensor3D): { hidden: Tensor4D; states: Tensor4D[] } {
    const states: Tensor4D[] = [];
    let h = x;
    this.resnets.forEach((resnet, i) => {
      h = resnet.forward(h, temb);
      if (this.attentions.length) h = this.attentions[i]!.forward(h, context);
      states.push(h);
    });
    for (const down of this.downsamplers) {
      h = down.forward(h);
      states.push(h);
    }
    return { hidden: h, states };
  }
}

/** UNetMidBlock2DCrossAttn: resnet, then (attention, resnet) per layer. */
export class UNetMidBlock2DCrossAttn {
  readonly resnets: ResnetBlock2D[] = [];
  readonly attentions: Transformer2DModel[];

  constructor(store: ParamStore, name: string, o: BlockOptions & { outputScaleFactor: number }) {
    const resnet = (i: number) => new ResnetBlock2D(store, `${name}.resnets.${i}`, { inChannels: o.inChannels, outChannels: o.inChannels, tembChannels: o.tembChannels, groups: o.groups, eps: o.eps, outputScaleFactor: o.outputScaleFactor });
    this.resnets.push(resnet(0));
    this.attentions = attentions(store, name, o.numLayers, o.inChannels, o);
    for (let i = 0; i < o.numLayers; i++) this.resnets.push(resnet(i + 1));
  }

  forward(x: Tensor4D, temb: Tensor2D, context: Tensor3D): Tensor4D {
    let h = this.resnets[0]!.forward(x, temb);
    this.attentions.forEach((attn, i) => {
      h = this.resnets[i + 1]!.forward(attn.forward(h, context), temb);
    });
    return h;
  }
}

/** UpBlock2D, or CrossAttnUpBlock2D when `attention` is given. */
export class UpBlock2D {
  readonly resnets: ResnetBlock2D[] = [];
  readonly attentions: Transformer2DModel[];
  readonly upsamplers: Upsample2D[] = [];

  constructor(store: ParamStore, name: string, o: BlockOptions & { prevOutputChannels: number; addUpsample: boolean }) {
    for (let i = 0; i < o.numLayers; i++) {
      const skip = i === o.numLayers - 1 ? o.inChannels : o.outChannels;
      const input = i === 0 ? o.prevOutputChannels : o.outChannels;
      this.resnets.push(new ResnetBlock2D(store, `${name}.resnets.${i}`, { inChannels: input + skip, outChannels: o.outChannels, tembChannels: o.tembChannels, groups: o.groups, eps: o.eps, outputScaleFactor: 1 }));
    }
    this.attentions = attentions(store, name, o.numLayers, o.outChannels, o);
    if (o.addUpsample) this.upsamplers.push(new Upsample2D(store, `${name}.upsamplers.0`, o.outChannels));
  }

  /** `skips` are consumed from the end, as diffusers pops res_hidden_states_tuple. */
  forward(x: Tensor4D, skips: Tensor4D[], temb: Tensor2D, context: Tensor3D, upsampleSize?: [number, number]): Tensor4D {
    let h = x;
    this.resnets.forEach((resnet, i) => {
      const skip = skips.pop()!;
      h = resnet.forward(tf.concat([h, skip], 3), temb);
      if (this.attentions.length) h = this.attentions[i]!.forward(h, context);
    });
    for (const up of this.upsamplers) h = up.forward(h, upsampleSize);
    return h;
  }
}

/**
 * diffusers' `Attention` as UNetMidBlock2D builds it for the VAE (`_from_deprecated_attn_block`):
 * group_norm over the feature map, single-head self-attention over the H·W positions with biased
 * to_q/to_k/to_v, to_out.0, and a residual connection. Keys: `{name}.group_norm`, `{name}.to_q`, ….
 */
export class SpatialSelfAttention {
  readonly group_norm: GroupNorm;
  readonly attention: Attention;

  constructor(store: ParamStore, name: string, channels: number, groups: number, eps: number) {
    this.group_norm = new GroupNorm(store, `${name}.group_norm`, groups, channels, eps);
    this.attention = new Attention(store, name, channels, null, 1, channels, true);
  }

  forward(x: Tensor4D): Tensor4D {
    const [b, h, w, c] = x.shape;
    const seq = tf.reshape(this.group_norm.forward(x), [b, h * w, c]) as Tensor3D;
    return tf.add(tf.reshape(this.attention.forward(seq, null), [b, h, w, c]), x);
  }
}

/** Options of the VAE's blocks (no time embedding; diffusers' Encoder/Decoder use eps 1e-6). */
export interface VaeBlockOptions {
  numLayers: number;
  inChannels: number;
  outChannels: number;
  groups: number;
  eps: number;
}

function vaeResnet(store: ParamStore, name: string, inChannels: number, outChannels: number, o: VaeBlockOptions): ResnetBlock2D {
  return new ResnetBlock2D(store, name, { inChannels, outChannels, tembChannels: null, groups: o.groups, eps: o.eps, outputScaleFactor: 1 });
}

/** DownEncoderBlock2D: resnets, then a stride-2 conv (padding (0,1,0,1), as the Encoder asks with downsample_padding 0). */
export class DownEncoderBlock2D {
  readonly resnets: ResnetBlock2D[] = [];
  readonly downsamplers: Downsample2D[] = [];

  constructor(store: ParamStore, name: string, o: VaeBlockOptions & { addDownsample: boolean }) {
    for (let i = 0; i < o.numLayers; i++) this.resnets.push(vaeResnet(store, `${name}.resnets.${i}`, i === 0 ? o.inChannels : o.outChannels, o.outChannels, o));
    if (o.addDownsample) this.downsamplers.push(new Downsample2D(store, `${name}.downsamplers.0`, o.outChannels, 0));
  }

  forward(x: Tensor4D): Tensor4D {
    let h = x;
    for (const resnet of this.resnets) h = resnet.forward(h, null);
    for (const down of this.downsamplers) h = down.forward(h);
    return h;
  }
}

/** UpDecoderBlock2D: resnets, then nearest ×2 and a 3x3 conv. */
export class UpDecoderBlock2D {
  readonly resnets: ResnetBlock2D[] = [];
  readonly upsamplers: Upsample2D[] = [];

  constructor(store: ParamStore, name: string, o: VaeBlockOptions & { addUpsample: boolean }) {
    for (let i = 0; i < o.numLayers; i++) this.resnets.push(vaeResnet(store, `${name}.resnets.${i}`, i === 0 ? o.inChannels : o.outChannels, o.outChannels, o));
    if (o.addUpsample) this.upsamplers.push(new Upsample2D(store, `${name}.upsamplers.0`, o.outChannels));
  }

  forward(x: Tensor4D): Tensor4D {
    let h = x;
    for (const resnet of this.resnets) h = resnet.forward(h, null);
    for (const up of this.upsamplers) h = up.forward(h);
    return h;
  }
}

/** UNetMidBlock2D without time embedding: resnet, then (attention when `addAttention`, resnet) per layer. */
export class UNetMidBlock2D {
  readonly resnets: ResnetBlock2D[] = [];
  /** Empty when diffusers' add_attention is false (its list then holds None and no weights). */
  readonly attentions: SpatialSelfAttention[] = [];

  constructor(store: ParamStore, name: string, o: Omit<VaeBlockOptions, 'outChannels'> & { addAttention: boolean }) {
    const c = o.inChannels;
    this.resnets.push(vaeResnet(store, `${name}.resnets.0`, c, c, { ...o, outChannels: c }));
    for (let i = 0; i < o.numLayers; i++) {
      if (o.addAttention) this.attentions.push(new SpatialSelfAttention(store, `${name}.attentions.${i}`, c, o.groups, o.eps));
      this.resnets.push(vaeResnet(store, `${name}.resnets.${i + 1}`, c, c, { ...o, outChannels: c }));
    }
  }

  forward(x: Tensor4D): Tensor4D {
    let h = this.resnets[0]!.forward(x, null);
    for (let i = 1; i < this.resnets.length; i++) {
      const attn = this.attentions[i - 1];
      h = this.resnets[i]!.forward(attn ? attn.forward(h) : h, null);
    }
    return h;
  }
}
