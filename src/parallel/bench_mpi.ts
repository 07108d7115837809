/**
 * `swiftbrush bench --mpi` (under `mpirun -np N`): the real distillation stream on every process
 * (rank r takes micro-batches r, r + N, … of the embeddings file, one all-reduce per optimiser),
 * timed per optimiser step: the step's wall time, the share of it spent inside MPI collectives
 * (the all-reduces, including any wait for a slower process), and the bytes each process hands to
 * MPI per step. Rank 0 reports; step times are the slowest process's.
 */
import { mkdtemp, readFile, realpath, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lastValueFrom, tap } from 'rxjs';
import { embeddingBatches, readNullEmbedding } from '../streams/reader.ts';
import { OFFICIAL_DEFAULTS, createDistillState, disposeDistillState, resolveTeacherDirs, type DistillConfig } from '../operators/state.ts';
import { distill } from '../operators/pipeline.ts';
import { tf } from '../tf.ts';
import { openWorld } from './mpi.ts';

export interface MpiBenchOptions {
  /** A pipeline folder (unet/ + scheduler/) or a bare unet folder (then `scheduler`). */
  unet: string;
  scheduler: string;
  /** Embedding file(s) whose width matches the UNet's cross_attention_dim (with a "" row). */
  embeddings: string;
  batchSize: number;
  gradAccum: number;
  steps: number;
  warmup: number;
  config?: Partial<DistillConfig>;
}

export interface MpiBenchResult {
  processes: number;
  library: string;
  backend: string;
  unet: string;
  batch_size: number;
  grad_accum: number;
  /** Samples per optimiser step over all processes (batch × grad-accum × processes). */
  global_batch: number;
  steps: number;
  /** Trained parameters (student + LoRA) = float32 gradients all-reduced per step. */
  params: number;
  /** Median seconds per optimiser step (the slowest process's median). */
  step_s: number;
  /** Median seconds per step inside MPI collectives (the largest over the processes) and its share of step_s. */
  allreduce_s: number;
  allreduce_share: number;
  /** Payload each process hands to MPI per step, and what a ring all-reduce sends per process: 2(N−1)/N × payload. */
  bytes_per_step: number;
  ring_bytes_sent_per_step: number;
  /** Effective all-reduce bandwidth per process: ring bytes / all-reduce seconds (bytes/s). */
  ring_bandwidth_bytes_per_s: number;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

async function pipelineDir(unet: string, scheduler: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  try {
    const dirs = await resolveTeacherDirs(unet);
    await readFile(join(dirs.scheduler, 'scheduler_config.json'));
    return { dir: unet, cleanup: async () => {} };
  } catch {
    const dir = await mkdtemp(join(tmpdir(), 'sb-bench-mpi-'));
    await symlink(await realpath(unet), join(dir, 'unet'));
    await symlink(await realpath(scheduler), join(dir, 'scheduler'));
    return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
  }
}

export async function runMpiBench(o: MpiBenchOptions): Promise<MpiBenchResult> {
  const world = openWorld();
  const { dir, cleanup } = await pipelineDir(o.unet, o.scheduler);
  try {
    const nul = await readNullEmbedding(o.embeddings);
    const config: DistillConfig = { ...OFFICIAL_DEFAULTS, ...o.config, batchSize: o.batchSize, gradAccum: o.gradAccum };
    const state = await createDistillState({ teacherDir: dir, nullEmbeds: nul.embeds, embedShape: nul.shape, config });
    state.world = world;
    const params = [...state.student.store.named().values(), ...state.lora.store.named().values()].reduce((a, v) => a + v.size, 0);
    const total = o.warmup + o.steps;
    const stepTimes: number[] = [];
    const mpiTimes: number[] = [];
    const bytes: number[] = [];
    let last = { t: performance.now(), mpi: world.stats.seconds, bytes: world.stats.bytes };
    try {
      world.barrier();
      last = { t: performance.now(), mpi: world.stats.seconds, bytes: world.stats.bytes };
      const steps$ = distill(state, {
        firstMicroStep: world.rank,
        firstStep: 0,
        microStepStride: world.size,
        stopAfter: (ctx) => ctx.closesWindow && ctx.step >= total,
        operators: [
          tap((ctx) => {
            if (!ctx.closesWindow) return;
            const now = { t: performance.now(), mpi: world.stats.seconds, bytes: world.stats.bytes };
            if (ctx.step > o.warmup) {
              stepTimes.push((now.t - last.t) / 1000);
              mpiTimes.push(now.mpi - last.mpi);
              bytes.push(now.bytes - last.bytes);
            }
            last = now;
          }),
        ],
        batches: (demand) => embeddingBatches({ files: [o.embeddings], batchSize: o.batchSize, shuffle: true, seed: config.seed, epochs: Infinity, batchStride: world.size, batchOffset: world.rank, demand }),
      });
      await lastValueFrom(steps$, { defaultValue: undefined });
    } finally {
      disposeDistillState(state);
    }
    // The slowest process sets the pace: take the largest medians.
    const worst = new Float64Array([median(stepTimes), median(mpiTimes), median(bytes)]);
    world.allreduceMax64(worst);
    const [stepS, mpiS, payload] = [worst[0]!, worst[1]!, worst[2]!];
    const ring = (2 * (world.size - 1)) / world.size * payload;
    return {
      processes: world.size,
      library: world.library,
      backend: tf.getBackend(),
      unet: o.unet,
      batch_size: o.batchSize,
      grad_accum: o.gradAccum,
      global_batch: o.batchSize * o.gradAccum * world.size,
      steps: o.steps,
      params,
      step_s: stepS,
      allreduce_s: mpiS,
      allreduce_share: mpiS / stepS,
      bytes_per_step: payload,
      ring_bytes_sent_per_step: ring,
      ring_bandwidth_bytes_per_s: mpiS > 0 ? ring / mpiS : 0,
    };
  } finally {
    await cleanup();
  }
}
