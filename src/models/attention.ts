/**
 * diffusers' attention stack: Attention (to_q/to_k/to_v/to_out.0), GEGLU FeedForward,
 * BasicTransformerBlock (self-attn, cross-attn, feed-forward, each pre-LayerNorm with a residual)
 * and Transformer2DModel (GroupNorm, proj_in, blocks, proj_out, residual).
 */
import { tf } from '../tf.ts';
import type { Tensor3D, Tensor4D } from '../tf.ts';
import type { ParamStore } from './params.ts';
import { Conv2d, GroupNorm, LayerNorm, Linear, gelu } from './layers.ts';

export class Attention {
  readonly to_q: Linear;
  readonly to_k: Linear;
  readonly to_v: Linear;
  readonly to_out: Linear;
  private readonly headDim: number;

  constructor(store: ParamStore, name: string, queryDim: number, crossAttentionDim: number | null, readonly heads: number, headDim: number) {
    const inner = heads * headDim;
    const ctxDim = crossAttentionDim ?? queryDim;
    this.headDim = headDim;
    this.to_q = new Linear(store, `${name}.to_q`, queryDim, inner, false);
    this.to_k = new Linear(store, `${name}.to_k`, ctxDim, inner, false);
    this.to_v = new Linear(store, `${name}.to_v`, ctxDim, inner, false);
    this.to_out = new Linear(store, `${name}.to_out.0`, inner, queryDim, true);
  }

  /** [B, N, C] → [B·heads, N, headDim], keeping every tensor at rank ≤ 4 (rank 5 is slow in tfjs). */
  private splitHeads(x: Tensor3D): Tensor3D {
    const [b, n] = x.shape;
    const split = tf.reshape(x, [b, n, this.heads, this.headDim]);
    return tf.reshape(tf.transpose(split, [0, 2, 1, 3]), [b * this.heads, n, this.headDim]);
  }

  private mergeHeads(x: Tensor3D, batch: number): Tensor3D {
    const n = x.shape[1];
    const split = tf.reshape(x, [batch, this.heads, n, this.headDim]);
    return tf.reshape(tf.transpose(split, [0, 2, 1, 3]), [batch, n, this.heads * this.headDim]);
  }

  /** softmax(q kᵀ / √d) v per head; `context` null means self-attention. */
  forward(hidden: Tensor3D, context: Tensor3D | null): Tensor3D {
    const ctx = context ?? hidden;
    const q = this.splitHeads(this.to_q.forward(hidden));
    const k = this.splitHeads(this.to_k.forward(ctx));
    const v = this.splitHeads(this.to_v.forward(ctx));
    // q·kᵀ with an explicit transpose: wasm's transposed matmul is ~6x slower (matmul_grad.ts).
    // The 1/√d scale goes on q ([B·h, N, d]), not on the scores ([B·h, N, N]): a gradient tape then
    // keeps one N×N tensor per attention (softmax's output) instead of two, and the scaling costs N·d.
    const scores = tf.matMul(tf.mul(q, 1 / Math.sqrt(this.headDim)), tf.transpose(k, [0, 2, 1]));
    const out = this.mergeHeads(tf.matMul(tf.softmax(scores), v), hidden.shape[0]);
    return this.to_out.forward(out);
  }
}

/** FeedForward with GEGLU: net.0.proj → (h, gate) → h·gelu(gate) → net.2. */
export class FeedForward {
  readonly proj: Linear;
  readonly out: Linear;

  constructor(store: ParamStore, name: string, dim: number, mult = 4) {
    const inner = dim * mult;
    this.proj = new Linear(store, `${name}.net.0.proj`, dim, inner * 2);
    this.out = new Linear(store, `${name}.net.2`, inner, dim);
  }

  forward(x: Tensor3D): Tensor3D {
    const [h, gate] = tf.split(this.proj.forward(x), 2, -1) as [Tensor3D, Tensor3D];
    return this.out.forward(tf.mul(h, gelu(gate)));
  }
}

export class BasicTransformerBlock {
  readonly norm1: LayerNorm;
  readonly attn1: Attention;
  readonly norm2: LayerNorm;
  readonly attn2: Attention;
  readonly norm3: LayerNorm;
  readonly ff: FeedForward;

