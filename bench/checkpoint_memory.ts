/**
 * Peak memory of writing one training checkpoint: builds the distillation state of a teacher
 * (student, EMA, LoRA, both optimisers), then snapshots it and writes `OUT/checkpoint-1/` as a run
 * does, and reports the process's resident memory before the write and its peak during it (the
 * peak is reset after loading through /proc/self/clear_refs, so load-time peaks do not count).
 *
 *   node --import tsx bench/checkpoint_memory.ts --teacher /work/big/midpipe80 --out /tmp/ckpt-bench [--backend tensorflow]
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { initBackend } from '../src/backend.ts';
import { countParams } from '../src/models/memory.ts';
import { createDistillState, disposeDistillState, OFFICIAL_DEFAULTS } from '../src/operators/state.ts';
import { saveCheckpoint, snapshotTrainingState, writeTrainingSnapshot } from '../src/training/checkpoint.ts';
import { backendOption, flags } from './common.ts';

const o = flags<{ teacher: string; out: string; backend: string; tokens: string; dim: string }>('checkpoint_memory', 'peak memory of writing one training checkpoint', (p) =>
  p
    .addOption(backendOption().default('tensorflow'))
    .requiredOption('--teacher <dir>', 'diffusers pipeline folder (unet/, scheduler/)')
    .requiredOption('--out <dir>', 'where checkpoint-1/ is written (removed after)')
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
const loaded = rss('VmRSS');
const loadPeak = rss('VmHWM');
writeFileSync('/proc/self/clear_refs', '5'); // resets VmHWM to the current RSS
const t0 = performance.now();
const path = await saveCheckpoint(o.out, 1, (dir) => writeTrainingSnapshot(state, snapshotTrainingState(state, { step: 1, microStep: 1, counters: state.counters }), dir));
const seconds = (performance.now() - t0) / 1000;
const peak = rss('VmHWM');
const report = {
  backend: choice.backend,
  unetParams: params,
  rssLoadedMB: Math.round(loaded / MB),
  peakWhileLoadingMB: Math.round(loadPeak / MB),
  peakWhileWritingMB: Math.round(peak / MB),
  writeExtraMB: Math.round((peak - loaded) / MB),
  writeSeconds: Number(seconds.toFixed(1)),
  checkpoint: path,
};
process.stdout.write(`${JSON.stringify(report)}\n`);
disposeDistillState(state);
await rm(o.out, { recursive: true, force: true });
