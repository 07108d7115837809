/**
 * runDistillation: the `swiftbrush distill` job as a library call. Loads the teacher and the
 * embeddings, resumes from the newest checkpoint when asked, streams the SwiftBrush step with the
 * standard operators (EMA, checkpoint, validation grid, metrics, progress), and exports the student
 * (diffusers layout, EMA weights by default), the LoRA teacher (PEFT) and the run's config.
 *
 * Under an MPI launcher (mpirun, srun) or with `mpi`, each process takes its share of the
 * micro-batches (src/parallel/shard.ts), the gradients are all-reduced before each optimiser step
 * (src/parallel/gradient_sync.ts) and the processes agree on losses, stops and weights at each
 * window's end (syncProcesses); rank 0 alone writes files and reports progress.
 */
import { join } from 'node:path';
import { firstValueFrom, lastValueFrom, takeWhile, type OperatorFunction } from 'rxjs';
import { embeddingBatches, expandFiles, readNullEmbedding } from '../streams/reader.ts';
import { latestCheckpoint } from '../util/checkpoint.ts';
import { writeJsonAtomic } from '../util/fs.ts';
import { log } from '../log.ts';
import type { StepContext } from './context.ts';
import { checkpoint } from './checkpoint.ts';
import { distill } from './pipeline.ts';
import { metricsJsonl } from './metrics.ts';
import { progress } from './progress.ts';
import { ReplicaPool } from '../parallel/replica_pool.ts';
import { tf } from '../tf.ts';
import { initBackend } from '../backend.ts';
import { OFFICIAL_DEFAULTS, createDistillState, disposeDistillState, readTrainingState, resolveTeacherDirs, type DistillConfig, type DistillState } from './state.ts';
import { validation } from './validation.ts';
import { copyFile, mkdir } from 'node:fs/promises';
import { worldForRun, type World } from '../parallel/mpi.ts';
import { shardOf } from '../parallel/shard.ts';
import { syncProcesses } from './sync_processes.ts';

export interface DistillRunOptions {
  teacher: string;
  embeddings: string | string[];
  out: string;
  /** Optimiser steps (each = gradAccum micro-batches). */
  steps: number;
  config?: Partial<DistillConfig>;
  checkpointEvery?: number;
  checkpointsTotalLimit?: number;
  resume?: boolean;
  validationEvery?: number;
  validationPrompts?: number;
  prefetch?: number;
  shuffle?: boolean;
  shuffleBuffer?: number;
  /** Export the raw student weights instead of the EMA's. */
  exportRawWeights?: boolean;
  stopRequested?: () => boolean;
  /** Extra operators after the built-in ones, given the run's state (built before the stream starts). */
  operators?: (state: DistillState) => OperatorFunction<StepContext, StepContext>[];
  tty?: boolean;
  /**
   * TensorFlow.js backend (`auto`, `tensorflow`, `wasm`, `cpu`). Unset: the one already chosen by
   * `initBackend`, else `SWIFTBRUSH_BACKEND`, else `auto` (the fastest that loads).
   */
  backend?: string;
  /** Open an MPI world even when no launcher's environment is seen (default: only under mpirun / srun). */
  mpi?: boolean;
}

/** Every option of runDistillation, so that an unknown one (a typo, `batchSize` outside `config`) is refused by name. */
const RUN_OPTIONS: Record<keyof DistillRunOptions, true> = {
  teacher: true, embeddings: true, out: true, steps: true, config: true, checkpointEvery: true, checkpointsTotalLimit: true,
  resume: true, validationEvery: true, validationPrompts: true, prefetch: true, shuffle: true, shuffleBuffer: true,
  exportRawWeights: true, stopRequested: true, operators: true, tty: true, backend: true, mpi: true,
};

function refuseUnknownOptions(o: object): void {
  for (const key of Object.keys(o)) {
    if (key in RUN_OPTIONS) continue;
    const hint = key in OFFICIAL_DEFAULTS ? ` (a training setting: pass it as config: { ${key} })` : '';
    throw new Error(`runDistillation: unknown option '${key}'${hint}; options are ${Object.keys(RUN_OPTIONS).join(', ')}`);
  }
}

export interface DistillRunResult {
  step: number;
  studentDir: string;
  stoppedEarly: boolean;
  /** This process's rank in the MPI world (0 without MPI): only rank 0 wrote the student. */
  rank: number;
}

