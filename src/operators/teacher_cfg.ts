/**
 * teacherCFG: the four no-gradient UNet passes of a SwiftBrush step.
 *
 * Frozen teacher (LoRA off) and LoRA teacher (LoRA on) each run once on a doubled batch
 * [uncond; cond] = [(x̂_t, t, y0); (x̂_t, t, y)], then classifier-free guidance with the SAME scale:
 * ε = ε_u + w (ε_c − ε_u). v-prediction outputs are converted to ε first.
 *
 * Reads `noisyX0` (disposes it: last user), `ctx.timesteps`, `promptEmbeds` (kept). Adds
 * `epsTeacher`, `epsLora`.
 */
import type { OperatorFunction } from 'rxjs';
import type { StepContext } from './context.ts';
import { need, take } from './context.ts';
import { stepOperator } from './operator.ts';
import type { DistillState } from './state.ts';
import { guidedEpsilon } from '../swiftbrush/math.ts';
import { updatesStudent } from '../swiftbrush/rules.ts';

export function teacherCFG(state: DistillState): OperatorFunction<StepContext, StepContext> {
  return stepOperator((ctx) => {
    if (!updatesStudent(state.config, ctx.step)) return; // LoRA-only step
    const xt = take(ctx, 'noisyX0', 'teacherCFG');
    try {
      const y = need(ctx, 'promptEmbeds', 'teacherCFG');
      const t = ctx.timesteps;
      if (!t) throw new Error('teacherCFG: ctx.timesteps is missing (noiseAtT must run before teacherCFG)');
      const w = state.config.guidanceScale;
      ctx.tensors.epsTeacher = guidedEpsilon(state, false, xt, t, y, w);
      ctx.tensors.epsLora = guidedEpsilon(state, true, xt, t, y, w);
      state.observe?.('epsTeacher', ctx.tensors.epsTeacher);
      state.observe?.('epsLora', ctx.tensors.epsLora);
    } finally {
      xt.dispose();
    }
  });
}
