/**
 * vsdUpdate: the student's Variational Score Distillation update.
 *
 * g = nan_to_num(σ_t² (ε_teacher − ε_lora)); L = 0.5·mean((x̂0 − sg(x̂0 − g))²), so dL/dx̂0 = g / numel.
 * (With vsdWeighting 'dmd', g = nan_to_num((ε_teacher − ε_lora) / mean|ε − ε_teacher|) per sample;
 * with sdsWeight λ > 0, ε_lora is replaced by (1 − λ)·ε_lora + λ·ε: λ = 1 is SDS.)
 * The student's gradient is that of Σ f_θ(z, y) · sg(g) / numel, taken under a fresh tape by
 * recomputing f_θ(z, y) (tfjs' tape is closure-scoped and cannot reach back into studentForward).
 * Gradients are summed over the accumulation window (each ×1/k); on the window's last micro-batch
 * they are clipped (maxGradNorm) and Adam steps — BEFORE the LoRA teacher's step, as officially.
 * A non-finite gradient skips the step (counted; too many in a row stops the run).
 * The math is in src/swiftbrush (math.ts, optim_step.ts); this operator moves tensors.
 *
 * Reads `epsTeacher`, `epsLora`, `latents`, `noise` (disposes all four: last user), `promptEmbeds`, `x0`
 * (kept), `ctx.timesteps`. Adds metrics.lossVsd (and gradNormStudent / skippedStudent on a window's end).
 */
import type { OperatorFunction } from 'rxjs';
import { tf } from '../tf.ts';
import type { Tensor } from '../tf.ts';
import type { StepContext } from './context.ts';
import { microBatchWeight } from '../parallel/gradient_sync.ts';
import { need, take } from './context.ts';
import { stepOperator } from './operator.ts';
import type { DistillState } from './state.ts';
import { scoreGradient, studentGradients, vsdLossValue } from '../swiftbrush/math.ts';
import { flushStudent, stepStudent } from '../swiftbrush/optim_step.ts';
import { updatesStudent } from '../swiftbrush/rules.ts';

export function vsdUpdate(state: DistillState): OperatorFunction<StepContext, StepContext> {
  const flush = () => {
    state.replicas?.collectInto(state);
    flushStudent(state);
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
      ctx.metrics.lossVsd = vsdLossValue(g);
      const grads = studentGradients(state, z, y, g);
      // The window's other micro-batches, computed meanwhile on replica threads, are added first:
      // the sum then runs in micro-batch order, exactly as in a sequential run.
      if (ctx.closesWindow) state.replicas?.collectInto(state);
      state.studentGrads.addOwned(grads, microBatchWeight(state));
      if (ctx.closesWindow) {
        const { norm, skipped } = stepStudent(state, state.studentGrads.take());
        ctx.metrics.gradNormStudent = norm;
        ctx.metrics.skippedStudent = skipped;
      }
    } finally {
      tf.dispose(toDispose);
    }
  }, flush);
}
