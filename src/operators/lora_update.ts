/**
 * loraUpdate: the LoRA teacher learns the student's distribution.
 * L = mse(√ᾱ_t′ ε_φ(x̂_t′, t′, c), √ᾱ_t′ target) (or, with loraLossWeighting 'epsilon', the
 * unweighted mse(ε_φ, target)), c = y (or y0 on a null-prompt draw); gradients
 * w.r.t. the LoRA weights only, summed over the window (×1/k), clipped, Adam on the window's last
 * micro-batch (after the student's step); then the window closes (src/swiftbrush/rules.ts): `ctx.step`
 * advances and too many non-finite windows in a row stop the run.
 *
 * Reads and disposes `loraNoisyX0`, `loraTarget`, `promptEmbeds`: after it the context holds no
 * tensors. Adds metrics.lossLora (and gradNormLora / skippedLora on a window's end).
 */
import type { OperatorFunction } from 'rxjs';
import { tf } from '../tf.ts';
import type { Tensor } from '../tf.ts';
import type { StepContext } from './context.ts';
import { microBatchWeight } from '../parallel/gradient_sync.ts';
import { take } from './context.ts';
import { stepOperator } from './operator.ts';
import type { DistillState } from './state.ts';
import { loraCondition, loraGradients } from '../swiftbrush/math.ts';
import { flushLora, stepLora } from '../swiftbrush/optim_step.ts';
import { finishWindow } from '../swiftbrush/rules.ts';

export function loraUpdate(state: DistillState): OperatorFunction<StepContext, StepContext> {
  return stepOperator((ctx) => {
    const xt = take(ctx, 'loraNoisyX0', 'loraUpdate');
    const target = take(ctx, 'loraTarget', 'loraUpdate');
    const y = take(ctx, 'promptEmbeds', 'loraUpdate');
    const toDispose: Tensor[] = [xt, target, y];
    try {
      if (!ctx.loraTimesteps) throw new Error('loraUpdate: ctx.loraTimesteps is missing (noiseAtTPrime must run first)');
      const condition = loraCondition(state, y, Boolean(ctx.loraUsesNullPrompt));
      if (condition !== y) toDispose.push(condition);
      const { loss, grads } = loraGradients(state, xt, ctx.loraTimesteps, condition, target);
      ctx.metrics.lossLora = loss;
      state.loraGrads.addOwned(grads, microBatchWeight(state));
      if (ctx.closesWindow) {
        const { norm, skipped } = stepLora(state, state.loraGrads.take());
        ctx.metrics.gradNormLora = norm;
        ctx.metrics.skippedLora = skipped;
        state.replicas?.publish(); // both models have stepped: the replicas' next window starts from here
        ctx.step = finishWindow(state, ctx.step, Boolean(ctx.metrics.skippedStudent || ctx.metrics.skippedLora));
      }
    } finally {
      tf.dispose(toDispose);
    }
  }, () => flushLora(state));
}
