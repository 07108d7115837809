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
import type { StepContext } from './context.ts';
import { need, take } from './context.ts';
import { stepOperator } from './operator.ts';
import type { DistillState } from './state.ts';
import { latentShape, studentX0 } from '../swiftbrush/math.ts';
import { updatesStudent } from '../swiftbrush/rules.ts';

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
