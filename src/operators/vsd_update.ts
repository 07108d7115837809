/**
 * vsdUpdate: the student's Variational Score Distillation update.
 *
 * g = nan_to_num(σ_t² (ε_teacher − ε_lora)); L = 0.5·mean((x̂0 − sg(x̂0 − g))²), so dL/dx̂0 = g / numel.
 * (With vsdWeighting 'dmd', g = nan_to_num((ε_teacher − ε_lora) / mean|ε − ε_teacher|) per sample;
 * with sdsWeight λ > 0, ε_lora is replaced by (1 − λ)·ε_lora + λ·ε: λ = 1 is SDS.)
 * The student's gradient is that of Σ f_θ(z, y) · sg(g) / numel, taken under a fresh tape by
 * recomputing f_θ(z, y) (tfjs' tape is closure-scoped and cannot reach back into studentForward).
 * Gradients are summed over the accumulation window (each ×1/k; ×1/(k·N) over N MPI processes, whose
 * sums are all-reduced: src/parallel/gradient_sync.ts); on the window's last micro-batch
 * they are clipped (maxGradNorm) and Adam steps — BEFORE the LoRA teacher's step, as officially.
 * A non-finite gradient skips the step (counted; too many in a row stops the run).
 *
 * Reads `epsTeacher`, `epsLora`, `latents`, `noise` (disposes all four: last user), `promptEmbeds`, `x0`
 * (kept), `ctx.timesteps`. Adds metrics.lossVsd (and gradNormStudent / skippedStudent on a window's end).
 */
import type { OperatorFunction } from 'rxjs';
import { tf } from '../tf.ts';
import type { Tensor, Tensor4D } from '../tf.ts';
import { clipGradNorm, type NamedGrads } from '../models/optim.ts';
import type { StepContext } from './context.ts';
import { need, take } from './context.ts';
import { stepOperator } from './operator.ts';
import { updatesStudent, type DistillConfig, type DistillState } from './state.ts';
import { studentX0 } from './student_forward.ts';
import { agreeOnSkip, microBatchWeight, windowGradients } from '../parallel/gradient_sync.ts';

const FLOAT32_MAX = 3.4028234663852886e38;

/** torch.nan_to_num: NaN → 0, ±Inf → ±float32 max. */
export function nanToNum<T extends Tensor>(x: T): T {
  return tf.tidy(() => tf.where(tf.isNaN(x), tf.zerosLike(x), tf.clipByValue(x, -FLOAT32_MAX, FLOAT32_MAX)) as T);
}

/**
 * The score gradient g = nan_to_num(w · (ε_teacher − ε_lora)), w per sample: σ_t² ('official'), or
 * 1 / mean|ε − ε_teacher| ('dmd': DMD's (μ_fake − μ_real) / mean|μ_real − x̂0|, where the factors
 * σ_t/√ᾱ_t of both x0-differences cancel). `noise` is the ε that noiseAtT added.
 *
 * With sdsWeight λ the fake score is (1 − λ)·ε_lora + λ·ε: λ = 0 is VSD, λ = 1 is DreamFusion's SDS
 * (ε_teacher − ε). The SDS part pulls x̂0 towards the teacher's mode wherever the LoRA teacher
 * models the student's samples as well as the teacher does, e.g. pixel noise that a LoRA on
 * low-resolution attention cannot represent, so that VSD's difference there is ~0.
 */
export function scoreGradient(state: DistillState, epsTeacher: Tensor4D, epsLora: Tensor4D, timesteps: number[], noise: Tensor4D): Tensor4D {
  return tf.tidy(() => {
    const weight = state.config.vsdWeighting === 'dmd'
      ? tf.reciprocal(tf.mean(tf.abs(tf.sub(noise, epsTeacher)), [1, 2, 3], true))
      : tf.tensor4d(timesteps.map((t) => 1 - state.schedule.alphaBar(t)), [timesteps.length, 1, 1, 1]);
    const lambda = state.config.sdsWeight;
    const fake = lambda > 0 ? tf.add(tf.mul(epsLora, 1 - lambda), tf.mul(noise, lambda)) : epsLora;
    return nanToNum(tf.mul(weight, tf.sub(epsTeacher, fake)));
  });
}

