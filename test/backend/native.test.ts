/**
 * The optional native backend (@tensorflow/tfjs-node built by `npm run native:build`): a conv +
 * attention model's forward and gradients on it match wasm, and the per-backend gradient choice of
 * src/backend.ts (stock gradients on tensorflow, the project's rewrites elsewhere) is exact both ways.
 *
 * CI has no native build: these tests skip, with the reason, when tfjs-node does not load.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import type { Tensor, Tensor3D, Tensor4D } from '../../src/tf.ts';
import { initBackend, setGradientMode, STOCK_GRADIENT_BACKENDS } from '../../src/backend.ts';
import { relErr } from '../numeric.ts';

let notInstalled: string | undefined;
beforeAll(async () => {
  try {
    await import('@tensorflow/tfjs-node' as string);
  } catch (err) {
    const first = String(err instanceof Error ? err.message : err).split('\n')[0];
    notInstalled = `native backend not installed (npm run native:build -- tensorflow_cpu-*.whl): ${first}`;
    return;
  }
  await initBackend('tensorflow');
  await import('@tensorflow/tfjs-backend-wasm');
});


/**
 * Conv (3x3 'same', then a strided 3x3 padded explicitly or 'same'), multi-head self-attention over the pixels (batched matMul with
 * transposeB), cross-attention to a context, residual, 1x1 conv out. Returns the output and the
 * gradients of sum(out · dy) with respect to the input and every weight.
 */
function convAttention(backend: string, pad: 'same' | 'explicit' = 'explicit'): { out: Float32Array; grads: Float32Array[] } {
  const B = 3, H = 8, C = 16, heads = 2, dh = C / heads, L = 5, Dc = 12;
  const rnd = (shape: number[], seed: number, s = 0.3) => tf.randomNormal(shape, 0, s, 'float32', seed);
  // Same seeds on both backends -> the same values (tfjs' seeded generator runs in JS).
  const x = rnd([B, H, H, 3], 1, 1) as Tensor4D;
  const ctx = rnd([B, L, Dc], 2, 1) as Tensor3D;
  const w = [rnd([3, 3, 3, C], 3), rnd([3, 3, C, C], 4), rnd([C, C], 5), rnd([C, C], 6), rnd([C, C], 7), rnd([C, C], 8), rnd([Dc, C], 9), rnd([Dc, C], 10), rnd([1, 1, C, 4], 11)];
  const dy = rnd([B, H / 2, H / 2, 4], 12, 1);
  const split = (t: Tensor, n: number) => tf.transpose(tf.reshape(t, [B, n, heads, dh]), [0, 2, 1, 3]).reshape([B * heads, n, dh]);
  const merge = (t: Tensor, n: number) => tf.transpose(tf.reshape(t, [B, heads, n, dh]), [0, 2, 1, 3]).reshape([B * n, C]);
  const attend = (q: Tensor, k: Tensor, v: Tensor) => tf.matMul(tf.softmax(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(dh))), v);
  const f = (xi: Tensor, ...p: Tensor[]) => {
    const [c1, c2, wq, wk, wv, wo, cq, cv, c3] = p as [Tensor4D, Tensor4D, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor4D];
    const h = tf.relu(tf.conv2d(tf.relu(tf.conv2d(xi as Tensor4D, c1, 1, 'same')), c2, 2, pad === 'same' ? 'same' : [[0, 0], [1, 1], [1, 1], [0, 0]]));
    const n = (H / 2) * (H / 2);
    const tokens = tf.reshape(h, [B * n, C]);
    const self = merge(attend(split(tf.matMul(tokens, wq), n), split(tf.matMul(tokens, wk), n), split(tf.matMul(tokens, wv), n)), n);
    const ctx2 = tf.reshape(ctx, [B * L, Dc]);
    const cross = merge(attend(split(tf.matMul(self, wo), n), split(tf.matMul(ctx2, cq), L), split(tf.matMul(ctx2, cv), L)), n);
    const out = tf.conv2d(tf.reshape(tf.add(tokens, cross), [B, H / 2, H / 2, C]) as Tensor4D, c3, 1, 'valid');
    return out;
  };
  const out = tf.tidy(() => f(x, ...w).dataSync() as Float32Array);
  const grads = tf.tidy(() => tf.grads((...a: Tensor[]) => tf.sum(tf.mul(f(a[0]!, ...a.slice(1)), dy)))([x, ...w]).map((g) => g.dataSync() as Float32Array));
  tf.dispose([x, ctx, dy, ...w]);
  expect(tf.getBackend()).toBe(backend);
  return { out, grads };
}