/** n validation prompts spread evenly over the first rows of the files (not just the first n). */
async function validationPrompts(files: string[], n: number) {
  const first = await firstValueFrom(embeddingBatches({ files, batchSize: Math.max(n, 96), shuffle: false, epochs: 1 }));
  const [count, L, D] = first.shape;
  const take = Math.min(n, count);
  const picks = Array.from({ length: take }, (_, i) => Math.floor((i * count) / take));
  const embeds = new Float32Array(take * L * D);
  picks.forEach((row, i) => embeds.set(first.embeds.subarray(row * L * D, (row + 1) * L * D), i * L * D));
  return { embeds, shape: [take, L, D] as [number, number, number], prompts: picks.map((row) => first.prompts[row]!) };
}

/** Writes the student (pipeline layout: unet/ + scheduler/), the LoRA adapter and the run config. */
export async function exportStudent(state: DistillState, out: string, options: { teacherDir: string; raw?: boolean; runConfig: object }): Promise<string> {
  const studentDir = join(out, 'student');
  const weights = !options.raw && state.ema ? state.student.store.torchStateDict(state.ema.shadow) : undefined;
  await state.student.savePretrained(join(studentDir, 'unet'), weights);
  const dirs = await resolveTeacherDirs(options.teacherDir);
  await mkdir(join(studentDir, 'scheduler'), { recursive: true });
  await copyFile(join(dirs.scheduler, 'scheduler_config.json'), join(studentDir, 'scheduler', 'scheduler_config.json'));
  await state.lora.save(join(out, 'lora'));
  await writeJsonAtomic(join(out, 'config.json'), options.runConfig);
  return studentDir;
}

/**
 * The checkpoint to resume from, the same on every process: rank 0's newest (the output folder must
 * be on storage every process sees; a process that cannot see it stops the run by name).
 */
async function resumeCheckpoint(out: string, world: World | undefined): Promise<{ step: number; path: string } | undefined> {
  const own = await latestCheckpoint(out);
  if (!world || world.size === 1) return own;
  const chosen = new Float64Array([world.rank === 0 ? (own?.step ?? -1) : -1]);
  world.allreduceMax64(chosen);
  if (chosen[0]! < 0) return undefined;
  const path = join(out, `checkpoint-${chosen[0]}`);
  if (own?.step !== chosen[0]) {
    const seen = await latestCheckpoint(out);
    if (!seen || seen.step < chosen[0]!) throw new Error(`rank ${world.rank}: ${path} (rank 0's newest checkpoint) is not visible here: --out must be on storage shared by every process`);
  }
  return { step: chosen[0]!, path };
}

/** Throws "key must be 'a', 'b' or 'c', got …" unless config[key] is one of the choices (a --config file bypasses the CLI's choices). */
function requireOneOf<K extends keyof DistillConfig>(config: DistillConfig, key: K, choices: readonly DistillConfig[K][]): void {
  if (choices.includes(config[key])) return;
  const quoted = choices.map((c) => `'${String(c)}'`);
  throw new Error(`${key} must be ${quoted.slice(0, -1).join(', ')} or ${quoted.at(-1)}, got ${JSON.stringify(config[key])}`);
}

