/**
 * Training checkpoints, one format, written and read here.
 *
 * A checkpoint is a folder `OUT/checkpoint-<step>/` (accelerate's naming) holding:
 * - `unet/`, `unet_ema/`: the student and its EMA as diffusers UNets (config.json +
 *   diffusion_pytorch_model.safetensors, PyTorch layouts); no `unet_ema/` when EMA is off;
 * - `unet_lora/`: the LoRA teacher's adapter in PEFT's layout;
 * - `optimizer.safetensors`, `optimizer_lora.safetensors`: both Adams' moments under PyTorch's
 *   names (`<param>.exp_avg`, `<param>.exp_avg_sq`);
 * - `state.json`: step, micro-step (the stream position to resume from), counters, both
 *   optimisers' step counts, the config and the run's settings.
 *
 * Memory: a snapshot holds clones of the live tensors, which share their data (no copy); the next
 * update gives each Variable a new buffer and leaves the clone's intact, so the files describe the
 * snapshot's step even when later steps run while they are written. Files are streamed tensor by
 * tensor (one tensor on the host at a time) and read back the same way.
 *
 * Folders: each checkpoint is written into a hidden temp folder and renamed into place only when
 * complete; a folder to be deleted (pruned, or replaced by a new save of its step) is first renamed
 * to a hidden name and only then removed. So a kill at any moment leaves every `checkpoint-<step>`
 * folder complete, never half-written nor half-deleted; the hidden leftovers of a killed run are
 * removed by the next save or resume. Only the newest `keep` are kept.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { tf } from '../tf.ts';
import type { Tensor, Variable } from '../tf.ts';
import { WEIGHTS_NAME } from '../models/unet_2d_condition.ts';
import { ADAPTER_WEIGHTS_NAME } from '../models/lora.ts';
import { disposeAdamState, readMoment, type Adam, type AdamState } from '../models/optim.ts';
import { writeSafetensorsStreaming } from '../models/safetensors.ts';
import { WeightFiles } from '../models/weights.ts';
import type { DistillState } from '../operators/state.ts';
import { writeJsonAtomic } from '../util/fs.ts';

const STUDENT_DIR = 'unet';
const EMA_DIR = 'unet_ema';
const LORA_DIR = 'unet_lora';
const STUDENT_OPTIMIZER = 'optimizer.safetensors';
const LORA_OPTIMIZER = 'optimizer_lora.safetensors';
const STATE_JSON = 'state.json';

// ---------------------------------------------------------------------------------------------
// Folders: checkpoint-<step>, written atomically, pruned to the newest `keep`.

const PATTERN = /^checkpoint-(\d+)$/;
/** Hidden folders being written (`.tmp-<pid>`) or deleted (`.old-<pid>`). */
const HIDDEN = /^\.checkpoint-\d+\.(tmp|old)-\d+$/;

/** The `checkpoint-<step>` folders in `outDir`, oldest first. */
export async function listCheckpoints(outDir: string): Promise<{ step: number; path: string }[]> {
  let names: string[];
  try {
    names = await readdir(outDir);
  } catch {
    return [];
  }
  const found: { step: number; path: string }[] = [];
  for (const name of names) {
    const m = PATTERN.exec(name);
    if (m && (await stat(join(outDir, name))).isDirectory()) found.push({ step: Number(m[1]), path: join(outDir, name) });
  }
  return found.sort((a, b) => a.step - b.step);
}

export async function latestCheckpoint(outDir: string): Promise<{ step: number; path: string } | undefined> {
  return (await listCheckpoints(outDir)).at(-1);
}

/** Removes a checkpoint folder by renaming it to a hidden name first, so no kill leaves a part of it under its own name. */
async function discard(outDir: string, name: string): Promise<void> {
  const trash = join(outDir, `.${name}.old-${process.pid}`);
  await rm(trash, { recursive: true, force: true });
  await rename(join(outDir, name), trash);
  await rm(trash, { recursive: true, force: true });
}

