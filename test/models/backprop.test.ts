/**
 * backprop.variableGrads: bitwise tf.variableGrads' gradients on the diffusers UNet fixture (all its
 * kernels, custom gradients included), no tensors left behind, and memory freed during the walk
 * (what tfjs' own walk keeps until the end).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import type { Tensor, Tensor3D, Tensor4D, Variable } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { UNet2DConditionModel } from '../../src/models/unet_2d_condition.ts';
import { variableGrads } from '../../src/models/backprop.ts';
import { UNET_FIXTURE_DIR } from '../fixtures.ts';

beforeAll(async () => {
  await initBackend(process.env.SWIFTBRUSH_BACKEND ?? 'wasm');
});

type Grads = (f: () => tf.Scalar, vars: Variable[]) => { value: tf.Scalar; grads: Record<string, Tensor> };

function valuesOf(result: { value: tf.Scalar; grads: Record<string, Tensor> }): { value: number; grads: Map<string, Float32Array> } {
  const out = { value: result.value.dataSync()[0]!, grads: new Map(Object.entries(result.grads).map(([k, g]) => [k, g.dataSync() as Float32Array])) };
  result.value.dispose();
  for (const g of Object.values(result.grads)) g.dispose();
  return out;
}

describe('variableGrads', () => {
  it('equals tf.variableGrads bitwise on the UNet fixture and leaves no tensors', async () => {
    const unet = await UNet2DConditionModel.fromPretrained(UNET_FIXTURE_DIR, { trainable: true });
    const c = unet.config;
    const D = Array.isArray(c.cross_attention_dim) ? c.cross_attention_dim[0]! : c.cross_attention_dim;
    const x = tf.randomNormal([2, 8, 8, c.in_channels], 0, 1, 'float32', 3) as Tensor4D;
    const ctx = tf.randomNormal([2, 5, D], 0, 1, 'float32', 4) as Tensor3D;
    const target = tf.randomNormal([2, 8, 8, c.out_channels], 0, 1, 'float32', 5) as Tensor4D;
    const vars = [...unet.store.named().values()];
    // The input x is a variable too: its gradient flows through every layer.
    const xVar = tf.variable(x, true, 'backprop-test-x');
    const loss = () => tf.losses.meanSquaredError(target, unet.forward(xVar as unknown as Tensor4D, [999, 500], ctx)) as tf.Scalar;
    const run = (grads: Grads) => {
      const before = tf.memory().numTensors;
      const result = valuesOf(grads(loss, [...vars, xVar]));
      expect(tf.memory().numTensors).toBe(before);
      return result;
    };
    const ours = run(variableGrads);
    const theirs = run(tf.variableGrads as Grads);
    expect(ours.value).toBe(theirs.value);
    expect([...ours.grads.keys()].sort()).toEqual([...theirs.grads.keys()].sort());
    expect(ours.grads.size).toBe(vars.length + 1);
    for (const [name, g] of theirs.grads) expect(Buffer.from(ours.grads.get(name)!.buffer).equals(Buffer.from(g.buffer)), name).toBe(true);
    tf.dispose([x, ctx, target, xVar]);
    unet.dispose();
  });

  it('frees each gradient and saved tensor once the walk has passed it', () => {
    // y = Σ probe(f(f(…f(w)))) over 40 ops on a 1 MB tensor. `probe` is the identity whose gradient
    // records the live bytes when the walk reaches it, i.e. after every other op has been walked.
    const w = tf.variable(tf.randomNormal([256, 1024], 0, 1, 'float32', 1), true, 'backprop-test-w');
    const bytes = 256 * 1024 * 4;
    let liveAtProbe = 0;
    const probe = tf.customGrad((...args: (Tensor | tf.GradSaveFunc)[]) => ({
      value: tf.clone(args[0] as Tensor),
      gradFunc: (dy: Tensor) => ((liveAtProbe = tf.memory().numBytes), tf.clone(dy)),
    })) as (a: Tensor) => Tensor;
    const chain = () => {
      let h: Tensor = probe(w);
      for (let i = 0; i < 40; i++) h = tf.tanh(tf.mul(h, 1.01));
      return tf.sum(h) as tf.Scalar;
    };
    const liveAt = (grads: Grads) => {
      const base = tf.memory().numBytes;
      const { value, grads: g } = grads(chain, [w]);
      tf.dispose([value, ...Object.values(g)]);
      return liveAtProbe - base;
    };
    const ours = liveAt(variableGrads);
    const theirs = liveAt(tf.variableGrads as Grads);
    // tfjs keeps ~40 saved activations and ~80 intermediate gradients alive there; ours a handful.
    expect(theirs).toBeGreaterThan(60 * bytes);
    expect(ours).toBeLessThan(6 * bytes);
    w.dispose();
  });

  it('refuses a non-scalar f and variables that f does not use, by name', () => {
    const w = tf.variable(tf.ones([3]), true, 'backprop-test-v');
    const unused = tf.variable(tf.ones([3]), true, 'backprop-test-unused');
    const before = tf.memory().numTensors;
    expect(() => variableGrads(() => tf.mul(w, 2) as unknown as tf.Scalar, [w])).toThrow(/scalar.*rank 1/);
    expect(() => variableGrads(() => tf.sum(tf.mul(w, 2)) as tf.Scalar, [unused])).toThrow(/does not depend on any of the variables/);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([w, unused]);
  });
});
