/**
 * UNet forward and forward+backward time per backend: the fixture UNet
 * (test/fixtures/diffusers-tiny-unet, 4x16x16) at batch 8, median of --reps timed runs after
 * --warmup untimed ones. Compares the native tensorflow backend (npm run native:build) with wasm,
 * and the project's Conv2D/BatchMatMul gradient rewrites with the stock gradients.
 *
 * All configurations run in ONE process, interleaved rep by rep (A B C A B C ...), so that load
 * from other processes on the machine hits them alike. After each backend switch one untimed pass
 * moves the weights to that backend. Also reports process CPU time per run (all threads).
 *
 *   node --import tsx bench/native.ts [--configs wasm:auto,tensorflow:auto,tensorflow:project]
 *        [--batch 8] [--tokens 16] [--reps 7] [--warmup 2] [--unet DIR] [--json]
 *
 * --grads per config: auto (src/backend.ts' per-backend choice), project (the rewrites), stock.
 */
import { availableParallelism, loadavg } from 'node:os';
import { tf } from '../src/tf.ts';
import type { Tensor3D, Tensor4D } from '../src/tf.ts';
import { initBackend, setGradientMode, type GradientMode } from '../src/backend.ts';
import { UNet2DConditionModel } from '../src/models/unet_2d_condition.ts';
import { FIXTURE_UNET, flags, int, median } from './common.ts';

const o = flags<{ configs: string; batch: number; tokens: number; reps: number; warmup: number; unet: string; json?: boolean }>('native', 'UNet forward and forward+backward per backend and gradient choice, interleaved', (p) =>
  p
    .option('--configs <list>', 'backend:grads,… (grads: auto, project, stock)', 'wasm:auto,tensorflow:auto,tensorflow:project')
    .option('--batch <n>', 'batch size', int(1), 8)
    .option('--tokens <n>', 'context tokens', int(1), 16)
    .option('--reps <n>', 'timed runs per configuration', int(1), 7)
    .option('--warmup <n>', 'untimed runs first', int(0), 2)
    .option('--unet <dir>', 'UNet folder', FIXTURE_UNET)
    .option('--json', 'print one JSON object'),
);
const configs = o.configs.split(',').map((c) => {
  const [backend, grads = 'auto'] = c.split(':');
  return { backend: backend!, grads: grads as GradientMode };
});
const { batch, tokens, reps, warmup } = o;
const dir = o.unet;


const providers = new Map<string, string>();
for (const b of new Set(configs.map((c) => c.backend))) {
  const choice = await initBackend(b);
  providers.set(choice.backend, choice.provider);
}
const unet = await UNet2DConditionModel.fromPretrained(dir, { trainable: true });
const c = unet.config;
const D = Array.isArray(c.cross_attention_dim) ? c.cross_attention_dim[0]! : c.cross_attention_dim;
const size = c.sample_size ?? 16;
const x = tf.randomNormal([batch, size, size, c.in_channels], 0, 1, 'float32', 1) as Tensor4D;
const ctx = tf.randomNormal([batch, tokens, D], 0, 1, 'float32', 2) as Tensor3D;
const target = tf.randomNormal(x.shape, 0, 1, 'float32', 3);
const timesteps = Array.from({ length: batch }, (_, i) => 999 - ((i * 997) % 1000));
const vars = unet.parameters();

type Sample = { wall: number; cpu: number };
function timed(f: () => void): Sample {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  f();
  const wall = performance.now() - t0;
  const cu = process.cpuUsage(c0);
  return { wall, cpu: (cu.user + cu.system) / 1000 };
}
const forward = () => tf.tidy(() => void unet.forward(x, timesteps, ctx).dataSync());
function forwardBackward(): void {
  const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.mean(tf.square(tf.sub(unet.forward(x, timesteps, ctx), target))) as tf.Scalar), vars);
  value.dataSync();
  for (const v of Object.values(grads)) v.dataSync();
  tf.dispose([value, ...Object.values(grads)]);
}

const samples = configs.map(() => ({ fwd: [] as Sample[], fb: [] as Sample[] }));
let active = '';
for (let rep = -warmup; rep < reps; rep++) {
  for (const [i, cfg] of configs.entries()) {
    if (active !== cfg.backend) {
      await tf.setBackend(cfg.backend);
      active = cfg.backend;
      forwardBackward(); // moves weights and inputs to this backend; untimed
    }
    setGradientMode(cfg.grads);
    const f = timed(forward);
    const fb = timed(forwardBackward);
    if (rep >= 0) {
      samples[i]!.fwd.push(f);
      samples[i]!.fb.push(fb);
    }
  }
}
setGradientMode('auto');

const results = configs.map((cfg, i) => {
  const s = samples[i]!;
  return {
    backend: `${cfg.backend} (${providers.get(cfg.backend)})`,
    grads: cfg.grads,
    forward_ms: +median(s.fwd.map((v) => v.wall)).toFixed(1),
    forward_backward_ms: +median(s.fb.map((v) => v.wall)).toFixed(1),
    forward_cpu_ms: +median(s.fwd.map((v) => v.cpu)).toFixed(1),
    forward_backward_cpu_ms: +median(s.fb.map((v) => v.cpu)).toFixed(1),
    forward_all_ms: s.fwd.map((v) => +v.wall.toFixed(1)),
    forward_backward_all_ms: s.fb.map((v) => +v.wall.toFixed(1)),
  };
});
const meta = { batch, tokens, reps, warmup, cores: availableParallelism(), loadavg_1m_end: +loadavg()[0]!.toFixed(2), tf_num_intraop_threads: process.env.TF_NUM_INTRAOP_THREADS ?? 'default' };
if (o.json) {
  process.stdout.write(JSON.stringify({ ...meta, results }) + '\n');
} else {
  process.stdout.write(`fixture UNet, batch ${batch}, ${tokens} context tokens; median of ${reps} after ${warmup} warm-up, interleaved; load average ${meta.loadavg_1m_end} on ${meta.cores} cores\n`);
  for (const r of results) process.stdout.write(`  ${r.backend.padEnd(38)} grads=${r.grads.padEnd(8)} forward ${String(r.forward_ms).padStart(7)} ms (cpu ${r.forward_cpu_ms})   forward+backward ${String(r.forward_backward_ms).padStart(7)} ms (cpu ${r.forward_backward_cpu_ms})\n`);
}
