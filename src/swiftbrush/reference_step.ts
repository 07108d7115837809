/**
 * The reference loop: the SwiftBrush step written the way the official PyTorch script writes it,
 * micro-batch by micro-batch, with no RxJS. It calls the same math (math.ts), optimiser steps
 * (optim_step.ts), training rules (rules.ts) and draws as the operators, but differentiates the
 * official loss itself, L = 0.5·mse(x̂0, sg(x̂0 − g)), under one tape over f_θ(z, y) → L, where the
 * stream takes the gradient of Σ f_θ(z, y)·sg(g)/numel (the same gradient). Both run the student
 * forward twice (once untaped for the teachers, once on the tape), so the benchmark's difference
 * between them is the stream's own overhead. A test keeps the stream equal to this loop for every
 * option.
 */
import { tf } from '../tf.ts';
import type { Tensor, Tensor3D, Tensor4D } from '../tf.ts';
import type { NamedGrads } from '../models/optim.ts';
import { variableGrads } from '../models/backprop.ts';
import type { DistillState } from '../operators/state.ts';
import { guidedEpsilon, latentShape, loraCondition, loraGradients, loraTrainingSample, scoreGradient, studentX0, vsdLossValue } from './math.ts';
import { flushLora, flushStudent, stepLora, stepStudent, updateEma } from './optim_step.ts';
import { finishWindow, updatesStudent, windowPosition, type WindowPosition } from './rules.ts';

/** What one micro-batch reports (the stream's `ctx.metrics`). */
export interface ReferenceMetrics {
  lossVsd?: number;
  lossLora?: number;
  gradNormStudent?: number;
  gradNormLora?: number;
  skippedStudent?: boolean;
  skippedLora?: boolean;
}

/**
 * The student's part of one micro-batch: x̂0 (no tape) for both teachers and the LoRA teacher, then
 * the gradients of L = 0.5·mean((x̂0 − sg(x̂0 − g))²) w.r.t. every student weight under one tape over
 * f_θ(z, y) → L, where sg(x̂0 − g) is built from the untaped x̂0 (bitwise the same forward).
 */
function studentPart(state: DistillState, microStep: number, z: Tensor4D, y: Tensor3D): { x0: Tensor4D; lossVsd: number; grads: NamedGrads } {
  const c = state.config;
  const b = y.shape[0];
  const x0 = studentX0(state, z, y);
  const timesteps = state.draws.timesteps(microStep, b, c.tMin, c.tMax);
  const noise = state.draws.noise(microStep, z.shape);
  try {
    const target = tf.tidy(() => {
      const xt = state.schedule.addNoise(x0, noise, timesteps) as Tensor4D;
      const epsTeacher = guidedEpsilon(state, false, xt, timesteps, y, c.guidanceScale);
      const epsLora = guidedEpsilon(state, true, xt, timesteps, y, c.guidanceScale);
      return tf.keep(scoreGradient(state, epsTeacher, epsLora, timesteps, noise));
    });
    const lossVsd = vsdLossValue(target);
    const sgTarget = tf.sub(x0, target); // sg(x̂0 − g)
    target.dispose();
    const params = state.student.store.named();
    try {
      const { value, grads } = variableGrads(() => tf.mul(tf.mean(tf.square(tf.sub(studentX0(state, z, y), sgTarget))), 0.5) as tf.Scalar, [...params.values()]);
      value.dispose();
      return { x0, lossVsd, grads: new Map([...params].map(([name, v]) => [name, grads[v.name]!])) };
    } finally {
      sgTarget.dispose();
    }
  } catch (err) {
    x0.dispose();
    throw err;
  } finally {
    noise.dispose();
  }
}

/**
 * One micro-batch at `position` (its embeddings `y` [B, L, D] stay the caller's): the student's and
 * the LoRA teacher's gradients join the window's accumulators (×1/k); on the window's last
 * micro-batch both optimisers step (the student first), the window closes and the EMA follows.
 * Returns the metrics and the optimiser steps completed after this micro-batch.
 */
export function referenceStep(state: DistillState, microStep: number, position: WindowPosition, y: Tensor3D): { metrics: ReferenceMetrics; step: number } {
  const c = state.config;
  const metrics: ReferenceMetrics = {};
  const b = y.shape[0];
  const student = updatesStudent(c, position.step);
  const z = state.draws.latents(microStep, [b, ...latentShape(state)]);
  let x0: Tensor4D;
  try {
    if (student) {
      const part = studentPart(state, microStep, z, y);
      x0 = part.x0;
      metrics.lossVsd = part.lossVsd;
      state.studentGrads.addOwned(part.grads, 1 / c.gradAccum);
      if (position.closesWindow) {
        const r = stepStudent(state, state.studentGrads.take());
        metrics.gradNormStudent = r.norm;
        metrics.skippedStudent = r.skipped;
      }
    } else {
      x0 = studentX0(state, z, y);
    }
  } finally {
    z.dispose();
  }
  const toDispose: Tensor[] = [x0];
  try {
    const timesteps = state.draws.loraTimesteps(microStep, b, 0, state.schedule.numTrainTimesteps - 1);
    const noise = state.draws.loraNoise(microStep, x0.shape);
    const usesNull = state.draws.loraUsesNullPrompt(microStep, c.loraNullPromptProb);
    const { xt, target } = loraTrainingSample(state, x0, noise, timesteps);
    toDispose.push(xt, target);
    const condition = loraCondition(state, y, usesNull);
    if (condition !== y) toDispose.push(condition);
    const lora = loraGradients(state, xt, timesteps, condition, target);
    metrics.lossLora = lora.loss;
    state.loraGrads.addOwned(lora.grads, 1 / c.gradAccum);
  } finally {
    tf.dispose(toDispose);
  }
  if (!position.closesWindow) return { metrics, step: position.step };
  const r = stepLora(state, state.loraGrads.take());
  metrics.gradNormLora = r.norm;
  metrics.skippedLora = r.skipped;
  const step = finishWindow(state, position.step, Boolean(metrics.skippedStudent || metrics.skippedLora));
  updateEma(state, step);
  return { metrics, step };
}

/**
 * The reference loop over `batches` (micro-batches firstMicroStep, firstMicroStep+1, …), numbered
 * as the stream numbers them; a final partial window still steps, as the stream's end does.
 */
export function referenceRun(state: DistillState, batches: { embeds: Float32Array; shape: [number, number, number] }[], options: { firstMicroStep?: number; firstStep?: number } = {}): ReferenceMetrics[] {
  const first = options.firstMicroStep ?? 0;
  const firstStep = options.firstStep ?? Math.floor(first / state.config.gradAccum);
  const out = batches.map((batch, i) => {
    const y = tf.tensor3d(batch.embeds, batch.shape);
    try {
      return referenceStep(state, first + i, windowPosition(i, firstStep, state.config.gradAccum), y).metrics;
    } finally {
      y.dispose();
    }
  });
  flushStudent(state);
  flushLora(state);
  return out;
}
