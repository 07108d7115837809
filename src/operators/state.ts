/**
 * Everything the distillation operators share, passed to each explicitly (no module state):
 * the teacher UNet with its LoRA adapter (one model: LoRA off = frozen teacher, on = LoRA teacher),
 * the student (a trainable copy of the teacher), the schedule, both optimisers, their gradient
 * accumulators, the student's EMA, the source of random draws and the null-prompt embedding.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tf } from '../tf.ts';
import type { Tensor3D } from '../tf.ts';
import { UNet2DConditionModel } from '../models/unet_2d_condition.ts';
import { LoraAdapter } from '../models/lora.ts';
import { NoiseSchedule } from '../models/schedule.ts';
import { Adam, EmaWeights, GradAccumulator } from '../models/optim.ts';
import { readSafetensors, writeSafetensors } from '../models/safetensors.ts';
import { SeededDraws, type Draws } from '../swiftbrush/draws.ts';
import type { StepObserver } from '../swiftbrush/observer.ts';
import type { World } from '../parallel/mpi.ts';
import { writeJsonAtomic } from '../util/fs.ts';

/** Hyper-parameters; defaults are the official SwiftBrush script's (SD 2.1-base). */
export interface DistillConfig {
  seed: number;
  batchSize: number;
  gradAccum: number;
  guidanceScale: number;
  studentLr: number;
  /** Linear warm-up of the student's lr over its first steps (0 = none), as diffusers' schedulers do. */
  lrWarmupSteps: number;
  /**
   * The student's lr after warm-up, as diffusers' get_scheduler names it: 'constant' (official;
   * with warm-up it is constant_with_warmup), or 'linear' / 'cosine' decay to 0 at lrDecaySteps.
   */
  lrScheduler: 'constant' | 'linear' | 'cosine';
  /** diffusers' num_training_steps for the decaying schedules; 0 = the run's --steps. */
  lrDecaySteps: number;
  loraLr: number;
  loraRank: number;
  loraAlpha: number;
  loraTargets: string[];
  maxGradNorm: number;
  /** EMA of the student; 0 disables it. */
  emaDecay: number;
  /** VSD timesteps t ∈ [tMin, tMax] (inclusive), the LoRA teacher's t′ ∈ [0, T−1]. */
  tMin: number;
  tMax: number;
  /**
   * The LoRA teacher's loss: 'official' = mse(√ᾱ_t′·ε_φ, √ᾱ_t′·ε′) (SwiftBrush; weak at high t′),
   * 'epsilon' = mse(ε_φ, ε′), the plain denoising loss of diffusers' training scripts (every t′ alike).
   */
  loraLossWeighting: 'official' | 'epsilon';
  /**
   * The score gradient's weighting per sample: 'official' = σ_t² (ε_teacher − ε_lora) (SwiftBrush,
   * ProlificDreamer's w(t)); 'dmd' = (ε_teacher − ε_lora) / mean|ε − ε_teacher|, DMD's (Yin et al.
   * 2024, eq. 8) normalisation (μ_fake − μ_real) / mean|μ_real − x̂0| written in ε: the difference of
   * the two x0-predictions divided by how far the teacher's x0-prediction is from x̂0.
   */
  vsdWeighting: 'official' | 'dmd';
  /**
   * λ in [0, 1]: the score gradient uses (1 − λ)·ε_lora + λ·ε as the fake score, i.e. mixes
   * DreamFusion's SDS (ε_teacher − ε) into VSD. 0 (official) is pure VSD.
   */
  sdsWeight: number;
  /** Probability (one draw per micro-batch) that the LoRA teacher trains on the null prompt. */
  loraNullPromptProb: number;
  /**
   * Threads computing micro-batches of a window at once (1 = the main thread alone). Each extra
   * replica takes whole micro-batches, so it needs gradAccum ≥ replicas; the result equals the
   * sequential run's up to float summation order.
   */
  replicas: number;
  /**
   * The student steps on every N-th optimiser step only; the LoRA teacher on every one (DMD2's
   * two-time-scale update, `dfake_gen_update_ratio`): the LoRA teacher tracks the student with N
   * times the updates, and the steps in between skip the teacher passes and the student's backward.
   * 1 = official (both every step). The first student step is step N−1.
   */
  studentUpdateEvery: number;
  /** Stop after this many consecutive windows with a non-finite loss or gradient. */
  maxNonFiniteSteps: number;
  adamBeta1: number;
  adamBeta2: number;
  adamEps: number;
  adamWeightDecay: number;
}

export const OFFICIAL_DEFAULTS: DistillConfig = {
  seed: 0,
  batchSize: 16,
  gradAccum: 1,
  guidanceScale: 4.5,
  studentLr: 1e-6,
  lrWarmupSteps: 0,
  lrScheduler: 'constant',
  lrDecaySteps: 0,
  loraLr: 1e-3,
  loraRank: 64,
  loraAlpha: 108,
  loraTargets: ['to_q', 'to_v'],
  maxGradNorm: 1.0,
  emaDecay: 0.9999,
  tMin: 20,
  tMax: 980,
  loraLossWeighting: 'official',
  vsdWeighting: 'official',
  sdsWeight: 0,
  loraNullPromptProb: 0.1,
  replicas: 1,
  studentUpdateEvery: 1,
  maxNonFiniteSteps: 10,
  adamBeta1: 0.9,
  adamBeta2: 0.999,
  adamEps: 1e-8,
  adamWeightDecay: 0,
};

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

