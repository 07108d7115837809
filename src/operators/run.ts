/**
 * runDistillation: the `swiftbrush distill` job as a library call. Loads the teacher and the
 * embeddings, resumes from the newest checkpoint when asked, streams the SwiftBrush step with the
 * standard operators (EMA, checkpoint, validation grid, metrics, progress), and exports the student
 * (diffusers layout, EMA weights by default), the LoRA teacher (PEFT) and the run's config.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { firstValueFrom, lastValueFrom, tap, type OperatorFunction } from 'rxjs';
import { checkEmbeddingWidth, embeddingBatches, expandFiles, modelWidth, readNullEmbedding } from '../streams/reader.ts';
import { RUN_DEFAULTS, OFFICIAL_DEFAULTS, SETTINGS, SETTING_KEYS, checkSettings, checkSettingsTogether, distillConfig, flagOf, formatChanges, pickDistillConfig, resumeSettings, type RunSettings, type SettingKey } from '../swiftbrush/config.ts';
import { yieldToEventLoop } from './yield_to_event_loop.ts';
import { latestCheckpoint, readTrainingState, removeLeftovers } from '../training/checkpoint.ts';
import { writeJsonAtomic } from '../util/fs.ts';
import { worldForRun, type World } from '../parallel/mpi.ts';
import { shardOf } from '../parallel/shard.ts';
import { syncProcesses } from './sync_processes.ts';
import { log } from '../log.ts';
import type { StepContext } from './context.ts';
import { checkpoint } from './checkpoint.ts';
import { distill } from './pipeline.ts';
import { metricsJsonl } from './metrics.ts';
import { progress } from './progress.ts';
import { ReplicaPool } from '../parallel/replica_pool.ts';
import { tf } from '../tf.ts';
import { initBackend } from '../backend.ts';
import { createDistillState, disposeDistillState, resolveTeacherDirs, type DistillConfig, type DistillState } from './state.ts';
import { validation } from './validation.ts';
import { AutoencoderKL } from '../models/autoencoder_kl.ts';
import { completeStudentPipeline } from '../models/pipeline_folder.ts';
import { readFile } from 'node:fs/promises';

/**
 * A run's options. Settings left undefined take, in this order: the checkpoint's (with `resume`),
 * `defaults`, then the schema's defaults (src/swiftbrush/config.ts). `teacher`, `embeddings` and
 * `steps` are required unless a resumed checkpoint holds them.
 */
