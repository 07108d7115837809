/**
 * Everything the distillation operators share, passed to each explicitly (no module state):
 * the teacher UNet with its LoRA adapter (one model: LoRA off = frozen teacher, on = LoRA teacher),
 * the student (a trainable copy of the teacher), the schedule, both optimisers, their gradient
 * accumulators, the student's EMA, the source of random draws and the null-prompt embedding.
 */
import { tf } from '../tf.ts';
import type { Tensor3D } from '../tf.ts';
import { UNet2DConditionModel } from '../models/unet_2d_condition.ts';
import { countParams, distillMemoryPlan, inspectUNetWeights, refuseIfTooBigForWasm, type MemoryPlan } from '../models/memory.ts';
import { LoraAdapter } from '../models/lora.ts';
import { NoiseSchedule } from '../models/schedule.ts';
import { Adam, EmaWeights, GradAccumulator } from '../models/optim.ts';
import { SeededDraws, type Draws } from '../swiftbrush/draws.ts';
import type { StepObserver } from '../swiftbrush/observer.ts';
import type { World } from '../parallel/mpi.ts';
import { pipelineLayouts, resolvePipelineDirs, SCHEDULER_CONFIG, type PipelineDirs } from '../models/pipeline_folder.ts';

import type { DistillConfig } from '../swiftbrush/config.ts';

export { OFFICIAL_DEFAULTS, type DistillConfig } from '../swiftbrush/config.ts';

export interface DistillState {
  readonly config: DistillConfig;
  readonly schedule: NoiseSchedule;
  /** Frozen weights; LoRA adapter attached (switched by `lora.with(on, fn)`). */
  readonly teacher: UNet2DConditionModel;
  readonly lora: LoraAdapter;
  readonly student: UNet2DConditionModel;
  readonly studentOptimizer: Adam;
  readonly loraOptimizer: Adam;
  readonly studentGrads: GradAccumulator;
  readonly loraGrads: GradAccumulator;
  readonly ema: EmaWeights | null;
  /** Every random draw of a micro-step (seeded by config.seed unless given, see draws.ts). */
  readonly draws: Draws;
  /** Sees each micro-step's intermediate tensors as they are computed (none by default). */
  readonly observe?: StepObserver;
  /** y0: the null prompt's embedding [1, L, D]. */
  readonly nullEmbeds: Tensor3D;
  /** Data-parallel replica threads (set by runDistillation when config.replicas > 1). */
  replicas?: Replicas;
  /** The MPI world of a multi-process run (set by runDistillation under mpirun / srun / --mpi). */
  world?: World;
  /** Counters that survive a resume. */
  readonly counters: { nonFiniteInARow: number; skippedSteps: number };
  /** The run's complete settings, written into every checkpoint so that --resume restores them. */
  runSettings?: object;
}

/**
 * What the operators use of the data-parallel replica threads. `ReplicaPool`
 * (src/parallel/replica_pool.ts) implements it; declared here so that the state does not depend on
 * the threads' module.
 */
export interface Replicas {
  /** Slot for a micro-batch that does not close its window. */
  slotFor(windowIndex: number): number;
  /** Hands one micro-batch (of optimiser step `step`) to replica `index`. */
  submit(index: number, microStep: number, step: number, embeds: Float32Array, batchSize: number, state: DistillState): void;
  /** Waits for every busy replica and adds its gradients to `state`'s accumulators. */
  collectInto(state: DistillState): void;
  /** Writes the current student and LoRA weights for the replicas. */
  publish(): void;
  dispose(): Promise<void>;
}

/**
 * The teacher's components: a diffusers pipeline folder (unet/, scheduler/, vae/ for a latent
 * model) or a UNet folder inside one. A teacher without a scheduler is refused, naming both layouts.
 */
export async function resolveTeacherDirs(dir: string): Promise<PipelineDirs & { scheduler: string }> {
  const dirs = resolvePipelineDirs(dir);
  if (!dirs.scheduler) throw new Error(`${dir}: no scheduler (${SCHEDULER_CONFIG}); a teacher is ${pipelineLayouts(dir)}`);
  return { ...dirs, scheduler: dirs.scheduler };
}