/** Writes checkpoint-<step> through `write(tmpDir)`, renames it into place, prunes to `keep`. */
export async function saveCheckpoint(outDir: string, step: number, write: (dir: string) => Promise<void>, keep = Infinity): Promise<string> {
  await mkdir(outDir, { recursive: true });
  const name = `checkpoint-${step}`;
  const final = join(outDir, name);
  const tmp = join(outDir, `.${name}.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    await write(tmp);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  if (existsSync(final)) await discard(outDir, name);
  await rename(tmp, final);
  const all = await listCheckpoints(outDir);
  for (const old of all.slice(0, Math.max(0, all.length - keep))) await discard(outDir, `checkpoint-${old.step}`);
  await removeLeftovers(outDir); // this save's own hidden folders are gone by now
  return final;
}

/** Removes the hidden folders a killed run left mid-write or mid-delete (call when no save is under way). */
export async function removeLeftovers(outDir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(outDir);
  } catch {
    return;
  }
  for (const name of names) if (HIDDEN.test(name)) await rm(join(outDir, name), { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// The training state: snapshot, write, read.

/** What a training checkpoint's state.json holds besides the tensors. */
export interface TrainingProgress {
  step: number;
  /** Micro-batches consumed = the stream's batchIndex to resume from. */
  microStep: number;
  counters: { nonFiniteInARow: number; skippedSteps: number };
}

/**
 * The training state at one step, as clones of the live tensors (tfjs layouts, keyed by diffusers
 * / PEFT names): no copy is made when it is taken. Owns its tensors: `writeTrainingSnapshot`
 * disposes them, else `disposeTrainingSnapshot`.
 */
export interface TrainingSnapshot {
  progress: TrainingProgress;
  student: Map<string, Tensor>;
  studentEma: Map<string, Tensor> | null;
  lora: Map<string, Tensor>;
  studentOptimizer: AdamState;
  loraOptimizer: AdamState;
}

/** Clones sharing each Variable's data; `tf.keep` so that an enclosing tidy cannot free them. */
function cloneAll(values: Map<string, Variable>): Map<string, Tensor> {
  return new Map([...values].map(([name, v]) => [name, tf.keep(tf.clone(v))]));
}

/**
 * Takes the training state at this step, synchronously and without copying (see the file's
 * comment). Only taken on window boundaries, where the gradient accumulators are empty.
 */
export function snapshotTrainingState(state: DistillState, progress: TrainingProgress): TrainingSnapshot {
  return {
    progress: { ...progress, counters: { ...progress.counters } },
    student: cloneAll(state.student.store.named()),
    studentEma: state.ema ? cloneAll(state.ema.shadow) : null,
    lora: cloneAll(state.lora.store.named()),
    studentOptimizer: state.studentOptimizer.snapshotState(),
    loraOptimizer: state.loraOptimizer.snapshotState(),
  };
}

/** Frees a snapshot's tensors (a no-op for those already freed). */
export function disposeTrainingSnapshot(snapshot: TrainingSnapshot): void {
  tf.dispose([...snapshot.student.values(), ...(snapshot.studentEma?.values() ?? []), ...snapshot.lora.values()]);
  disposeAdamState(snapshot.studentOptimizer);
  disposeAdamState(snapshot.loraOptimizer);
}

/** Adam's moments under PyTorch's names, streamed one tensor at a time. */
function writeOptimizerState(path: string, state: AdamState): void {
  const specs = Object.fromEntries([...state.moments].map(([name, m]) => [name, { shape: m.shape, dtype: 'F32' as const }]));
  writeSafetensorsStreaming(path, specs, (name) => readMoment(state.moments.get(name)!));
}

/**
 * Writes a snapshot as a training checkpoint folder (the layout of the file's comment), each file
 * streamed one tensor at a time, and disposes the snapshot (also when a write fails). Each part's
 * clones are freed as soon as its files are written.
 */
export async function writeTrainingSnapshot(state: DistillState, snapshot: TrainingSnapshot, dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true });
    await state.student.savePretrained(join(dir, STUDENT_DIR), snapshot.student);
    tf.dispose([...snapshot.student.values()]);
    if (snapshot.studentEma) {
      await state.student.savePretrained(join(dir, EMA_DIR), snapshot.studentEma);
      tf.dispose([...snapshot.studentEma.values()]);
    }
    await state.lora.save(join(dir, LORA_DIR), snapshot.lora);
    tf.dispose([...snapshot.lora.values()]);
    writeOptimizerState(join(dir, STUDENT_OPTIMIZER), snapshot.studentOptimizer);
    disposeAdamState(snapshot.studentOptimizer);
    writeOptimizerState(join(dir, LORA_OPTIMIZER), snapshot.loraOptimizer);
    disposeAdamState(snapshot.loraOptimizer);
    await writeJsonAtomic(join(dir, STATE_JSON), {
      ...snapshot.progress,
      student_optimizer_step: snapshot.studentOptimizer.step,
      lora_optimizer_step: snapshot.loraOptimizer.step,
      config: state.config,
      ...(state.runSettings ? { settings: state.runSettings } : {}),
    });
  } finally {
    disposeTrainingSnapshot(snapshot);
  }
}

/** Restores one optimiser's moments from `dir/name`, read one tensor at a time. */
function readOptimizerState(optimizer: Adam, step: number, dir: string, name: string): void {
  const file = WeightFiles.open(dir, name);
  try {
    optimizer.loadState(step, file, join(dir, name));
  } finally {
    file.close();
  }
}

/**
 * Restores what writeTrainingSnapshot wrote, every file read one tensor at a time; returns the
 * progress to resume from. A checkpoint without `unet_ema/` (written with --ema-decay 0) resumed
 * with EMA on starts the EMA at its weights.
 */
export async function readTrainingState(state: DistillState, dir: string): Promise<TrainingProgress> {
  const json = JSON.parse(await readFile(join(dir, STATE_JSON), 'utf8')) as TrainingProgress & { student_optimizer_step: number; lora_optimizer_step: number };
  const unet = WeightFiles.open(join(dir, STUDENT_DIR), WEIGHTS_NAME);
  try {
    state.student.loadStateDict(unet);
  } finally {
    unet.close();
  }
  if (state.ema) {
    // EMA shadows are stored in PyTorch layout (a loadable diffusers UNet).
    // A run saved without EMA (--ema-decay 0) has none: the average starts at the resumed weights.
    if (existsSync(join(dir, EMA_DIR))) {
      const ema = WeightFiles.open(join(dir, EMA_DIR), WEIGHTS_NAME);
      try {
        state.student.store.loadStateDict(ema, ema.description, 'the student UNet', state.ema.shadow);
      } finally {
        ema.close();
      }
    } else {
      for (const [name, v] of state.student.store.named()) state.ema.get(name).assign(v);
    }
  }
  const lora = WeightFiles.open(join(dir, LORA_DIR), ADAPTER_WEIGHTS_NAME);
  try {
    state.lora.loadStateDict(lora, join(dir, LORA_DIR));
  } finally {
    lora.close();
  }
  readOptimizerState(state.studentOptimizer, json.student_optimizer_step, dir, STUDENT_OPTIMIZER);
  readOptimizerState(state.loraOptimizer, json.lora_optimizer_step, dir, LORA_OPTIMIZER);
  Object.assign(state.counters, json.counters);
  return { step: json.step, microStep: json.microStep, counters: json.counters };
}