async function on<T>(backend: string, run: () => T): Promise<T> {
  await tf.setBackend(backend);
  return run();
}

describe('native tensorflow backend (tfjs-node)', () => {
  for (const pad of ['same', 'explicit'] as const) {
    it(`forward and gradients of a conv + attention model match wasm (rel. error <= 1e-4), ${pad} padding`, async (t) => {
      t.skip(notInstalled !== undefined, notInstalled);
      const native = await on('tensorflow', () => convAttention('tensorflow', pad));
      const wasm = await on('wasm', () => convAttention('wasm', pad));
      expect(relErr(native.out, wasm.out)).toBeLessThanOrEqual(1e-4);
      expect(native.grads.length).toBe(10);
      native.grads.forEach((g, i) => expect(relErr(g, wasm.grads[i]!), `gradient ${i}`).toBeLessThanOrEqual(1e-4));
    });
  }

  it('uses the stock Conv2D/BatchMatMul gradients there, and the project rewrites agree with them', async (t) => {
    t.skip(notInstalled !== undefined, notInstalled);
    expect(STOCK_GRADIENT_BACKENDS.has('tensorflow')).toBe(true);
    try {
      // 'same' padding: tfjs-node's Conv2DBackprop* kernels reject explicit padding, which is why
      // 'auto' keeps the rewrite for explicitly padded convs (covered by the test above).
      setGradientMode('stock');
      const stock = await on('tensorflow', () => convAttention('tensorflow', 'same'));
      setGradientMode('project');
      const project = await on('tensorflow', () => convAttention('tensorflow', 'same'));
      stock.grads.forEach((g, i) => expect(relErr(project.grads[i]!, g), `gradient ${i}`).toBeLessThanOrEqual(1e-4));
    } finally {
      setGradientMode('auto');
    }
  });

  it('leaks no tensors over repeated gradient steps', async (t) => {
    t.skip(notInstalled !== undefined, notInstalled);
    await tf.setBackend('tensorflow');
    convAttention('tensorflow');
    const before = tf.memory().numTensors;
    convAttention('tensorflow');
    convAttention('tensorflow');
    expect(tf.memory().numTensors).toBe(before);
  });

  it('replaces Reshape and Cast with cheaper kernels that give the same tensors and free their data', async (t) => {
    t.skip(notInstalled !== undefined, notInstalled);
    await tf.setBackend('tensorflow');
    const before = tf.memory();
    tf.tidy(() => {
      const x = tf.range(0, 24, 1, 'float32');
      for (let i = 0; i < 2; i++) {
        // the second round reuses the uploaded shapes
        const cube = tf.reshape(x, [2, 3, 4]);
        expect(cube.arraySync()).toEqual(tf.tensor(x.arraySync() as number[], [2, 3, 4]).arraySync());
        const same = tf.reshape(cube, [2, -1, 4]);
        expect(same.dataId).toBe(cube.dataId); // ours: the same shape shares the data (tfjs-node's runs an op)
        expect(same.arraySync()).toEqual(cube.arraySync());
        expect(tf.add(tf.reshape(cube, [2, 3, 4]), 1).arraySync()).toEqual(tf.add(cube, 1).arraySync()); // a consumer of the shared data
        expect(tf.reshape(tf.cast(x, 'int32'), [4, -1]).shape).toEqual([4, 6]);
        expect(tf.reshape(tf.greater(x, 3), [6, 4]).dtype).toBe('bool');
        const asFloat = tf.cast(x, 'float32');
        expect(asFloat.dataId).toBe(x.dataId);
        expect(Array.from(asFloat.dataSync())).toEqual(Array.from(x.dataSync()));
        expect(Array.from(tf.cast(tf.mul(x, 0.5), 'int32').dataSync()).slice(0, 4)).toEqual([0, 0, 1, 1]);
      }
    });
    const after = tf.memory();
    expect(after.numTensors).toBe(before.numTensors);
    expect(after.numBytes).toBe(before.numBytes);
  });

  it("is what 'auto' picks once built", async (t) => {
    t.skip(notInstalled !== undefined, notInstalled);
    const { spawnSync } = await import('node:child_process');
    const r = spawnSync(process.execPath, ['bin/swiftbrush.mjs', 'backend'], { encoding: 'utf8', env: { ...process.env, SWIFTBRUSH_BACKEND: 'auto' } });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.split('\n')[0]).toBe('tensorflow (@tensorflow/tfjs-node)');
  });
});
