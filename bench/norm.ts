/**
 * GroupNorm forward+backward: the closed-form backward of src/models/layers.ts vs autodiff of the
 * plain composition, on UNet-like NHWC shapes, interleaved, median of 15.
 *
 *   node --import tsx bench/norm.ts [--backend wasm|tensorflow|cpu]
 */
import { tf } from '../src/tf.ts';
import type { Tensor } from '../src/tf.ts';
import { initBackend } from '../src/backend.ts';
import { GroupNorm } from '../src/models/layers.ts';
import { ParamStore } from '../src/models/params.ts';
import { flags, median } from './common.ts';
const o = flags<{ backend: string }>('norm', "GroupNorm forward+backward: closed form vs autodiff", (p) => p.option('--backend <name>', 'tfjs backend', 'wasm'));
await initBackend(o.backend);
const store = new ParamStore(0);
const shapes = [[8, 16, 16, 32], [8, 8, 8, 64], [16, 28, 28, 32], [16, 14, 14, 64]];
function reference(x: Tensor, statsShape: number[], axes: number[], eps: number, weight: Tensor, bias: Tensor): Tensor {
  const grouped = tf.reshape(x, statsShape);
  const { mean, variance } = tf.moments(grouped, axes, true);
  const normed = tf.mul(tf.sub(grouped, mean), tf.rsqrt(tf.add(variance, eps)));
  return tf.add(tf.mul(tf.reshape(normed, x.shape), weight), bias);
}
for (const [i, sh] of shapes.entries()) {
  const [b, h, w, c] = sh as [number, number, number, number];
  const gn = new GroupNorm(store, `gn${i}`, 32, c, 1e-5);
  const x = tf.variable(tf.randomNormal(sh));
  const dy = tf.randomNormal(sh);
  const vars = [x, gn.weight, gn.bias];
  const run = (f: () => Tensor) => { const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(f(), dy)) as tf.Scalar, vars as tf.Variable[]); value.dataSync(); tf.dispose([value, ...Object.values(grads)]); };
  const ours = () => run(() => gn.forward(x as unknown as tf.Tensor4D));
  const plain = () => run(() => reference(x, [b, h * w, 32, c / 32], [1, 3], 1e-5, gn.weight, gn.bias));
  ours(); plain();
  const T = { ours: [] as number[], plain: [] as number[] };
  for (let r = 0; r < 15; r++) for (const [n, f] of [['ours', ours], ['plain', plain]] as const) { const t0 = performance.now(); f(); T[n].push(performance.now() - t0); }
  console.log(`[${sh}] closed ${median(T.ours).toFixed(2)} ms, autodiff ${median(T.plain).toFixed(2)} ms`);
}
