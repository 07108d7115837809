/**
 * Kernel profile of one UNet forward and forward+backward (tf.profile): time per kernel name and
 * per (kernel, input shapes), top entries. For finding where a distillation step goes.
 *
 *   node --import tsx bench/profile.ts [--unet DIR | --teacher-config] [--batch 8] [--backend wasm] [--top 25]
 */
import { tf } from '../src/tf.ts';
import type { Tensor3D, Tensor4D } from '../src/tf.ts';
import { initBackend } from '../src/backend.ts';
import { UNet2DConditionModel } from '../src/models/unet_2d_condition.ts';
import { TEACHER_UNET_CONFIG } from '../src/mnist/teacher.ts';
import { FIXTURE_UNET, flags, int } from './common.ts';

const o = flags<{ unet: string; teacherConfig?: boolean; batch: number; backend: string; top: number }>('profile', 'kernel profile of one UNet forward and forward+backward', (p) =>
  p
    .option('--unet <dir>', 'UNet folder', FIXTURE_UNET)
    .option('--teacher-config', "the default teacher's UNet config (random weights) instead of --unet")
    .option('--batch <n>', 'batch size', int(1), 8)
    .option('--backend <name>', 'tfjs backend', 'wasm')
    .option('--top <n>', 'entries listed', int(1), 25),
);
await initBackend(o.backend);
const { batch, top } = o;
const unet = o.teacherConfig
  ? UNet2DConditionModel.fromConfig(TEACHER_UNET_CONFIG, { seed: 1 })
  : await UNet2DConditionModel.fromPretrained(o.unet, { trainable: true });
const c = unet.config;
const D = Array.isArray(c.cross_attention_dim) ? c.cross_attention_dim[0]! : c.cross_attention_dim;
const size = c.sample_size as number;
const x = tf.randomNormal([batch, size, size, c.in_channels], 0, 1, 'float32', 1) as Tensor4D;
const ctx = tf.randomNormal([batch, 8, D], 0, 1, 'float32', 2) as Tensor3D;
const ts = Array.from({ length: batch }, (_, i) => 999 - ((i * 997) % 1000));
const vars = unet.parameters();
const fwd = () => tf.tidy(() => unet.forward(x, ts, ctx).dataSync());
const fb = () => {
  const { value, grads } = tf.variableGrads(() => tf.sum(unet.forward(x, ts, ctx)) as tf.Scalar, vars);
  value.dataSync();
  tf.dispose([value, ...Object.values(grads)]);
};
for (const [name, f] of [['forward', fwd], ['forward+backward', fb]] as const) {
  f();
  const t0 = performance.now();
  const info = await tf.profile(f);
  const wall = performance.now() - t0;
  const byName = new Map<string, number>();
  const byShape = new Map<string, { ms: number; n: number }>();
  let total = 0;
  for (const k of info.kernels) {
    const ms = k.kernelTimeMs as number;
    total += ms;
    byName.set(k.name, (byName.get(k.name) ?? 0) + ms);
    const key = `${k.name} ${k.inputShapes.map((s) => `[${s}]`).join(' ')}`;
    const e = byShape.get(key) ?? { ms: 0, n: 0 };
    e.ms += ms;
    e.n += 1;
    byShape.set(key, e);
  }
  console.log(`\n== ${name}: ${info.kernels.length} kernels, kernel sum ${total.toFixed(1)} ms, wall ${wall.toFixed(1)} ms (profiled)`);
  for (const [k, ms] of [...byName].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`${ms.toFixed(1).padStart(8)} ms ${(100 * ms / total).toFixed(1).padStart(5)}%  ${k}`);
  console.log('-- by shape');
  for (const [k, e] of [...byShape].sort((a, b) => b[1].ms - a[1].ms).slice(0, top)) console.log(`${e.ms.toFixed(1).padStart(8)} ms  x${String(e.n).padEnd(3)} ${k}`);
}
