/**
 * GroupNorm and LayerNorm: the closed-form backward (src/models/layers.ts, normalizeAffine) gives
 * autodiff's gradients of the plain composition, and the forward is bit-identical to it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import type { Tensor, Tensor3D, Tensor4D, Variable } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { GroupNorm, LayerNorm } from '../../src/models/layers.ts';
import { ParamStore } from '../../src/models/params.ts';
import { relErr } from '../numeric.ts';

beforeAll(async () => {
  await initBackend('cpu');
});

/** The composition the layers ran before the closed form: autodiff differentiates it. */
function reference(x: Tensor, statsShape: number[], axes: number[], eps: number, weight: Tensor, bias: Tensor): Tensor {
  const grouped = tf.reshape(x, statsShape);
  const { mean, variance } = tf.moments(grouped, axes, true);
  const normed = tf.mul(tf.sub(grouped, mean), tf.rsqrt(tf.add(variance, eps)));
  return tf.add(tf.mul(tf.reshape(normed, x.shape), weight), bias);
}

function compare(layer: { forward(x: Tensor): Tensor; weight: Variable; bias: Variable }, x: Tensor, statsShape: number[], axes: number[], eps: number) {
  // Non-trivial affine parameters and upstream gradient, so every term of the backward matters.
  layer.weight.assign(tf.randomNormal(layer.weight.shape, 1, 0.5, 'float32', 3));
  layer.bias.assign(tf.randomNormal(layer.bias.shape, 0, 0.5, 'float32', 4));
  const dy = tf.randomNormal(x.shape, 0, 1, 'float32', 5);
  const before = tf.memory().numTensors;
  const run = (f: (x: Tensor, w: Tensor, b: Tensor) => Tensor) =>
    tf.tidy(() => {
      const out = f(x, layer.weight, layer.bias).dataSync() as Float32Array;
      const grads = tf.grads((a: Tensor, w: Tensor, b: Tensor) => tf.sum(tf.mul(f(a, w, b), dy)))([x, layer.weight, layer.bias]);
      return { out, grads: grads.map((g) => g.dataSync() as Float32Array) };
    });
  const ours = run((a) => layer.forward(a));
  const plain = run((a, w, b) => reference(a, statsShape, axes, eps, w, b));
  expect(tf.memory().numTensors).toBe(before);
  dy.dispose();
  expect(Array.from(ours.out)).toEqual(Array.from(plain.out));
  ['x', 'weight', 'bias'].forEach((name, i) => expect(relErr(ours.grads[i]!, plain.grads[i]!), `d${name}`).toBeLessThanOrEqual(1e-5));
}

describe('normalisation layers', () => {
  const store = new ParamStore(0);
  afterAll(() => store.dispose());

  it('GroupNorm (NHWC, 4 groups of 6 channels): same output, same gradients for x, weight and bias', () => {
    const norm = new GroupNorm(store, 'gn', 4, 24, 1e-5);
    const x = tf.randomNormal([3, 5, 4, 24], 0.3, 2, 'float32', 1) as Tensor4D;
    compare(norm as unknown as Parameters<typeof compare>[0], x, [3, 20, 4, 6], [1, 3], 1e-5);
    x.dispose();
  });

  it('LayerNorm over the last axis: same output, same gradients for x, weight and bias', () => {
    const norm = new LayerNorm(store, 'ln', 16, 1e-5);
    const x = tf.randomNormal([2, 7, 16], -0.5, 3, 'float32', 2) as Tensor3D;
    compare(norm as unknown as Parameters<typeof compare>[0], x, [2, 7, 16], [2], 1e-5);
    x.dispose();
  });
});
