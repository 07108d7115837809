/**
 * Side-by-side A/B of one SwiftBrush step (the fused loop of bench/step.ts) between this
 * tree and another checkout of the project (e.g. `git worktree add /tmp/base <commit>`), in ONE
 * process (one worker thread per tree, stepped in turn), alternating A B A B ... so that machine load hits both alike. Both trees share tfjs
 * (same node_modules) and the backend. Prints medians and the ratio.
 *
 *   node --import tsx bench/ab_step.ts --base /tmp/base [--unet DIR] [--batch 8] [--steps 20] [--warmup 2] [--backend wasm]
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { mkdtemp, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { existsSync } from 'node:fs';
import { FIXTURE_SCHEDULER, FIXTURE_UNET, flags, int, median } from './common.ts';

const o = flags<{ base: string; unet: string; batch: number; steps: number; warmup: number; backend: string }>('ab_step', 'fused step of this tree vs another checkout, alternating', (p) =>
  p
    .option('--base <dir>', 'the other checkout', '/tmp/base')
    .option('--unet <dir>', 'UNet folder', FIXTURE_UNET)
    .option('--batch <n>', 'prompts per step', int(1), 8)
    .option('--steps <n>', 'timed steps per tree', int(1), 20)
    .option('--warmup <n>', 'untimed steps per tree first', int(0), 2)
    .option('--backend <name>', 'tfjs backend', 'wasm'),
);
const base = resolve(o.base);
const here = resolve(import.meta.dirname, '..');
const unet = resolve(o.unet);
const scheduler = FIXTURE_SCHEDULER;
const { batch, steps, warmup } = o;

/** Each tree runs in its own worker thread (its own tfjs engine); the main thread alternates them. */
function load(root: string): Promise<() => Promise<number>> {
  // tsx's loader is registered inside the worker (execArgv --import does not reach worker threads here).
  const boot = `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`;
  const worker = new Worker(boot, { eval: true, workerData: { root }, argv: process.argv.slice(2) });
  let pending: ((v: number) => void) | null = null;
  return new Promise((ready, fail) => {
    worker.once('error', fail);
    worker.on('message', (m: { ready?: boolean; seconds?: number }) => {
      if (m.ready) ready(() => new Promise<number>((res) => ((pending = res), worker.postMessage('step'))));
      else if (pending) pending(m.seconds!);
    });
  });
}

async function workerMain(root: string) {
  const mod = (p: string) => import(pathToFileURL(resolve(root, p)).href);
  const backend = await mod('src/backend.ts');
  await backend.initBackend(o.backend);
  const state = await mod('src/operators/state.ts');
  // The fused step lives in bench/step.ts (src/operators/bench.ts in older checkouts).
  const bench = await mod(existsSync(resolve(root, 'bench/step.ts')) ? 'bench/step.ts' : 'src/operators/bench.ts');
  const dir = await mkdtemp(resolve(tmpdir(), 'sb-ab-'));
  await symlink(unet, resolve(dir, 'unet'));
  await symlink(scheduler, resolve(dir, 'scheduler'));
  const s = await state.createDistillState({ teacherDir: dir, nullEmbeds: new Float32Array(8 * 32), embedShape: [8, 32], config: { ...state.OFFICIAL_DEFAULTS, batchSize: batch } });
  let micro = 0;
  parentPort!.on('message', () => {
    const embeds = new Float32Array(batch * 8 * 32);
    for (let j = 0; j < embeds.length; j++) embeds[j] = Math.sin(0.37 * j + 1.3 * micro);
    const b = { embeds, shape: [batch, 8, 32], prompts: [], position: { epoch: 0, batchIndex: micro } };
    const t0 = performance.now();
    bench.fusedStep(s, micro++, b);
    parentPort!.postMessage({ seconds: (performance.now() - t0) / 1000 });
  });
  parentPort!.postMessage({ ready: true });
}

if (!isMainThread) {
  await workerMain((workerData as { root: string }).root);
} else {
const runs = { base: await load(base), here: await load(here) };
const run = async (k: 'base' | 'here') => runs[k]();
const times: Record<string, number[]> = { base: [], here: [] };
for (let i = 0; i < warmup; i++) for (const k of ['base', 'here'] as const) await run(k);
for (let i = 0; i < steps; i++) for (const k of (i % 2 ? ['here', 'base'] : ['base', 'here']) as ('base' | 'here')[]) times[k]!.push(await run(k));
const mb = median(times.base!);
const mh = median(times.here!);
console.log(JSON.stringify({ batch, steps, base_step_s: mb, here_step_s: mh, speedup: mb / mh, base }));
process.exit(0);
}
