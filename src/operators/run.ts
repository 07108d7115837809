/**
 * runDistillation: the `swiftbrush distill` job as a library call. Loads the teacher and the
 * embeddings, resumes from the newest checkpoint when asked, streams the SwiftBrush step with the
 * standard operators (EMA, checkpoint, validation grid, metrics, progress), and exports the student
 * (diffusers layout, EMA weights by default), the LoRA teacher (PEFT) and the run's config.
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
import { AutoencoderKL } from '../models/autoencoder_kl.ts';
import { completeStudentPipeline } from '../models/pipeline_folder.ts';

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
}

/** Every option of runDistillation, so that an unknown one (a typo, `batchSize` outside `config`) is refused by name. */
const RUN_OPTIONS: Record<keyof DistillRunOptions, true> = {
  teacher: true, embeddings: true, out: true, steps: true, config: true, checkpointEvery: true, checkpointsTotalLimit: true,
  resume: true, validationEvery: true, validationPrompts: true, prefetch: true, shuffle: true, shuffleBuffer: true,
  exportRawWeights: true, stopRequested: true, operators: true, tty: true, backend: true,
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

/**
 * Writes the student as a diffusers pipeline folder (its unet/ beside copies of the teacher's other
 * components, e.g. scheduler/ and vae/, and a model_index.json: see completeStudentPipeline), the
 * LoRA adapter and the run config.
 */
export async function exportStudent(state: DistillState, out: string, options: { teacherDir: string; raw?: boolean; runConfig: object }): Promise<string> {
  const studentDir = join(out, 'student');
  const weights = !options.raw && state.ema ? state.student.store.torchStateDict(state.ema.shadow) : undefined;
  await state.student.savePretrained(join(studentDir, 'unet'), weights);
  await completeStudentPipeline(await resolveTeacherDirs(options.teacherDir), studentDir);
  await state.lora.save(join(out, 'lora'));
  await writeJsonAtomic(join(out, 'config.json'), options.runConfig);
  return studentDir;
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
  const files = expandFiles(o.embeddings);
  const nullEmbedding = await readNullEmbedding(files);
  const state = await createDistillState({ teacherDir: o.teacher, nullEmbeds: nullEmbedding.embeds, embedShape: nullEmbedding.shape, config });
  let vae: AutoencoderKL | undefined;
  try {
    let firstMicroStep = 0;
    let startStep = 0;
    const resumeFrom = o.resume ? await latestCheckpoint(o.out) : undefined;
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
    const runConfig = { teacher: o.teacher, embeddings: files, steps: o.steps, ...config, checkpoint_every: o.checkpointEvery, validation_every: o.validationEvery };
    await writeJsonAtomic(join(o.out, 'config.json'), runConfig);
    if (startStep >= o.steps) {
      log.info({ step: startStep }, 'already at the requested number of steps');
    } else {
      const stop = () => Boolean(o.stopRequested?.());
      const isLast = (ctx: StepContext) => ctx.closesWindow && (ctx.step >= o.steps || stop());
      const operators: OperatorFunction<StepContext, StepContext>[] = [];
      if (o.validationEvery && o.validationEvery > 0) {
        const v = await validationPrompts(files, o.validationPrompts ?? 8);
        // A latent teacher's grids are decoded through its VAE.
        const vaeDir = (await resolveTeacherDirs(o.teacher)).vae;
        vae = vaeDir ? await AutoencoderKL.fromPretrained(vaeDir) : undefined;
        operators.push(validation(state, { out: o.out, every: o.validationEvery, embeds: v.embeds, shape: v.shape, prompts: v.prompts, seed: config.seed, vae }));
      }
      operators.push(
        checkpoint(state, { out: o.out, every: o.checkpointEvery ?? 500, keep: o.checkpointsTotalLimit ?? 3, force: isLast }),
        metricsJsonl(state, join(o.out, 'metrics.jsonl')),
        progress(state, { totalSteps: o.steps, startStep, tty: o.tty }),
        ...(o.operators?.(state) ?? []),
      );
      const steps$ = distill(state, {
        firstMicroStep,
        firstStep: startStep,
        operators,
        batches: (demand) =>
          embeddingBatches({ files, batchSize: config.batchSize, shuffle: o.shuffle ?? true, shuffleBuffer: o.shuffleBuffer, seed: config.seed, epochs: Infinity, startBatch: firstMicroStep, prefetch: o.prefetch ?? 2, demand }),
      }).pipe(takeWhile((ctx) => !isLast(ctx), true));
      const last = await lastValueFrom(steps$, { defaultValue: undefined });
      startStep = last?.step ?? startStep;
    }
    const studentDir = await exportStudent(state, o.out, { teacherDir: o.teacher, raw: o.exportRawWeights, runConfig });
    log.info({ step: startStep, studentDir }, 'student exported');
    return { step: startStep, studentDir, stoppedEarly: startStep < o.steps };
  } finally {
    await state.replicas?.dispose();
    vae?.dispose();
    disposeDistillState(state);
  }
}