export async function runDistillation(o: DistillRunOptions): Promise<DistillRunResult> {
  refuseUnknownOptions(o);
  await initBackend(o.backend);
  const config: DistillConfig = { ...OFFICIAL_DEFAULTS, ...o.config };
  if (!config.lrDecaySteps) config.lrDecaySteps = o.steps;
  requireOneOf(config, 'lrScheduler', ['constant', 'linear', 'cosine']);
  if (!(Number.isInteger(config.replicas) && config.replicas >= 1)) throw new Error(`replicas must be a positive integer, got ${config.replicas}`);
  if (config.replicas > config.gradAccum) throw new Error(`replicas (${config.replicas}) needs gradAccum ≥ replicas (got ${config.gradAccum}): each replica computes whole micro-batches of an accumulation window`);
  requireOneOf(config, 'loraLossWeighting', ['official', 'epsilon']);
  requireOneOf(config, 'vsdWeighting', ['official', 'dmd']);
  if (!(config.sdsWeight >= 0 && config.sdsWeight <= 1)) throw new Error(`sdsWeight must be in [0, 1], got ${config.sdsWeight}`);
  const world = worldForRun(o.mpi);
  const shard = shardOf(world);
  const writer = shard.rank === 0; // rank 0 writes checkpoints, exports, metrics, grids, progress
  if (!writer) log.level = 'warn';
  if (world) log.info({ processes: shard.size, library: world.library }, 'MPI world');
  const files = expandFiles(o.embeddings);
  const nullEmbedding = await readNullEmbedding(files);
  const state = await createDistillState({ teacherDir: o.teacher, nullEmbeds: nullEmbedding.embeds, embedShape: nullEmbedding.shape, config });
  state.world = world;
  try {
    let firstMicroStep = 0;
    let startStep = 0;
    const resumeFrom = o.resume ? await resumeCheckpoint(o.out, world) : undefined;
    if (resumeFrom) {
      const progressState = await readTrainingState(state, resumeFrom.path);
      firstMicroStep = progressState.microStep;
      startStep = progressState.step;
      log.info({ checkpoint: resumeFrom.path, step: startStep, microStep: firstMicroStep }, 'resuming');
    } else if (o.resume) {
      log.info({ out: o.out }, 'no checkpoint to resume from: starting at step 0');
    }
    if (config.replicas > 1) {
      state.replicas = await ReplicaPool.start(state, { count: config.replicas - 1, teacherDir: o.teacher, backend: tf.getBackend(), maxBatch: config.batchSize });
      log.info({ replicas: config.replicas, backend: tf.getBackend() }, 'data-parallel replica threads started');
    }
    const runConfig = { teacher: o.teacher, embeddings: files, steps: o.steps, ...config, checkpoint_every: o.checkpointEvery, validation_every: o.validationEvery, ...(world ? { world_size: shard.size } : {}) };
    if (writer) await writeJsonAtomic(join(o.out, 'config.json'), runConfig);
    if (startStep >= o.steps) {
      log.info({ step: startStep }, 'already at the requested number of steps');
    } else {
      const ownStop = () => Boolean(o.stopRequested?.());
      const sync = world ? syncProcesses(state, world, { stopRequested: ownStop, checksumEvery: o.checkpointEvery ?? 500 }) : undefined;
      // Under MPI a stop is the processes' agreement at the window's end (any rank's request stops all).
      const stop = (ctx: StepContext) => (sync ? sync.stopAgreed(ctx) : ownStop());
      const isLast = (ctx: StepContext) => ctx.closesWindow && (ctx.step >= o.steps || stop(ctx));
      const operators: OperatorFunction<StepContext, StepContext>[] = sync ? [sync.operator] : [];
      if (writer && o.validationEvery && o.validationEvery > 0) {
        const v = await validationPrompts(files, o.validationPrompts ?? 8);
        operators.push(validation(state, { out: o.out, every: o.validationEvery, embeds: v.embeds, shape: v.shape, prompts: v.prompts, seed: config.seed }));
      }
      if (writer) {
        operators.push(
          checkpoint(state, { out: o.out, every: o.checkpointEvery ?? 500, keep: o.checkpointsTotalLimit ?? 3, force: isLast }),
          metricsJsonl(state, join(o.out, 'metrics.jsonl')),
          progress(state, { totalSteps: o.steps, startStep, tty: o.tty }),
          ...(o.operators?.(state) ?? []),
        );
      }
      const steps$ = distill(state, {
        firstMicroStep: firstMicroStep + shard.rank,
        firstStep: startStep,
        microStepStride: shard.size,
        operators,
        stopAfter: isLast,
        batches: (demand) =>
          embeddingBatches({ files, batchSize: config.batchSize, shuffle: o.shuffle ?? true, shuffleBuffer: o.shuffleBuffer, seed: config.seed, epochs: Infinity, startBatch: firstMicroStep, batchStride: shard.size, batchOffset: shard.rank, prefetch: o.prefetch ?? 2, demand }),
      }).pipe(takeWhile((ctx) => !isLast(ctx), true));
      const last = await lastValueFrom(steps$, { defaultValue: undefined });
      startStep = last?.step ?? startStep;
    }
    const studentDir = writer ? await exportStudent(state, o.out, { teacherDir: o.teacher, raw: o.exportRawWeights, runConfig }) : join(o.out, 'student');
    if (writer) log.info({ step: startStep, studentDir }, 'student exported');
    return { step: startStep, studentDir, stoppedEarly: startStep < o.steps, rank: shard.rank };
  } finally {
    await state.replicas?.dispose();
    disposeDistillState(state);
  }
}
