import { describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import type { Tensor, Tensor4D, Variable } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { relErr } from '../numeric.ts';


/** Stock-kernel gradients on the cpu backend: the reference the override must reproduce. */
async function stockGrads(x: Tensor4D, w: Tensor4D, dy: Tensor4D, strides: number, pad: number[][]) {
  await tf.setBackend('cpu');
  const [xc, wc, dyc] = [x, w, dy].map((t) => tf.tensor(t.dataSync(), t.shape)) as Tensor4D[];
  const attrs = { strides: [strides, strides], pad, dataFormat: 'NHWC' };
  const dW = tf.engine().runKernel('Conv2DBackpropFilter', { x: xc, dy: dyc }, { ...attrs, filterShape: w.shape } as never) as Tensor;
  const dX = tf.engine().runKernel('Conv2DBackpropInput', { dy: dyc, filter: wc }, { ...attrs, inputShape: x.shape } as never) as Tensor;
  const out = { dW: dW.dataSync() as Float32Array, dX: dX.dataSync() as Float32Array };
  tf.dispose([xc, wc, dyc, dW, dX]);
  return out;
}

describe('Conv2D gradient override', () => {
  for (const backend of ['wasm', 'cpu']) {
    for (const [stride, pad, k] of [[1, 1, 3], [2, 1, 3], [1, 0, 1], [1, 2, 5]] as const) {
      it(`${backend}: stride ${stride}, pad ${pad}, kernel ${k} matches the stock cpu kernels`, async () => {
        await initBackend(backend);
        await tf.setBackend(backend);
        const x = tf.randomNormal([3, 11, 10, 4], 0, 1, 'float32', 7) as Tensor4D;
        const w = tf.randomNormal([k, k, 4, 6], 0, 1, 'float32', 8) as Tensor4D;
        const padding = [[0, 0], [pad, pad], [pad, pad], [0, 0]];
        const y = tf.conv2d(x, w, stride, padding as never);
        const dy = tf.randomNormal(y.shape, 0, 1, 'float32', 9) as Tensor4D;
        // d/dθ sum(conv(x, w) · dy) = the vector-Jacobian product with dy.
        const [gx, gw] = tf.grads((a: Tensor, b: Tensor) => tf.sum(tf.mul(tf.conv2d(a as Tensor4D, b as Tensor4D, stride, padding as never), dy)))([x, w]);
        const got = { dX: gx!.dataSync() as Float32Array, dW: gw!.dataSync() as Float32Array };
        const ref = await stockGrads(x, w, dy, stride, padding);
        await tf.setBackend(backend);
        expect(relErr(got.dW, ref.dW)).toBeLessThan(1e-5);
        expect(relErr(got.dX, ref.dX)).toBeLessThan(1e-5);
        tf.dispose([x, w, y, dy, gx!, gw!]);
      });
    }
  }
});

/** A small conv + self-attention model, trained a few steps with Adam. */
function trainSmallModel(steps: number) {
  const init = (shape: number[], seed: number) => tf.variable(tf.randomNormal(shape, 0, 0.2, 'float32', seed));
  const params: Variable[] = [init([3, 3, 2, 8], 1), init([8, 8], 2), init([8, 8], 3), init([8, 8], 4), init([1, 1, 8, 2], 5)];
  const [conv1, wq, wk, wv, conv2] = params as [Variable, Variable, Variable, Variable, Variable];
  const x = tf.randomNormal([2, 6, 6, 2], 0, 1, 'float32', 10) as Tensor4D;
  const target = tf.randomNormal([2, 6, 6, 2], 0, 1, 'float32', 11);
  const optimizer = tf.train.adam(1e-2);
  const firstGrads: Float32Array[] = [];
  const counts: number[] = [];
  for (let step = 0; step < steps; step++) {
    const { value, grads } = tf.variableGrads(() =>
      tf.tidy(() => {
        const h = tf.relu(tf.conv2d(x, conv1 as Tensor4D, 1, 'same')); // [2,6,6,8]
        const tokens = tf.reshape(h, [2 * 36, 8]);
        const q = tf.reshape(tf.matMul(tokens, wq), [2, 36, 8]);
        const k = tf.reshape(tf.matMul(tokens, wk), [2, 36, 8]);
        const v = tf.reshape(tf.matMul(tokens, wv), [2, 36, 8]);
        const attn = tf.softmax(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(8)));
        const a = tf.reshape(tf.matMul(attn, v), [2, 6, 6, 8]);
        const out = tf.conv2d(tf.add(h, a) as Tensor4D, conv2 as Tensor4D, 1, 'valid');
        return tf.mean(tf.square(tf.sub(out, target))) as tf.Scalar;
      }),
    );
    if (step === 0) for (const p of params) firstGrads.push(grads[p.name]!.dataSync() as Float32Array);
    optimizer.applyGradients(grads as tf.NamedTensorMap as never);
    tf.dispose([value, ...Object.values(grads)]);
    counts.push(tf.memory().numTensors);
  }
  const final = params.map((p) => p.dataSync() as Float32Array);
  tf.dispose([...params, x, target]);
  optimizer.dispose();
  return { firstGrads, final, counts };
}

describe('training a conv + attention model', () => {
  it('gives the same gradients and weights on wasm and cpu, with no tensor growth', async () => {
    await initBackend('wasm');
    await tf.setBackend('wasm');
    const wasm = trainSmallModel(6);
    await tf.setBackend('cpu');
    const cpu = trainSmallModel(6);
    for (let i = 0; i < wasm.firstGrads.length; i++) expect(relErr(wasm.firstGrads[i]!, cpu.firstGrads[i]!)).toBeLessThan(1e-4);
    for (let i = 0; i < wasm.final.length; i++) expect(relErr(wasm.final[i]!, cpu.final[i]!)).toBeLessThan(1e-4);
    // After the first step (which creates the optimiser's moments) the count stays flat.
    for (const run of [wasm, cpu]) expect(new Set(run.counts.slice(1)).size).toBe(1);
  });
});
