/**
 * Peak memory of writing one training checkpoint: builds the distillation state of a teacher
 * (student, EMA, LoRA, both optimisers), runs `--steps` distillation steps on random prompt
 * embeddings (so every tensor has been written by an update, as in a run), then snapshots the state
 * and writes `OUT/checkpoint-<steps>/` as a run does, and reports the process's resident memory before the write and its peak during it (the
 * peak is reset before the write through /proc/self/clear_refs, so load and step peaks do not count).
 *
 *   node --import tsx bench/checkpoint_memory.ts --teacher /work/big/midpipe80 --out /tmp/ckpt-bench [--backend tensorflow]
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { from, lastValueFrom, tap } from 'rxjs';
import { initBackend } from '../src/backend.ts';
import { disposeContext } from '../src/operators/context.ts';
import { swiftbrushStep, toStepContext } from '../src/operators/pipeline.ts';
import { countParams } from '../src/models/memory.ts';
import { createDistillState, disposeDistillState, OFFICIAL_DEFAULTS } from '../src/operators/state.ts';
import { saveCheckpoint, snapshotTrainingState, writeTrainingSnapshot } from '../src/training/checkpoint.ts';
import { backendOption, flags } from './common.ts';

const o = flags<{ teacher: string; out: string; backend: string; steps: string; tokens: string; dim: string }>('checkpoint_memory', 'peak memory of writing one training checkpoint', (p) =>
  p
    .addOption(backendOption().default('tensorflow'))
    .requiredOption('--teacher <dir>', 'diffusers pipeline folder (unet/, scheduler/)')
    .requiredOption('--out <dir>', 'where checkpoint-1/ is written (removed after)')
    .option('--steps <n>', 'distillation steps (batch 1) before the checkpoint', '1')
    .option('--tokens <n>', 'L of the prompt embeddings', '77')
    .option('--dim <n>', 'D of the prompt embeddings (the UNet cross_attention_dim)', '1024'),
);

const MB = 2 ** 20;
/** VmRSS / VmHWM of this process in bytes (Linux). */
function rss(field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
  if (!m) throw new Error(`/proc/self/status has no ${field}`);
  return Number(m[1]) * 1024;
}

const choice = await initBackend(o.backend);
const [L, D] = [Number(o.tokens), Number(o.dim)];
const state = await createDistillState({ teacherDir: o.teacher, nullEmbeds: new Float32Array(L * D), embedShape: [L, D], config: { ...OFFICIAL_DEFAULTS } });
const params = countParams(state.student.store.specs());
const steps = Number(o.steps);
const batches = Array.from({ length: steps }, (_, i) => {
  const embeds = new Float32Array(L * D);
  for (let j = 0; j < embeds.length; j++) embeds[j] = Math.sin(0.37 * j + 1.3 * i);
  return { embeds, shape: [1, L, D] as [number, number, number], prompts: [`p${i}`], position: { epoch: 0, batchIndex: i } };
});
const s0 = performance.now();
await lastValueFrom(from(batches).pipe(toStepContext(1), swiftbrushStep(state), tap((ctx) => disposeContext(ctx))));
const stepSeconds = (performance.now() - s0) / 1000;
const loaded = rss('VmRSS');
const beforePeak = rss('VmHWM');
writeFileSync('/proc/self/clear_refs', '5'); // resets VmHWM to the current RSS
const t0 = performance.now();
const path = await saveCheckpoint(o.out, steps, (dir) => writeTrainingSnapshot(state, snapshotTrainingState(state, { step: steps, microStep: steps, counters: state.counters }), dir));
const seconds = (performance.now() - t0) / 1000;
const peak = rss('VmHWM');
const report = {
  backend: choice.backend,
  unetParams: params,
  steps,
  stepSeconds: Number(stepSeconds.toFixed(1)),
  rssLoadedMB: Math.round(loaded / MB),
  peakBeforeWritingMB: Math.round(beforePeak / MB),
  peakWhileWritingMB: Math.round(peak / MB),
  writeExtraMB: Math.round((peak - loaded) / MB),
  writeSeconds: Number(seconds.toFixed(1)),
  checkpoint: path,
};
process.stdout.write(`${JSON.stringify(report)}\n`);
disposeDistillState(state);
await rm(o.out, { recursive: true, force: true });
