/**
 * Conv2D's gradient computed with FORWARD convolutions.
 *
 * tfjs-backend-wasm 4.22 has no `Conv2DBackpropFilter` kernel (training a conv net there fails with
 * "Kernel 'Conv2DBackpropFilter' not registered"), its `Conv2DBackpropInput` is ~6x slower than its
 * Conv2D, and the pure-JS cpu backend's stock filter gradient is ~13x slower than a forward conv.
 * Both gradients are convolutions in disguise:
 *
 * - dW[i,j,ci,co] = Σ_{b,y,x} xpad[b, y·s + i·d, x·s + j·d, ci] · dy[b,y,x,co]: a convolution whose
 *   "batch" is ci, whose "channels" are b, with dy as the filter, stride d and dilation s.
 * - dx (stride 1, dilation 1) = conv(dy, W flipped in space with in/out swapped), padded by k-1-p.
 *
 * Strided or dilated input gradients fall back to the backend's own Conv2DBackpropInput (it exists
 * on every backend; only downsampling convs use it). It is exact on every backend
 * (test/models/conv_grad.test.ts checks it against the cpu backend's stock kernels); src/backend.ts
 * uses it on wasm and cpu, and the faster stock gradient on the native tensorflow backend.
 */
import { tf } from '../tf.ts';
import type { Tensor4D } from '../tf.ts';

type Pad4 = [number, number, number, number]; // top, bottom, left, right
type PadAttr = 'valid' | 'same' | number | number[][];

function pair(v: number | number[] | undefined): [number, number] {
  if (v === undefined) return [1, 1];
  return typeof v === 'number' ? [v, v] : [v[0]!, v[1]!];
}

/** Resolves tfjs' padding attribute to explicit [top, bottom, left, right], as conv_util does. */
export function explicitPadding(pad: PadAttr, inH: number, inW: number, kh: number, kw: number, strides: [number, number], dilations: [number, number]): Pad4 {
  if (Array.isArray(pad)) return [pad[1]![0]!, pad[1]![1]!, pad[2]![0]!, pad[2]![1]!];
  if (typeof pad === 'number') return [pad, pad, pad, pad];
  if (pad === 'valid') return [0, 0, 0, 0];
  const ekh = (kh - 1) * dilations[0] + 1;
  const ekw = (kw - 1) * dilations[1] + 1;
  const outH = Math.ceil(inH / strides[0]);
  const outW = Math.ceil(inW / strides[1]);
  const padH = Math.max(0, (outH - 1) * strides[0] + ekh - inH);
  const padW = Math.max(0, (outW - 1) * strides[1] + ekw - inW);
  const top = Math.floor(padH / 2);
  const left = Math.floor(padW / 2);
  return [top, padH - top, left, padW - left];
}

/** dW via a forward convolution (see file comment). */
export function conv2dFilterGrad(x: Tensor4D, dy: Tensor4D, filterShape: number[], strides: [number, number], dilations: [number, number], pads: Pad4): Tensor4D {
  return tf.tidy(() => {
    const [kh, kw] = filterShape as [number, number];
    const xp = pads.some((p) => p !== 0) ? tf.pad(x, [[0, 0], [pads[0], pads[1]], [pads[2], pads[3]], [0, 0]]) : x;
    const xT = tf.transpose(xp, [3, 1, 2, 0]) as Tensor4D; // [ci, Hp, Wp, b]
    const dyT = tf.transpose(dy, [1, 2, 0, 3]) as Tensor4D; // [oh, ow, b, co]
    const r = tf.conv2d(xT, dyT, dilations, 'valid', 'NHWC', strides); // [ci, >=kh, >=kw, co]
    const cropped = r.shape[1] === kh && r.shape[2] === kw ? r : tf.slice(r, [0, 0, 0, 0], [-1, kh, kw, -1]);
    return tf.transpose(cropped, [1, 2, 0, 3]) as Tensor4D; // [kh, kw, ci, co]
  });
}

/** dx via a forward convolution for stride 1 / dilation 1 (see file comment). */
export function conv2dInputGrad(dy: Tensor4D, filter: Tensor4D, pads: Pad4): Tensor4D {
  return tf.tidy(() => {
    const [kh, kw] = filter.shape;
    const flipped = tf.transpose(tf.reverse(filter, [0, 1]), [0, 1, 3, 2]) as Tensor4D;
    const pad = [[0, 0], [kh - 1 - pads[0], kh - 1 - pads[1]], [kw - 1 - pads[2], kw - 1 - pads[3]], [0, 0]];
    return tf.conv2d(dy, flipped, 1, pad as never);
  });
}

/**
 * dx for strided (or otherwise unfit) convs: the backend's transposed conv. With explicit padding it
 * runs 'valid' on the padded shape and crops, because tfjs-node's Conv2DBackpropInput accepts only
 * 'valid' / 'same' (the gradient of a pad is a slice, so this is exact).
 */
function stridedInputGrad(dy: Tensor4D, filter: Tensor4D, xShape: [number, number, number, number], strides: [number, number], pad: PadAttr, pads: Pad4): Tensor4D {
  if (typeof pad === 'string' || pads.every((p) => p === 0)) return tf.conv2dTranspose(dy, filter, xShape, strides, typeof pad === 'string' ? pad : 'valid');
  return tf.tidy(() => {
    const padded: [number, number, number, number] = [xShape[0], xShape[1] + pads[0] + pads[1], xShape[2] + pads[2] + pads[3], xShape[3]];
    return tf.slice(tf.conv2dTranspose(dy, filter, padded, strides, 'valid'), [0, pads[0], pads[2], 0], xShape);
  });
}

let registered = false;

export function registerConvGradients(): void {
  if (registered) return;
  registered = true;
  const quiet = console.warn;
  console.warn = () => {}; // tfjs warns "Overriding the gradient for 'Conv2D'": intended here.
  try {
    tf.registerGradient({
      kernelName: 'Conv2D',
      inputsToSave: ['x', 'filter'],
      gradFunc: (dy, saved, attrs) => {
        const [x, filter] = saved as [Tensor4D, Tensor4D];
        const a = attrs as unknown as { strides: number | number[]; pad: PadAttr; dilations?: number | number[]; dataFormat?: string; dimRoundingMode?: 'floor' | 'round' | 'ceil' };
        if (a.dataFormat && a.dataFormat !== 'NHWC') throw new Error(`Conv2D gradient: dataFormat ${a.dataFormat} is not supported (use NHWC)`);
        if (a.dimRoundingMode) throw new Error('Conv2D gradient: dimRoundingMode is not supported');
        const strides = pair(a.strides);
        const dilations = pair(a.dilations);
        const pads = explicitPadding(a.pad, x.shape[1], x.shape[2], filter.shape[0], filter.shape[1], strides, dilations);
        const unitStride = strides[0] === 1 && strides[1] === 1;
        const unitDilation = dilations[0] === 1 && dilations[1] === 1;
        const padFits = pads[0] < filter.shape[0] && pads[1] < filter.shape[0] && pads[2] < filter.shape[1] && pads[3] < filter.shape[1];
        return {
          x: () =>
            unitStride && unitDilation && padFits
              ? conv2dInputGrad(dy as Tensor4D, filter, pads)
              : stridedInputGrad(dy as Tensor4D, filter, x.shape, strides, a.pad, pads),
          filter: () => {
            if (unitStride || unitDilation) return conv2dFilterGrad(x, dy as Tensor4D, filter.shape, strides, dilations, pads);
            throw new Error('Conv2D gradient: strides > 1 together with dilations > 1 are not supported');
          },
        };
      },
    });
  } finally {
    console.warn = quiet;
  }
}