  /** @param onlyCrossAttention diffusers' only_cross_attention: attn1 attends to the text too. */
  constructor(store: ParamStore, name: string, dim: number, heads: number, headDim: number, crossAttentionDim: number, readonly onlyCrossAttention = false) {
    this.norm1 = new LayerNorm(store, `${name}.norm1`, dim);
    this.attn1 = new Attention(store, `${name}.attn1`, dim, onlyCrossAttention ? crossAttentionDim : null, heads, headDim);
    this.norm2 = new LayerNorm(store, `${name}.norm2`, dim);
    this.attn2 = new Attention(store, `${name}.attn2`, dim, crossAttentionDim, heads, headDim);
    this.norm3 = new LayerNorm(store, `${name}.norm3`, dim);
    this.ff = new FeedForward(store, `${name}.ff`, dim);
  }

  forward(hidden: Tensor3D, encoderHiddenStates: Tensor3D): Tensor3D {
    let h: Tensor3D = tf.add(this.attn1.forward(this.norm1.forward(hidden), this.onlyCrossAttention ? encoderHiddenStates : null), hidden);
    h = tf.add(this.attn2.forward(this.norm2.forward(h), encoderHiddenStates), h);
    return tf.add(this.ff.forward(this.norm3.forward(h)), h);
  }
}

export class Transformer2DModel {
  readonly norm: GroupNorm;
  readonly proj_in: Conv2d | Linear;
  readonly transformer_blocks: BasicTransformerBlock[] = [];
  readonly proj_out: Conv2d | Linear;

  constructor(store: ParamStore, name: string, opts: { heads: number; headDim: number; inChannels: number; numLayers: number; crossAttentionDim: number; normNumGroups: number; useLinearProjection: boolean; onlyCrossAttention?: boolean }) {
    const inner = opts.heads * opts.headDim;
    this.norm = new GroupNorm(store, `${name}.norm`, opts.normNumGroups, opts.inChannels, 1e-6);
    this.proj_in = opts.useLinearProjection ? new Linear(store, `${name}.proj_in`, opts.inChannels, inner) : new Conv2d(store, `${name}.proj_in`, opts.inChannels, inner, 1);
    for (let i = 0; i < opts.numLayers; i++) {
      this.transformer_blocks.push(new BasicTransformerBlock(store, `${name}.transformer_blocks.${i}`, inner, opts.heads, opts.headDim, opts.crossAttentionDim, opts.onlyCrossAttention ?? false));
    }
    this.proj_out = opts.useLinearProjection ? new Linear(store, `${name}.proj_out`, inner, opts.inChannels) : new Conv2d(store, `${name}.proj_out`, inner, opts.inChannels, 1);
  }

  /** In its own tf.tidy per transformer layer, as ResnetBlock2D.forward (resnet.ts). */
  forward(x: Tensor4D, encoderHiddenStates: Tensor3D): Tensor4D {
    return tf.tidy(() => this.forwardUntidied(x, encoderHiddenStates));
  }

  private forwardUntidied(x: Tensor4D, encoderHiddenStates: Tensor3D): Tensor4D {
    const [b, h, w] = x.shape;
    const normed = this.norm.forward(x);
    // NHWC makes "permute(0,2,3,1).reshape(b, h·w, c)" a plain reshape.
    let seq: Tensor3D;
    if (this.proj_in instanceof Conv2d) {
      const p = this.proj_in.forward(normed);
      seq = tf.reshape(p, [b, h * w, p.shape[3]]);
    } else {
      seq = this.proj_in.forward(tf.reshape(normed, [b, h * w, normed.shape[3]]) as Tensor3D);
    }
    for (const block of this.transformer_blocks) {
      const input = seq;
      seq = tf.tidy(() => block.forward(input, encoderHiddenStates));
    }
    const inner = seq.shape[2];
    const out =
      this.proj_out instanceof Conv2d
        ? this.proj_out.forward(tf.reshape(seq, [b, h, w, inner]))
        : (tf.reshape(this.proj_out.forward(seq), [b, h, w, x.shape[3]]) as Tensor4D);
    return tf.add(out, x);
  }
}
