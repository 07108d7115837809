/**
 * The primitive layers of diffusers' UNet, as PyTorch names them: Conv2d and Linear (each with an
 * optional LoRA adapter, as PEFT wraps them), GroupNorm, LayerNorm. Activations are NHWC
 * [B, H, W, C]; sequences [B, N, C].
 */
import { tf } from '../tf.ts';
import type { Tensor, Tensor3D, Tensor4D, Variable } from '../tf.ts';
import type { ParamStore } from './params.ts';

/** Whether the LoRA adapters attached to a model are active (one object shared by its layers). */
export interface LoraState {
  enabled: boolean;
}

/** A LoRA adapter on one layer (set by `LoraAdapter.attach`): y += scale · B(A(x)), active only while `state.enabled`. */
export interface LayerLora {
  A: Variable;
  B: Variable;
  scale: number;
  state: LoraState;
}

export class Conv2d {
  readonly weight: Variable;
  readonly bias: Variable | null;
  /** PEFT's Conv2d LoRA: A is a conv with this layer's kernel, stride and padding into r channels, B a 1x1 conv. */
  lora: LayerLora | null = null;
  /** 'valid' / 'same' where they equal PyTorch's padding (the native backend accepts only those), else an explicit pre-pad. */
  private readonly mode: 'valid' | 'same';
  private readonly prePad: [number, number][] | null;

  /**
   * @param padding PyTorch's symmetric padding, or explicit [top, bottom, left, right]
   *   (Downsample2D with padding 0 pads (0,1,0,1)).
   */
  constructor(store: ParamStore, readonly name: string, readonly inChannels: number, readonly outChannels: number, readonly kernel: number, readonly stride = 1, padding: number | [number, number, number, number] = 0, bias = true) {
    const fanIn = inChannels * kernel * kernel;
    this.weight = store.create(`${name}.weight`, 'conv', [outChannels, inChannels, kernel, kernel], { fanIn });
    this.bias = bias ? store.create(`${name}.bias`, 'vector', [outChannels], { fanIn }) : null;
    const [t, b, l, r] = typeof padding === 'number' ? [padding, padding, padding, padding] : padding;
    const half = (kernel - 1) / 2;
    if (t === 0 && b === 0 && l === 0 && r === 0) {
      this.mode = 'valid';
      this.prePad = null;
    } else if (stride === 1 && [t, b, l, r].every((p) => p === half)) {
      this.mode = 'same'; // stride 1, odd kernel: TF's 'same' pads (k-1)/2 on every side, as PyTorch does here
      this.prePad = null;
    } else {
      this.mode = 'valid';
      this.prePad = [[0, 0], [t, b], [l, r], [0, 0]];
    }
  }

  forward(x: Tensor4D): Tensor4D {
    const input = this.prePad ? tf.pad(x, this.prePad) : x;
    let y = tf.conv2d(input, this.weight as Tensor4D, this.stride, this.mode);
    if (this.bias) y = tf.add(y, this.bias);
    if (this.lora?.state.enabled) {
      const down = tf.conv2d(input, this.lora.A as Tensor4D, this.stride, this.mode);
      const delta = tf.conv2d(down, this.lora.B as Tensor4D, 1, 'valid');
      y = tf.add(y, this.lora.scale === 1 ? delta : tf.mul(delta, this.lora.scale));
    }
    return y;
  }
}

export class Linear {
  readonly weight: Variable;
  readonly bias: Variable | null;
  lora: LayerLora | null = null;

  constructor(store: ParamStore, readonly name: string, readonly inFeatures: number, readonly outFeatures: number, bias = true) {
    this.weight = store.create(`${name}.weight`, 'linear', [outFeatures, inFeatures], { fanIn: inFeatures });
    this.bias = bias ? store.create(`${name}.bias`, 'vector', [outFeatures], { fanIn: inFeatures }) : null;
  }

