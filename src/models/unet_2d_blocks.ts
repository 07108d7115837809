/** The UNet's down, mid and up blocks, named and wired as in diffusers' unet_2d_blocks.py. */
import { tf } from '../tf.ts';
import type { Tensor2D, Tensor3D, Tensor4D } from '../tf.ts';
import type { ParamStore } from './params.ts';
import { ResnetBlock2D, Downsample2D, Upsample2D } from './resnet.ts';
import { Transformer2DModel } from './attention.ts';

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
