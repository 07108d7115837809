/**
 * loraUpdate: the LoRA teacher learns the student's distribution.
 * L = mse(√ᾱ_t′ ε_φ(x̂_t′, t′, c), √ᾱ_t′ target) (or, with loraLossWeighting 'epsilon', the
 * unweighted mse(ε_φ, target)), c = y (or y0 on a null-prompt draw); gradients
 * w.r.t. the LoRA weights only, summed over the window (×1/k), clipped, Adam on the window's last
 * micro-batch (after the student's step), which also advances `ctx.step`.
 *
 * Reads and disposes `loraNoisyX0`, `loraTarget`, `promptEmbeds`: after it the context holds no
 * tensors. Adds metrics.lossLora (and gradNormLora / skippedLora on a window's end).
 */
import type { OperatorFunction } from 'rxjs';
import { tf } from '../tf.ts';
import type { Tensor, Tensor3D, Tensor4D } from '../tf.ts';
import type { NamedGrads } from '../models/optim.ts';
import type { StepContext } from './context.ts';
import { take } from './context.ts';
import { stepOperator } from './operator.ts';
import type { DistillState } from './state.ts';
import { stepOptimizer } from './vsd_update.ts';
import { agreeOnSkip, microBatchWeight, windowGradients } from '../parallel/gradient_sync.ts';

export function loraGradients(state: DistillState, xt: Tensor4D, timesteps: number[], condition: Tensor3D, target: Tensor4D): { loss: number; grads: NamedGrads } {
  const params = state.lora.store.named();
  const { value, grads } = tf.variableGrads(() => {
    const official = state.config.loraLossWeighting === 'official';
    const weight = tf.tensor4d(timesteps.map((t) => (official ? Math.sqrt(state.schedule.alphaBar(t)) : 1)), [timesteps.length, 1, 1, 1]);
    const pred = state.lora.with(true, () => state.teacher.forward(xt, timesteps, condition));
    state.observe?.('loraPrediction', pred);
    return tf.losses.meanSquaredError(tf.mul(target, weight), tf.mul(pred, weight)) as tf.Scalar;
  }, [...params.values()]);
  const loss = value.dataSync()[0]!;
  value.dispose();
  return { loss, grads: new Map([...params].map(([name, v]) => [name, grads[v.name]!])) };
}

/** Counts consecutive skipped windows and stops the run when there are too many. */
function checkNonFinite(state: DistillState, ctx: StepContext): void {
  const skipped = Boolean(ctx.metrics.skippedStudent || ctx.metrics.skippedLora);
  if (!skipped) {
    state.counters.nonFiniteInARow = 0;
    return;
  }
  state.counters.skippedSteps += 1;
  state.counters.nonFiniteInARow += 1;
  if (state.counters.nonFiniteInARow >= state.config.maxNonFiniteSteps) {
    throw new Error(`${state.counters.nonFiniteInARow} optimiser steps in a row had a non-finite loss or gradient (last at step ${ctx.step}); stopping so the weights stay intact. Lower the learning rates or check the teacher and embeddings.`);
  }
}

export function loraUpdate(state: DistillState): OperatorFunction<StepContext, StepContext> {
  const flush = () => {
    if (state.loraGrads.empty) return;
    stepOptimizer(windowGradients(state, 'lora'), state.config.maxGradNorm, (g) => state.loraOptimizer.apply(g), (skip) => agreeOnSkip(state.world, skip));
  };
  return stepOperator((ctx) => {
    const xt = take(ctx, 'loraNoisyX0', 'loraUpdate');
    const target = take(ctx, 'loraTarget', 'loraUpdate');
    const y = take(ctx, 'promptEmbeds', 'loraUpdate');
    const toDispose: Tensor[] = [xt, target, y];
    try {
      if (!ctx.loraTimesteps) throw new Error('loraUpdate: ctx.loraTimesteps is missing (noiseAtTPrime must run first)');
      const condition = ctx.loraUsesNullPrompt ? (tf.tile(state.nullEmbeds, [y.shape[0], 1, 1]) as Tensor3D) : y;
      if (condition !== y) toDispose.push(condition);
      const { loss, grads } = loraGradients(state, xt, ctx.loraTimesteps, condition, target);
      ctx.metrics.lossLora = loss;
      state.loraGrads.addOwned(grads, microBatchWeight(state));
      if (ctx.closesWindow) {
        const { norm, skipped } = stepOptimizer(windowGradients(state, 'lora'), state.config.maxGradNorm, (g) => state.loraOptimizer.apply(g), (skip) => agreeOnSkip(state.world, skip));
        ctx.metrics.gradNormLora = norm;
        ctx.metrics.skippedLora = skipped;
        state.replicas?.publish(); // both models have stepped: the replicas' next window starts from here
        ctx.step += 1;
        checkNonFinite(state, ctx);
      }
    } finally {
      tf.dispose(toDispose);
    }
  }, flush);
}
