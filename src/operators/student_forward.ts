/**
 * studentForward: x̂0 = f_θ(z, y), the one-step generator.
 *
 * Reads `promptEmbeds` (kept). Adds `latents` z ~ N(0, I) (from `state.draws`; only on steps that
 * update the student, see `studentUpdateEvery`) and `x0`, computed
 * WITHOUT a gradient tape: tfjs' tape cannot span operators, so vsdUpdate recomputes f_θ(z, y)
 * under its own tape once the score gradient is known (see README, "How the student's gradient
 * crosses the operator boundary").
 */
import type { OperatorFunction } from 'rxjs';
import { tf } from '../tf.ts';
import type { Tensor3D, Tensor4D } from '../tf.ts';
import type { StepContext } from './context.ts';
import { need, take } from './context.ts';
import { stepOperator } from './operator.ts';
import { updatesStudent, type DistillState } from './state.ts';

/** f_θ(z, y): the UNet's prediction at the last train timestep T−1, turned into x0 (ε or v form). */
export function studentX0(state: DistillState, latents: Tensor4D, promptEmbeds: Tensor3D): Tensor4D {
  const last = state.schedule.numTrainTimesteps - 1;
  const timesteps = new Array<number>(latents.shape[0]).fill(last);
  return tf.tidy(() => state.schedule.predictOriginal(state.student.forward(latents, timesteps, promptEmbeds), latents, timesteps) as Tensor4D);
}

/** The latent shape of one sample, from the student's config: [H, W, C] (NHWC). */
export function latentShape(state: DistillState): [number, number, number] {
  const c = state.student.config;
  const size = c.sample_size;
  if (typeof size !== 'number') throw new Error(`the UNet config needs an integer 'sample_size' to draw the student's noise (got ${JSON.stringify(size)})`);
  return [size, size, c.in_channels];
}

export function studentForward(state: DistillState): OperatorFunction<StepContext, StepContext> {
  return stepOperator((ctx) => {
    const y = need(ctx, 'promptEmbeds', 'studentForward');
    const z = state.draws.latents(ctx.microStep, [y.shape[0], ...latentShape(state)]);
    ctx.tensors.latents = z; // owned by the context at once, so a failing forward frees it too
    ctx.tensors.x0 = studentX0(state, z, y);
    state.observe?.('x0', ctx.tensors.x0);
    if (!updatesStudent(state.config, ctx.step)) take(ctx, 'latents', 'studentForward').dispose(); // LoRA-only step: no recomputed f_θ(z, y)
  });
}
