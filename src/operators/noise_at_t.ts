/**
 * noiseAtT: t ~ U{tMin … tMax} per sample, ε ~ N(0, I), x̂_t = √ᾱ_t x̂0 + σ_t ε.
 *
 * Reads `x0` (kept). Adds `noise`, `noisyX0` and `ctx.timesteps` (host numbers).
 */
import type { OperatorFunction } from 'rxjs';
import type { Tensor4D } from '../tf.ts';
import type { StepContext } from './context.ts';
import { need } from './context.ts';
import { stepOperator } from './operator.ts';
import type { DistillState } from './state.ts';
import { updatesStudent } from '../swiftbrush/rules.ts';

export function noiseAtT(state: DistillState): OperatorFunction<StepContext, StepContext> {
  const { tMin, tMax } = state.config;
  return stepOperator((ctx) => {
    if (!updatesStudent(state.config, ctx.step)) return; // LoRA-only step: no score gradient to form
    const x0 = need(ctx, 'x0', 'noiseAtT');
    const batch = x0.shape[0];
    const timesteps = state.draws.timesteps(ctx.microStep, batch, tMin, tMax);
    const noise = state.draws.noise(ctx.microStep, x0.shape);
    ctx.timesteps = timesteps;
    ctx.tensors.noise = noise;
    ctx.tensors.noisyX0 = state.schedule.addNoise(x0, noise, timesteps) as Tensor4D;
    state.observe?.('noisyX0', ctx.tensors.noisyX0);
  });
}
