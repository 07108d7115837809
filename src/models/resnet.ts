/** ResnetBlock2D, Downsample2D and Upsample2D as diffusers defines them (NHWC here). */
import { tf } from '../tf.ts';
import type { Tensor2D, Tensor3D, Tensor4D } from '../tf.ts';
import type { ParamStore } from './params.ts';
import { Conv2d, GroupNorm, Linear, silu } from './layers.ts';

export class ResnetBlock2D {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly time_emb_proj: Linear;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  readonly conv_shortcut: Conv2d | null;

  constructor(store: ParamStore, name: string, opts: { inChannels: number; outChannels: number; tembChannels: number; groups: number; eps: number; outputScaleFactor: number }) {
    const { inChannels, outChannels } = opts;
    this.norm1 = new GroupNorm(store, `${name}.norm1`, opts.groups, inChannels, opts.eps);
    this.conv1 = new Conv2d(store, `${name}.conv1`, inChannels, outChannels, 3, 1, 1);
    this.time_emb_proj = new Linear(store, `${name}.time_emb_proj`, opts.tembChannels, outChannels);
    this.norm2 = new GroupNorm(store, `${name}.norm2`, opts.groups, outChannels, opts.eps);
    this.conv2 = new Conv2d(store, `${name}.conv2`, outChannels, outChannels, 3, 1, 1);
    this.conv_shortcut = inChannels !== outChannels ? new Conv2d(store, `${name}.conv_shortcut`, inChannels, outChannels, 1) : null;
    this.outputScaleFactor = opts.outputScaleFactor;
  }

  private readonly outputScaleFactor: number;

  /**
   * In its own tf.tidy: intermediates no gradient saved are freed when the block returns, not when
   * the whole UNet pass ends (a gradient tape keeps what its backward needs regardless).
   */
  forward(x: Tensor4D, temb: Tensor2D): Tensor4D {
    return tf.tidy(() => {
      let h = this.conv1.forward(silu(this.norm1.forward(x)));
      const t = this.time_emb_proj.forward(silu(temb));
      h = tf.add(h, tf.reshape(t, [t.shape[0], 1, 1, t.shape[1]]));
      h = this.conv2.forward(silu(this.norm2.forward(h)));
      const shortcut = this.conv_shortcut ? this.conv_shortcut.forward(x) : x;
      const out: Tensor4D = tf.add(shortcut, h);
      return this.outputScaleFactor === 1 ? out : tf.div(out, this.outputScaleFactor);
    });
  }
}

export class Downsample2D {
  readonly conv: Conv2d;

  constructor(store: ParamStore, name: string, channels: number, padding: number) {
    // diffusers pads (0,1,0,1) itself when padding is 0.
    this.conv = new Conv2d(store, `${name}.conv`, channels, channels, 3, 2, padding === 0 ? [0, 1, 0, 1] : padding);
  }

  forward(x: Tensor4D): Tensor4D {
    return this.conv.forward(x);
  }
}

/** Nearest-neighbour ×2 along one axis, by broadcasting (no gather: wasm lacks its gradient). */
function repeatTwice(x: Tensor4D, axis: 1 | 2): Tensor4D {
  const [b, h, w, c] = x.shape;
  const outer = axis === 1 ? b * h : b * h * w;
  const inner = axis === 1 ? w * c : c;
  const flat = tf.reshape(x, [outer, 1, inner]) as Tensor3D;
  const doubled = tf.concat([flat, flat], 1);
  return tf.reshape(doubled, axis === 1 ? [b, 2 * h, w, c] : [b, h, 2 * w, c]);
}

export class Upsample2D {
  readonly conv: Conv2d;

  constructor(store: ParamStore, name: string, channels: number) {
    this.conv = new Conv2d(store, `${name}.conv`, channels, channels, 3, 1, 1);
  }

  /** F.interpolate(mode="nearest") to `size` (default ×2), then a 3x3 conv. */
  forward(x: Tensor4D, size?: [number, number]): Tensor4D {
    const [, h, w] = x.shape;
    const [th, tw] = size ?? [2 * h, 2 * w];
    const up =
      th === 2 * h && tw === 2 * w
        ? repeatTwice(repeatTwice(x, 1), 2)
        : tf.image.resizeNearestNeighbor(x, [th, tw], false, false); // floor(i·in/out), as PyTorch's "nearest"
    return this.conv.forward(up);
  }
}