  /** x: [..., in] → [..., out]. Reshaped to 2-D because tfjs' rank-3 × rank-2 matMul has no gradient. */
  forward<T extends Tensor>(x: T): T {
    const shape = x.shape;
    const x2 = tf.reshape(x, [-1, this.inFeatures]);
    let y: Tensor = tf.matMul(x2, this.weight);
    if (this.bias) y = tf.add(y, this.bias);
    if (this.lora?.state.enabled) {
      const delta = tf.matMul(tf.matMul(x2, this.lora.A), this.lora.B);
      y = tf.add(y, this.lora.scale === 1 ? delta : tf.mul(delta, this.lora.scale));
    }
    return tf.reshape(y, [...shape.slice(0, -1), this.outFeatures]) as T;
  }
}

export class GroupNorm {
  readonly weight: Variable;
  readonly bias: Variable;

  constructor(store: ParamStore, name: string, readonly numGroups: number, readonly numChannels: number, readonly eps: number) {
    if (numChannels % numGroups !== 0) throw new Error(`${name}: GroupNorm needs channels (${numChannels}) divisible by norm_num_groups (${numGroups})`);
    this.weight = store.create(`${name}.weight`, 'vector', [numChannels], { constant: 1 });
    this.bias = store.create(`${name}.bias`, 'vector', [numChannels], { constant: 0 });
  }

  forward(x: Tensor4D): Tensor4D {
    const [b, h, w, c] = x.shape;
    return normalizeAffine(x, [b, h * w, this.numGroups, c / this.numGroups], [1, 3], this.eps, this.weight, this.bias);
  }
}

export class LayerNorm {
  readonly weight: Variable;
  readonly bias: Variable;

  constructor(store: ParamStore, name: string, dim: number, readonly eps = 1e-5) {
    this.weight = store.create(`${name}.weight`, 'vector', [dim], { constant: 1 });
    this.bias = store.create(`${name}.bias`, 'vector', [dim], { constant: 0 });
  }

  forward(x: Tensor3D): Tensor3D {
    return normalizeAffine(x, x.shape, [x.rank - 1], this.eps, this.weight, this.bias);
  }
}

/**
 * GroupNorm and LayerNorm: x viewed as `statsShape` is normalised over `axes`
 * (x̂ = (x − mean) / sqrt(var + eps)), then scaled and shifted per channel (the last axis of x).
 * The forward runs the same ops as a plain composition would. The backward is the closed form
 *   dx = (g − mean(g) − x̂ · mean(g · x̂)) / sqrt(var + eps), with g = dy · weight,
 *   dweight = Σ dy · x̂, dbias = Σ dy.
 * Autodiff of the moments emits about three times as many kernels. Each kernel costs tens of
 * microseconds on tfjs-node whatever its size, so on the fixture UNet this closed form makes
 * forward+backward faster (README, "Speed").
 */
function normalizeAffine<T extends Tensor>(x: T, statsShape: number[], axes: number[], eps: number, weight: Variable, bias: Variable): T {
  const outerAxes = x.shape.slice(0, -1).map((_, i) => i);
  const norm = tf.customGrad((...args: (Tensor | tf.GradSaveFunc)[]) => {
    const [input, scale, shift, save] = args as [Tensor, Tensor, Tensor, tf.GradSaveFunc];
    const grouped = tf.reshape(input, statsShape);
    const { mean, variance } = tf.moments(grouped, axes, true);
    const rstd = tf.rsqrt(tf.add(variance, eps));
    const normed = tf.reshape(tf.mul(tf.sub(grouped, mean), rstd), x.shape);
    save([normed, rstd]);
    return {
      value: tf.add(tf.mul(normed, scale), shift),
      gradFunc: (dy, [xhat, invStd]) => {
        const g = tf.reshape(tf.mul(dy, scale), statsShape);
        const xh = tf.reshape(xhat!, statsShape);
        const centred = tf.sub(tf.sub(g, tf.mean(g, axes, true)), tf.mul(xh, tf.mean(tf.mul(g, xh), axes, true)));
        return [tf.reshape(tf.mul(centred, invStd!), x.shape), tf.sum(tf.mul(dy, xhat!), outerAxes), tf.sum(dy, outerAxes)];
      },
    };
  });
  return norm(x, weight, bias) as T;
}

export function silu<T extends Tensor>(x: T): T {
  return tf.mul(x, tf.sigmoid(x));
}

/** Exact (erf) GELU, as torch.nn.functional.gelu's default. */
export function gelu<T extends Tensor>(x: T): T {
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));
}