/** The teacher folder may be a pipeline (unet/, scheduler/) or a bare unet folder. */
export async function resolveTeacherDirs(dir: string): Promise<{ unet: string; scheduler: string }> {
  const exists = async (p: string) => readFile(p).then(() => true, () => false);
  if (await exists(join(dir, 'unet', 'config.json'))) return { unet: join(dir, 'unet'), scheduler: join(dir, 'scheduler') };
  if (await exists(join(dir, 'config.json'))) return { unet: dir, scheduler: join(dir, '..', 'scheduler') };
  throw new Error(`${dir}: no diffusers UNet here (expected unet/config.json or config.json)`);
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
  const teacher = await UNet2DConditionModel.fromPretrained(dirs.unet, { trainable: false });
  const student = await UNet2DConditionModel.fromPretrained(dirs.unet, { trainable: true });
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

/** What a training checkpoint's state.json holds besides the tensors. */
export interface TrainingProgress {
  step: number;
  /** Micro-batches consumed = the stream's batchIndex to resume from. */
  microStep: number;
  counters: { nonFiniteInARow: number; skippedSteps: number };
}

type Arrays = Record<string, { shape: number[]; data: Float32Array }>;

/** Host copies of everything a training checkpoint holds, taken synchronously at one step. */
export interface TrainingSnapshot {
  progress: TrainingProgress;
  student: Arrays;
  studentEma: Arrays | null;
  lora: Arrays;
  studentOptimizer: { step: number; tensors: Arrays };
  loraOptimizer: { step: number; tensors: Arrays };
}

/**
 * Copies the training state to host memory NOW (synchronously), so the files written afterwards
 * describe exactly this step even while later steps run. Only taken on window boundaries, where
 * the gradient accumulators are empty.
 */
export function snapshotTrainingState(state: DistillState, progress: TrainingProgress): TrainingSnapshot {
  return {
    progress: { ...progress, counters: { ...progress.counters } },
    student: state.student.stateDict(),
    studentEma: state.ema ? state.student.store.torchStateDict(state.ema.shadow) : null,
    lora: state.lora.stateDict(),
    studentOptimizer: { step: state.studentOptimizer.step, tensors: state.studentOptimizer.stateTensors() },
    loraOptimizer: { step: state.loraOptimizer.step, tensors: state.loraOptimizer.stateTensors() },
  };
}

/**
 * Writes a snapshot as a training checkpoint folder: student `unet/` and `unet_ema/` (diffusers
 * layout), `unet_lora/` (PEFT), both optimisers' moments (PyTorch's exp_avg / exp_avg_sq names),
 * and `state.json` (step, micro-step = stream position, counters, config).
 */
export async function writeTrainingSnapshot(state: DistillState, snapshot: TrainingSnapshot, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await state.student.savePretrained(join(dir, 'unet'), snapshot.student);
  if (snapshot.studentEma) await state.student.savePretrained(join(dir, 'unet_ema'), snapshot.studentEma);
  await state.lora.save(join(dir, 'unet_lora'), snapshot.lora);
  await writeSafetensors(join(dir, 'optimizer.safetensors'), snapshot.studentOptimizer.tensors);
  await writeSafetensors(join(dir, 'optimizer_lora.safetensors'), snapshot.loraOptimizer.tensors);
  await writeJsonAtomic(join(dir, 'state.json'), {
    ...snapshot.progress,
    student_optimizer_step: snapshot.studentOptimizer.step,
    lora_optimizer_step: snapshot.loraOptimizer.step,
    config: state.config,
  });
}

/**
 * Restores what writeTrainingSnapshot wrote; returns the progress to resume from. A checkpoint
 * without `unet_ema/` (written with --ema-decay 0) resumed with EMA on starts the EMA at its weights.
 */
export async function readTrainingState(state: DistillState, dir: string): Promise<TrainingProgress> {
  const json = JSON.parse(await readFile(join(dir, 'state.json'), 'utf8')) as TrainingProgress & { student_optimizer_step: number; lora_optimizer_step: number };
  const weights = async (path: string) => (await readSafetensors(join(dir, path))).tensors;
  state.student.loadStateDict(await weights('unet/diffusion_pytorch_model.safetensors'), join(dir, 'unet'));
  if (state.ema) {
    // EMA shadows are stored in PyTorch layout (a loadable diffusers UNet): load through a scratch
    // model. A run saved without EMA (--ema-decay 0) has none: the average starts at the resumed weights.
    const source = existsSync(join(dir, 'unet_ema')) ? UNet2DConditionModel.fromConfig(state.student.config, { trainable: false }) : null;
    try {
      if (source) source.loadStateDict(await weights('unet_ema/diffusion_pytorch_model.safetensors'), join(dir, 'unet_ema'));
      for (const [name, v] of (source ?? state.student).store.named()) state.ema.get(name).assign(v);
    } finally {
      source?.dispose(); // also when a bad unet_ema fails to load
    }
  }
  state.lora.loadStateDict(await weights('unet_lora/adapter_model.safetensors'), join(dir, 'unet_lora'));
  state.studentOptimizer.loadState(json.student_optimizer_step, await weights('optimizer.safetensors'), join(dir, 'optimizer.safetensors'));
  state.loraOptimizer.loadState(json.lora_optimizer_step, await weights('optimizer_lora.safetensors'), join(dir, 'optimizer_lora.safetensors'));
  Object.assign(state.counters, json.counters);
  return { step: json.step, microStep: json.microStep, counters: json.counters };
}

/** Whether optimiser step `step` (0-based: the steps completed before it) updates the student. */
export function updatesStudent(config: Pick<DistillConfig, 'studentUpdateEvery'>, step: number): boolean {
  return (step + 1) % config.studentUpdateEvery === 0;
}
