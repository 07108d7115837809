/**
 * noiseAtT′ (noiseAtTPrime): the LoRA teacher's training sample from the student's output.
 * t′ ~ U{0 … T−1}, ε′ ~ N(0, I), x̂_t′ = √ᾱ_t′ sg(x̂0) + σ_t′ ε′; with probability
 * loraNullPromptProb (one draw per micro-batch) the LoRA teacher is conditioned on the null prompt.
 *
 * Reads and disposes `x0` (its last user). Adds `loraNoisyX0`, `loraTarget` (ε′, or v for a
 * v-prediction teacher), `ctx.loraTimesteps`, `ctx.loraUsesNullPrompt`.
 */
import type { OperatorFunction } from 'rxjs';
import type { StepContext } from './context.ts';
import { take } from './context.ts';
import { stepOperator } from './operator.ts';
import type { DistillState } from './state.ts';
import { loraTrainingSample } from '../swiftbrush/math.ts';

export function noiseAtTPrime(state: DistillState): OperatorFunction<StepContext, StepContext> {
  return stepOperator((ctx) => {
    const x0 = take(ctx, 'x0', 'noiseAtTPrime');
    try {
      const batch = x0.shape[0];
      const timesteps = state.draws.loraTimesteps(ctx.microStep, batch, 0, state.schedule.numTrainTimesteps - 1);
      const noise = state.draws.loraNoise(ctx.microStep, x0.shape);
      ctx.loraTimesteps = timesteps;
      ctx.loraUsesNullPrompt = state.draws.loraUsesNullPrompt(ctx.microStep, state.config.loraNullPromptProb);
      const { xt, target } = loraTrainingSample(state, x0, noise, timesteps);
      ctx.tensors.loraNoisyX0 = xt;
      ctx.tensors.loraTarget = target;
      state.observe?.('loraNoisyX0', xt);
    } finally {
      x0.dispose();
    }
  });
}
