/**
 * emaUpdate: after each optimiser step, the student's EMA moves towards the new weights with
 * diffusers' EMAModel decay schedule (min(decay, (1+s)/(10+s))). Holds no tensors of the context.
 */
import type { OperatorFunction } from 'rxjs';
import type { StepContext } from './context.ts';
import { stepOperator } from './operator.ts';
import type { DistillState } from './state.ts';
import { updateEma } from '../swiftbrush/optim_step.ts';

export function emaUpdate(state: DistillState): OperatorFunction<StepContext, StepContext> {
  return stepOperator((ctx) => {
    if (ctx.closesWindow) updateEma(state, ctx.step);
  });
}
