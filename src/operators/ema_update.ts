/**
 * emaUpdate: after each optimiser step, the student's EMA moves towards the new weights with
 * diffusers' EMAModel decay schedule (min(decay, (1+s)/(10+s))). Holds no tensors of the context.
 */
import type { OperatorFunction } from 'rxjs';
import type { StepContext } from './context.ts';
import { stepOperator } from './operator.ts';
import type { DistillState } from './state.ts';

export function emaUpdate(state: DistillState): OperatorFunction<StepContext, StepContext> {
  return stepOperator((ctx) => {
    if (!state.ema || !ctx.closesWindow) return;
    state.ema.update(state.ema.decayAt(ctx.step));
  });
}