export interface DistillRunOptions {
  teacher?: string;
  embeddings?: string | string[];
  out: string;
  /** Optimiser steps (each = gradAccum micro-batches). */
  steps?: number;
  config?: Partial<DistillConfig>;
  checkpointEvery?: number;
  checkpointsTotalLimit?: number;
  /**
   * Continue from the newest checkpoint in `out`, with its settings: options given here override
   * them (logged as changes); a change the checkpoint cannot take (LoRA rank, alpha, targets, the
   * teacher) is refused by name.
   */
  resume?: boolean;
  /** Steps between validation grids; 0 = off (default 100). */
  validationEvery?: number;
  validationPrompts?: number;
  prefetch?: number;
  shuffle?: boolean;
  shuffleBuffer?: number;
  /** Export the raw student weights instead of the EMA's. */
  exportRawWeights?: boolean;
  /** Settings for what neither these options nor a resumed checkpoint give (a command's own defaults). */
  defaults?: Partial<RunSettings>;
  /**
   * Asked when a window's last micro-batch has been computed; true makes that step the run's last:
   * its checkpoint is written, nothing after it is computed, and the student is exported.
   */
  stopRequested?: () => boolean;
  /** Open an MPI world even when no launcher's environment is seen (default: only under mpirun / srun; docs/mpi.md). */
  mpi?: boolean;
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
  exportRawWeights: true, defaults: true, stopRequested: true, operators: true, tty: true, backend: true, mpi: true,
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
async function validationPrompts(files: string[], n: number, width: number) {
  const first = await firstValueFrom(embeddingBatches({ files, width, batchSize: Math.max(n, 96), shuffle: false, epochs: 1 }));
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
  const weights = !options.raw && state.ema ? state.ema.shadow : undefined; // streamed from the device, one tensor at a time
  await state.student.savePretrained(join(studentDir, 'unet'), weights);
  await completeStudentPipeline(await resolveTeacherDirs(options.teacherDir), studentDir);
  await state.lora.save(join(out, 'lora'));
  await writeJsonAtomic(join(out, 'config.json'), options.runConfig);
  return studentDir;
}

/** The settings a run in `out` was made with: the checkpoint's state.json (or, for older runs, its config and OUT/config.json). */
export async function readSavedSettings(out: string, checkpoint?: string): Promise<Partial<RunSettings> | undefined> {
  const readJson = async (path: string) => JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  let saved: Record<string, unknown> = {};
  if (checkpoint) {
    const state = await readJson(join(checkpoint, 'state.json'));
    if (state.settings) return known(state.settings as Record<string, unknown>);
    saved = { ...(state.config as object) };
  }
  const configPath = join(out, 'config.json');
  if (existsSync(configPath)) {
    const config = await readJson(configPath);
    // Runs written before the schema: snake_case keys beside camelCase ones.
    const legacy: Record<string, string> = { checkpoint_every: 'checkpointEvery', validation_every: 'validationEvery' };
    for (const [k, v] of Object.entries(config)) saved[legacy[k] ?? k] ??= v;
  } else if (!checkpoint) {
    return undefined;
  }
  return known(saved);
}

const known = (raw: Record<string, unknown>) => Object.fromEntries(Object.entries(raw).filter(([k, v]) => k in SETTINGS && v !== undefined && v !== null)) as Partial<RunSettings>;

/** Whether two values of a setting name the same thing (paths resolved, globs expanded). */
function sameSetting(key: SettingKey, a: unknown, b: unknown): boolean {
  const files = (v: unknown) => {
    try {
      return expandFiles(v as string | string[]).join('\n');
    } catch {
      return JSON.stringify(v);
    }
  };
  if (key === 'teacher') return resolve(String(a)) === resolve(String(b));
  if (key === 'embeddings') return files(a) === files(b);
  return JSON.stringify(a) === JSON.stringify(b);
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
  if (own?.step !== chosen[0] && !existsSync(path)) throw new Error(`rank ${world.rank}: ${path} (rank 0's newest checkpoint) is not visible here: --out must be on storage shared by every process`);
  return { step: chosen[0]!, path };
}

/**
 * The settings a run goes with: the options given (validated), over the resumed checkpoint's
 * settings when resuming, over `defaults`, over the schema's defaults. Logs what a resume changes.
 */
export async function resolveRunSettings(o: DistillRunOptions, world: World | undefined): Promise<{ settings: RunSettings; resumeFrom?: { step: number; path: string } }> {
  const given = checkSettings({
    teacher: o.teacher,
    embeddings: o.embeddings,
    out: o.out,
    steps: o.steps,
    checkpointEvery: o.checkpointEvery,
    checkpointsTotalLimit: o.checkpointsTotalLimit,
    validationEvery: o.validationEvery,
    validationPrompts: o.validationPrompts,
    prefetch: o.prefetch,
    rawWeights: o.exportRawWeights,
    ...o.config,
  });
  const base = { ...OFFICIAL_DEFAULTS, ...RUN_DEFAULTS, ...checkSettings({ ...o.defaults }) };
  let chosen = given;
  let resumeFrom: { step: number; path: string } | undefined;
  if (o.resume) {
    // Hidden leftovers of a run killed while it wrote or pruned a checkpoint (rank 0 is the only writer).
    if (!world || world.rank === 0) await removeLeftovers(o.out);
    resumeFrom = await resumeCheckpoint(o.out, world);
    const saved = await readSavedSettings(o.out, resumeFrom?.path);
    if (saved) {
      const source = resumeFrom?.path ?? join(o.out, 'config.json');
      const r = resumeSettings(saved, given, { checkpoint: source, equal: sameSetting });
      chosen = r.settings;
      if (r.changes.length) log.warn({ checkpoint: source }, `resuming with changed settings: ${formatChanges(r.changes)}`);
    }
  }
  const settings = { ...base, ...chosen } as RunSettings;
  for (const key of ['teacher', 'embeddings', 'steps'] as const) {
    if (settings[key] === undefined) throw new Error(`missing required option ${flagOf(key)} (or "${key}" in --config)${o.resume ? `; ${o.out} has no checkpoint or config.json to take it from` : ''}`);
  }
  checkSettingsTogether(settings);
  return { settings, resumeFrom };
}

/** The UNet's cross_attention_dim, read from its config.json (before loading any weights). */
async function teacherWidth(teacherDir: string): Promise<{ width: number; model: string }> {
  const dirs = await resolveTeacherDirs(teacherDir);
  const path = join(dirs.unet, 'config.json');
  const config = JSON.parse(await readFile(path, 'utf8')) as { cross_attention_dim?: number | number[] };
  if (config.cross_attention_dim === undefined) throw new Error(`${path}: no cross_attention_dim`);
  return { width: modelWidth(config.cross_attention_dim, path), model: path };
}

export async function runDistillation(o: DistillRunOptions): Promise<DistillRunResult> {
  refuseUnknownOptions(o);
  await initBackend(o.backend);
  const world = worldForRun(o.mpi);
  const shard = shardOf(world);
  const writer = shard.rank === 0; // rank 0 writes checkpoints, exports, metrics, grids, progress
  if (!writer) log.level = 'warn';
  if (world) log.info({ processes: shard.size, library: world.library }, 'MPI world');
  const { settings, resumeFrom } = await resolveRunSettings(o, world);
  const config: DistillConfig = distillConfig(pickDistillConfig(settings));
  if (!config.lrDecaySteps) config.lrDecaySteps = settings.steps;
  const files = expandFiles(settings.embeddings);
  // Shapes before any work: every file's rows must be [L, cross_attention_dim].
  const { width, model } = await teacherWidth(settings.teacher);
  await checkEmbeddingWidth(files, width, model);
  const nullEmbedding = await readNullEmbedding(files, { width });
  const state = await createDistillState({ teacherDir: settings.teacher, nullEmbeds: nullEmbedding.embeds, embedShape: nullEmbedding.shape, config });
  // Complete, in the schema's order, with the files the globs matched: what --config takes back.
  // The run folder itself is left out (it is where the file is, and never restored), so that a
  // run's config and checkpoints do not depend on the folder it was written in.
  const saved = SETTING_KEYS.filter((k) => SETTINGS[k].resume !== 'given');
  const runConfig = Object.fromEntries(saved.map((k) => [k, k === 'embeddings' ? files : settings[k]])) as unknown as RunSettings;
  state.runSettings = runConfig;
  let vae: AutoencoderKL | undefined;
  state.world = world;
  try {
    let firstMicroStep = 0;
    let startStep = 0;
    if (resumeFrom) {
      const progressState = await readTrainingState(state, resumeFrom.path);
      firstMicroStep = progressState.microStep;
      startStep = progressState.step;
      log.info({ checkpoint: resumeFrom.path, step: startStep, microStep: firstMicroStep }, 'resuming');
    } else if (o.resume) {
      log.info({ out: o.out }, 'no checkpoint to resume from: starting at step 0');
    }
    if (config.replicas > 1) {
      state.replicas = await ReplicaPool.start(state, { count: config.replicas - 1, teacherDir: settings.teacher, backend: tf.getBackend(), maxBatch: config.batchSize });
      log.info({ replicas: config.replicas, backend: tf.getBackend() }, 'data-parallel replica threads started');
    }
    if (writer) await writeJsonAtomic(join(o.out, 'config.json'), runConfig);
    const steps = settings.steps;
    if (startStep >= steps) {
      log.info({ step: startStep }, 'already at the requested number of steps');
    } else {
      // The run ends after the window that reaches `steps`, or the first window to close after a stop
      // request. The event loop turns after each micro-batch's step (so a signal that came during
      // the step has been handled), then distill asks this and completes after the last micro-batch:
      // no step beyond it is computed, and the checkpoint written at that step (ctx.last) holds
      // exactly the weights exported. A signal during a validation grid is seen at the next
      // micro-batch's check, or right after the grid, which asks again before the checkpoint.
      // Under MPI a stop is the processes' agreement at the window's end (any rank's request stops
      // all, at the same optimiser step); the answer is kept per window, so asking again after a
      // grid (rank 0 only) gives the agreed answer and starts no collective.
      const stop = () => Boolean(o.stopRequested?.());
      const sync = world ? syncProcesses(state, world, { stopRequested: stop, checksumEvery: settings.checkpointEvery }) : undefined;
      const isLast = (ctx: StepContext) => ctx.closesWindow && (ctx.step >= steps || (sync ? sync.stopAgreed(ctx) : stop()));
      const operators: OperatorFunction<StepContext, StepContext>[] = sync ? [sync.operator] : [];
      if (writer && settings.validationEvery > 0) {
        const v = await validationPrompts(files, settings.validationPrompts, width);
        // A latent teacher's grids are decoded through its VAE.
        const vaeDir = (await resolveTeacherDirs(settings.teacher)).vae;
        vae = vaeDir ? await AutoencoderKL.fromPretrained(vaeDir, { variant: config.variant ?? undefined }) : undefined;
        // A grid can take long: a stop asked while it was drawn makes this step the last too.
        const askAgain = tap((ctx: StepContext) => {
          if (!ctx.last && isLast(ctx)) ctx.last = true;
        });
        operators.push(validation(state, { out: o.out, every: settings.validationEvery, embeds: v.embeds, shape: v.shape, prompts: v.prompts, seed: config.seed, vae }), askAgain);
      }
      if (writer) {
        operators.push(
          // The metrics line before the checkpoint: a run killed between the two redoes the step and logs it again, rather than never.
          metricsJsonl(state, join(o.out, 'metrics.jsonl')),
          checkpoint(state, { out: o.out, every: settings.checkpointEvery, keep: settings.checkpointsTotalLimit }),
          progress(state, { totalSteps: steps, startStep, tty: o.tty }),
          ...(o.operators?.(state) ?? []),
        );
      }
      const steps$ = distill(state, {
        firstMicroStep: firstMicroStep + shard.rank,
        firstStep: startStep,
        microStepStride: shard.size,
        operators,
        settle: yieldToEventLoop(),
        stopAfter: isLast,
        batches: (demand) =>
          embeddingBatches({ files, width, batchSize: config.batchSize, shuffle: o.shuffle ?? true, shuffleBuffer: o.shuffleBuffer, seed: config.seed, epochs: Infinity, startBatch: firstMicroStep, batchStride: shard.size, batchOffset: shard.rank, prefetch: settings.prefetch, demand }),
      });
      const last = await lastValueFrom(steps$, { defaultValue: undefined });
      startStep = last?.step ?? startStep;
    }
    const studentDir = writer ? await exportStudent(state, o.out, { teacherDir: settings.teacher, raw: settings.rawWeights, runConfig }) : join(o.out, 'student');
    if (writer) log.info({ step: startStep, studentDir }, 'student exported');
    return { step: startStep, studentDir, stoppedEarly: startStep < settings.steps, rank: shard.rank };
  } finally {
    await state.replicas?.dispose();
    vae?.dispose();
    disposeDistillState(state);
  }
}
