import { describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import type { Tensor, Variable } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { Adam, EmaWeights, GradAccumulator } from '../../src/models/optim.ts';

/** torch.optim.Adam, one tensor at a time (the per-parameter formulation the flat Adam replaces). */
function referenceAdam(params: Map<string, Tensor>, gradsPerStep: Map<string, Tensor>[], lr: number, wd: number) {
  const state = new Map([...params].map(([k, p]) => [k, { p: p.dataSync().slice() as Float32Array, m: tf.zerosLike(p), v: tf.zerosLike(p), t: tf.clone(p) }]));
  gradsPerStep.forEach((grads, i) => {
    const step = i + 1;
    const [b1, b2, eps] = [0.9, 0.999, 1e-8];
    for (const [k, s] of state) {
      let g = grads.get(k);
      if (!g) continue;
      const next = tf.tidy(() => {
        if (wd) g = tf.add(g!, tf.mul(s.t, wd));
        const m = tf.add(tf.mul(s.m, b1), tf.mul(g!, 1 - b1));
        const v = tf.add(tf.mul(s.v, b2), tf.mul(tf.square(g!), 1 - b2));
        const denom = tf.add(tf.div(tf.sqrt(v), Math.sqrt(1 - b2 ** step)), eps);
        return [m, v, tf.sub(s.t, tf.mul(tf.div(m, denom), lr / (1 - b1 ** step)))];
      });
      tf.dispose([s.m, s.v, s.t]);
      [s.m, s.v, s.t] = next as [Tensor, Tensor, Tensor];
    }
  });
  return state;
}

describe('flat Adam', () => {
  // One bucket holding every parameter, and buckets of at most 20 values (a: 180 values alone; b and c apart).
  for (const [backend, bucketValues] of [['wasm', undefined], ['cpu', undefined], ['wasm', 20]] as const) {
    it(`${backend}${bucketValues ? `, buckets of ${bucketValues} values` : ''}: bit-identical to the per-tensor update, skips missing gradients, state round trip`, async () => {
      await initBackend(backend);
      await tf.setBackend(backend);
      const shapes: Record<string, number[]> = { a: [3, 3, 4, 5], b: [5], c: [7, 2] };
      const params = new Map(Object.entries(shapes).map(([k, s], i) => [k, tf.variable(tf.randomNormal(s, 0, 1, 'float32', i + 1), true, `optim-${backend}-${bucketValues}-${k}`)]));
      const start = new Map([...params].map(([k, p]) => [k, tf.clone(p)]));
      const steps = [0, 1, 2].map((i) => new Map(Object.entries(shapes).filter(([k]) => !(i === 1 && k === 'b')).map(([k, s], j) => [k, tf.randomNormal(s, 0, 1, 'float32', 10 * i + j)])));
      const adam = new Adam(params, { lr: 1e-2, weightDecay: 0.1 }, bucketValues);
      const tensorsBefore = tf.memory().numTensors;
      for (const g of steps) adam.apply(g);
      expect(tf.memory().numTensors, 'tensors left by the updates').toBe(tensorsBefore);
      const refParams = new Map([...start].map(([k, t]) => [k, tf.variable(t, false, `optim-ref-${backend}-${bucketValues}-${k}`)]));
      const ref = referenceAdam(refParams, steps, 1e-2, 0.1);
      for (const [k, p] of params) expect(Array.from(p.dataSync())).toEqual(Array.from(ref.get(k)!.t.dataSync()));
      const saved = adam.stateTensors();
      expect(Array.from(saved['b.exp_avg']!.data)).toEqual(Array.from(ref.get('b')!.m.dataSync()));
      expect(saved['a.exp_avg_sq']!.shape).toEqual([3, 3, 4, 5]);
      const other = new Adam(params, { lr: 1e-2 }, bucketValues);
      other.loadState(adam.step, new Map(Object.entries(saved)));
      expect(other.stateTensors()).toEqual(saved);
      tf.dispose([...params.values(), ...start.values(), ...refParams.values(), ...steps.flatMap((m) => [...m.values()]), ...[...ref.values()].flatMap((s) => [s.m, s.v, s.t])]);
      adam.dispose();
      other.dispose();
    });
  }

  it('apply(grads, s) equals apply(grads · s): the clipping coefficient is folded into the update bit for bit', async () => {
    await initBackend('wasm');
    const shapes: Record<string, number[]> = { a: [4, 6], b: [5] };
    const make = (tag: string) => new Map(Object.entries(shapes).map(([k, s], i) => [k, tf.variable(tf.randomNormal(s, 0, 1, 'float32', i + 1), true, `optim-scale-${tag}-${k}`)]));
    const folded = make('folded');
    const copied = make('copied');
    const grads = new Map(Object.entries(shapes).map(([k, s], i) => [k, tf.randomNormal(s, 0, 3, 'float32', 20 + i)]));
    const scale = 0.1234567;
    const a = new Adam(folded, { lr: 1e-2 });
    const b = new Adam(copied, { lr: 1e-2 });
    for (let i = 0; i < 2; i++) {
      a.apply(grads, scale);
      const scaled = new Map([...grads].map(([k, g]) => [k, tf.mul(g, scale)]));
      b.apply(scaled);
      tf.dispose([...scaled.values()]);
    }
    for (const k of Object.keys(shapes)) expect(Array.from(folded.get(k)!.dataSync())).toEqual(Array.from(copied.get(k)!.dataSync()));
    tf.dispose([...folded.values(), ...copied.values(), ...grads.values()]);
    a.dispose();
    b.dispose();
  });

  it('Adam moments and EMA shadows hold one buffer each: no initial tensor is left behind', async () => {
    await initBackend('wasm');
    const params = new Map([['a', tf.variable(tf.ones([64]), true, 'optim-own-a')], ['b', tf.variable(tf.ones([8, 8]), true, 'optim-own-b')]]);
    const before = tf.memory();
    const adam = new Adam(params, { lr: 1e-3 }, 64); // two buckets: two moments each
    const ema = new EmaWeights(params, 0.9);
    expect(tf.memory().numTensors - before.numTensors).toBe(4 + 2);
    // Moments: 2 × 128 values; EMA shadows share the parameters' data until their first update.
    expect(tf.memory().numBytes - before.numBytes).toBe((2 * 128 + 128) * 4);
    adam.dispose();
    ema.dispose();
    tf.dispose([...params.values()]);
  });

  it('GradAccumulator.addOwned takes ownership and sums like add', async () => {
    await initBackend('wasm');
    const before = tf.memory().numTensors;
    const acc = new GradAccumulator();
    acc.addOwned(new Map([['w', tf.tensor1d([1, 2])]]), 1);
    acc.addOwned(new Map([['w', tf.tensor1d([3, 4])]]), 0.5);
    const out = acc.take();
    expect(Array.from(out.get('w')!.dataSync())).toEqual([2.5, 4]);
    tf.dispose([...out.values()]);
    expect(tf.memory().numTensors).toBe(before);
  });
});
