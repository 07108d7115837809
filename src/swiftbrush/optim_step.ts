/**
 * The optimiser steps of a SwiftBrush window, once: clip the window's summed gradients
 * (maxGradNorm), skip the step when they are non-finite, set the student's lr from its schedule,
 * Adam. The operators and the reference loop both call these. Under MPI the window's gradients are
 * first summed over every process (src/parallel/gradient_sync.ts) and all processes skip together.
 */
import { tf } from '../tf.ts';
import { clipCoefficient, globalNorm, type NamedGrads } from '../models/optim.ts';
import type { DistillConfig, DistillState } from '../operators/state.ts';
import { agreeOnSkip, allProcessesGradients } from '../parallel/gradient_sync.ts';

export interface OptimizerStepResult {
  /** The gradients' global norm before clipping. */
  norm: number;
  /** True when the norm was non-finite and no step was taken. */
  skipped: boolean;
}

/**
 * Clips and applies a window's summed gradients unless they are non-finite; disposes `grads`. The
 * clipping coefficient is handed to `apply` (Adam multiplies each gradient by it as it reads it), so
 * no clipped copy of the gradients is made.
 */
export function stepOptimizer(grads: NamedGrads, maxGradNorm: number, apply: (g: NamedGrads, clipScale: number) => void, agree: (skip: boolean) => boolean = (skip) => skip): OptimizerStepResult {
  try {
    const norm = globalNorm(grads.values());
    const skipped = agree(!Number.isFinite(norm));
    if (!skipped) apply(grads, clipCoefficient(norm, maxGradNorm));
    return { norm, skipped };
  } finally {
    tf.dispose([...grads.values()]);
  }
}

/**
 * The student's lr factor for the optimiser step about to be taken (0-based), as diffusers'
 * get_scheduler computes it: linear warm-up, then constant, linear or cosine (half a cycle) decay
 * reaching 0 at `decaySteps`.
 */
export function lrFactor(stepsTaken: number, schedule: { lrWarmupSteps: number; lrScheduler: DistillConfig['lrScheduler']; lrDecaySteps: number }): number {
  const warmup = schedule.lrWarmupSteps;
  if (warmup > 0 && stepsTaken < warmup) return stepsTaken / warmup;
  if (schedule.lrScheduler === 'constant') return 1;
  const progress = Math.min(1, Math.max(0, (stepsTaken - warmup) / Math.max(1, schedule.lrDecaySteps - warmup)));
  return schedule.lrScheduler === 'linear' ? 1 - progress : 0.5 * (1 + Math.cos(Math.PI * progress));
}

/** The student's step on a window's gradients: lr from its schedule, clip, Adam (or skip). */
export function stepStudent(state: DistillState, grads: NamedGrads): OptimizerStepResult {
  return stepOptimizer(allProcessesGradients(state, 'student', grads), state.config.maxGradNorm, (g, clipScale) => {
    state.studentOptimizer.lr = state.config.studentLr * lrFactor(state.studentOptimizer.step, state.config);
    state.studentOptimizer.apply(g, clipScale);
  }, (skip) => agreeOnSkip(state.world, skip));
}

/** The LoRA teacher's step on a window's gradients: clip, Adam (or skip). */
export function stepLora(state: DistillState, grads: NamedGrads): OptimizerStepResult {
  return stepOptimizer(allProcessesGradients(state, 'lora', grads), state.config.maxGradNorm, (g, clipScale) => state.loraOptimizer.apply(g, clipScale), (skip) => agreeOnSkip(state.world, skip));
}

/** At the end of the data, a partial window's gradients still step (as accelerate does). */
export function flushStudent(state: DistillState): void {
  if (!state.studentGrads.empty) stepStudent(state, state.studentGrads.take());
}

export function flushLora(state: DistillState): void {
  if (!state.loraGrads.empty) stepLora(state, state.loraGrads.take());
}

/** After a window's steps, the student's EMA moves towards the new weights (decay for `step` steps taken). */
export function updateEma(state: DistillState, step: number): void {
  state.ema?.update(state.ema.decayAt(step));
}