/**
 * Loads the teacher twice (frozen + LoRA, and the trainable student) and builds the optimisers.
 * `draws` defaults to the run's seeded draws; draws that bring a guidance scale replace the config's.
 */
export async function createDistillState(options: { teacherDir: string; nullEmbeds: Float32Array; embedShape: [number, number]; config: DistillConfig; draws?: Draws; observe?: StepObserver }): Promise<DistillState> {
  const draws: Draws = options.draws ?? new SeededDraws(options.config.seed);
  const config = draws.guidanceScale === undefined ? options.config : { ...options.config, guidanceScale: draws.guidanceScale };
  const dirs = await resolveTeacherDirs(options.teacherDir);
  const schedule = await NoiseSchedule.load(dirs.scheduler);
  const plan = await planDistillation(options.teacherDir, config, options.embedShape[0]);
  refuseIfTooBigForWasm(plan.plan, tf.getBackend(), `distilling ${dirs.unet} (${plan.params.toLocaleString('en')} parameters)`);
  const variant = config.variant ?? undefined;
  const teacher = await UNet2DConditionModel.fromPretrained(dirs.unet, { trainable: false, variant });
  const student = await UNet2DConditionModel.fromPretrained(dirs.unet, { trainable: true, variant });
  const lora = LoraAdapter.attach(teacher, { rank: config.loraRank, alpha: config.loraAlpha, targetModules: config.loraTargets }, config.seed);
  const adam = (lr: number) => ({ lr, beta1: config.adamBeta1, beta2: config.adamBeta2, eps: config.adamEps, weightDecay: config.adamWeightDecay });
  const studentParams = student.store.named();
  return {
    config,
    schedule,
    teacher,
    lora,
    student,
    studentOptimizer: new Adam(studentParams, adam(config.studentLr)),
    loraOptimizer: new Adam(lora.store.named(), adam(config.loraLr)),
    studentGrads: new GradAccumulator(),
    loraGrads: new GradAccumulator(),
    ema: config.emaDecay > 0 ? new EmaWeights(studentParams, config.emaDecay) : null,
    draws,
    ...(options.observe ? { observe: options.observe } : {}),
    nullEmbeds: tf.tensor3d(options.nullEmbeds, [1, ...options.embedShape]),
    counters: { nonFiniteInARow: 0, skippedSteps: 0 },
  };
}

/**
 * What a distillation of this teacher will hold (from its config.json and the weight files'
 * headers: nothing is loaded), and the parameter counts of the config and of the files.
 */
export async function planDistillation(teacherDir: string, config: DistillConfig, tokens: number): Promise<{ plan: MemoryPlan; params: number; fileParams: number; files: string[]; dtypes: string[] }> {
  // Only the UNet's config and weight headers: a bare UNet folder, without a scheduler, plans too.
  const dirs = resolvePipelineDirs(teacherDir);
  const info = await inspectUNetWeights(dirs.unet, config.variant ?? undefined);
  const plan = distillMemoryPlan({ specs: info.specs, config: info.config, batchSize: config.batchSize, gradAccum: config.gradAccum, emaDecay: config.emaDecay, loraRank: config.loraRank, loraTargets: config.loraTargets, tokens });
  return { plan, params: countParams(info.specs), fileParams: info.fileParams, files: info.files, dtypes: info.dtypes };
}

export function disposeDistillState(state: DistillState): void {
  state.teacher.dispose();
  state.lora.dispose();
  state.student.dispose();
  state.studentOptimizer.dispose();
  state.loraOptimizer.dispose();
  state.studentGrads.dispose();
  state.loraGrads.dispose();
  state.ema?.dispose();
  state.nullEmbeds.dispose();
}

/** Kept importable from here for code that reads it with the config; defined in src/swiftbrush/rules.ts. */
export { updatesStudent } from '../swiftbrush/rules.ts';
