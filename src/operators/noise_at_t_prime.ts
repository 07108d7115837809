/**
 * noiseAtT′ (noiseAtTPrime): the LoRA teacher's training sample from the student's output.
 * t′ ~ U{0 … T−1}, ε′ ~ N(0, I), x̂_t′ = √ᾱ_t′ sg(x̂0) + σ_t′ ε′; with probability
 * loraNullPromptProb (one draw per micro-batch) the LoRA teacher is conditioned on the null prompt.
 *
 * Reads and disposes `x0` (its last user). Adds `loraNoisyX0`, `loraTarget` (ε′, or v for a
 * v-prediction teacher), `ctx.loraTimesteps`, `ctx.loraUsesNullPrompt`.
 */
import type { OperatorFunction } from 'rxjs';
import { tf } from '../tf.ts';
import type { Tensor4D } from '../tf.ts';
import type { StepContext } from './context.ts';
import { take } from './context.ts';
import { stepOperator } from './operator.ts';
import type { DistillState } from './state.ts';

export function noiseAtTPrime(state: DistillState): OperatorFunction<StepContext, StepContext> {
  return stepOperator((ctx) => {
    const x0 = take(ctx, 'x0', 'noiseAtTPrime');
    try {
      const batch = x0.shape[0];
      const timesteps = state.draws.loraTimesteps(ctx.microStep, batch, 0, state.schedule.numTrainTimesteps - 1);
      const noise = state.draws.loraNoise(ctx.microStep, x0.shape);
      ctx.loraTimesteps = timesteps;
      ctx.loraUsesNullPrompt = state.draws.loraUsesNullPrompt(ctx.microStep, state.config.loraNullPromptProb);
      ctx.tensors.loraNoisyX0 = state.schedule.addNoise(x0, noise, timesteps) as Tensor4D;
      state.observe?.('loraNoisyX0', ctx.tensors.loraNoisyX0);
      if (state.schedule.predictionType === 'v_prediction') {
        ctx.tensors.loraTarget = state.schedule.velocity(x0, noise, timesteps) as Tensor4D;
        noise.dispose();
      } else if (state.schedule.predictionType === 'epsilon') {
        ctx.tensors.loraTarget = noise;
      } else {
        noise.dispose();
        throw new Error(`noiseAtTPrime: prediction_type '${state.schedule.predictionType}' is not supported for the LoRA teacher (epsilon or v_prediction)`);
      }
    } finally {
      tf.dispose(x0);
    }
  });
}