/** Named gradients of Σ f_θ(z, y)·g / numel: the VSD loss's gradient w.r.t. the student. */
export function studentGradients(state: DistillState, z: Tensor4D, y: Tensor, g: Tensor4D): NamedGrads {
  const params = state.student.store.named();
  const { value, grads } = tf.variableGrads(() => tf.div(tf.sum(tf.mul(studentX0(state, z, y as never), g)), g.size) as tf.Scalar, [...params.values()]);
  value.dispose();
  return new Map([...params].map(([name, v]) => [name, grads[v.name]!]));
}

/**
 * Clips and applies a window's summed gradients unless they are non-finite; returns the pre-clip
 * norm. `agree` turns this process's decision to skip into the run's (every MPI process the same).
 */
export function stepOptimizer(grads: NamedGrads, maxGradNorm: number, apply: (g: NamedGrads) => void, agree: (skip: boolean) => boolean = (skip) => skip): { norm: number; skipped: boolean } {
  const clipped = clipGradNorm(grads, maxGradNorm);
  try {
    const skipped = agree(!Number.isFinite(clipped.norm));
    if (!skipped) apply(clipped.grads);
    return { norm: clipped.norm, skipped };
  } finally {
    tf.dispose([...grads.values(), ...clipped.grads.values()]);
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

/** Sets the student's lr for its next step, then steps. */
function applyStudent(state: DistillState, grads: NamedGrads): void {
  state.studentOptimizer.lr = state.config.studentLr * lrFactor(state.studentOptimizer.step, state.config);
  state.studentOptimizer.apply(grads);
}

export function vsdUpdate(state: DistillState): OperatorFunction<StepContext, StepContext> {
  const flush = () => {
    state.replicas?.collectInto(state);
    if (state.studentGrads.empty) return;
    stepOptimizer(windowGradients(state, 'student'), state.config.maxGradNorm, (g) => applyStudent(state, g), (skip) => agreeOnSkip(state.world, skip));
  };
  return stepOperator((ctx) => {
    if (!updatesStudent(state.config, ctx.step)) {
      if (ctx.closesWindow) state.replicas?.collectInto(state); // the replicas' LoRA gradients
      return;
    }
    const epsTeacher = take(ctx, 'epsTeacher', 'vsdUpdate');
    const epsLora = take(ctx, 'epsLora', 'vsdUpdate');
    const z = take(ctx, 'latents', 'vsdUpdate');
    const noise = take(ctx, 'noise', 'vsdUpdate');
    const toDispose: Tensor[] = [epsTeacher, epsLora, z, noise];
    try {
      const y = need(ctx, 'promptEmbeds', 'vsdUpdate');
      if (!ctx.timesteps) throw new Error('vsdUpdate: ctx.timesteps is missing (noiseAtT must run first)');
      const g = scoreGradient(state, epsTeacher, epsLora, ctx.timesteps, noise);
      toDispose.push(g);
      state.observe?.('scoreGradient', g);
      ctx.metrics.lossVsd = tf.tidy(() => tf.mul(tf.mean(tf.square(g)), 0.5).dataSync()[0]!);
      const grads = studentGradients(state, z, y, g);
      // The window's other micro-batches, computed meanwhile on replica threads, are added first:
      // the sum then runs in micro-batch order, exactly as in a sequential run.
      if (ctx.closesWindow) state.replicas?.collectInto(state);
      state.studentGrads.addOwned(grads, microBatchWeight(state));
      if (ctx.closesWindow) {
        const { norm, skipped } = stepOptimizer(windowGradients(state, 'student'), state.config.maxGradNorm, (gr) => applyStudent(state, gr), (skip) => agreeOnSkip(state.world, skip));
        ctx.metrics.gradNormStudent = norm;
        ctx.metrics.skippedStudent = skipped;
      }
    } finally {
      tf.dispose(toDispose);
    }
  }, flush);
}
