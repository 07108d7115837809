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
import { tf } from '../tf.ts';
import type { Tensor3D, Tensor4D } from '../tf.ts';
import type { StepContext } from './context.ts';
import { need, take } from './context.ts';
import { stepOperator } from './operator.ts';
import { updatesStudent, type DistillState } from './state.ts';

/** Guided ε of the teacher with LoRA on or off, on (x_t, t, y) and (x_t, t, y0) in one pass. */
export function guidedEpsilon(state: DistillState, loraEnabled: boolean, xt: Tensor4D, timesteps: number[], y: Tensor3D, w: number): Tensor4D {
  return tf.tidy(() => {
    const b = xt.shape[0];
    const y0 = tf.tile(state.nullEmbeds, [b, 1, 1]) as Tensor3D;
    const x2 = tf.concat([xt, xt], 0);
    const t2 = [...timesteps, ...timesteps];
    const out = state.lora.with(loraEnabled, () => state.teacher.forward(x2, t2, tf.concat([y0, y], 0)));
    const eps = state.schedule.predictEpsilon(out, x2, t2) as Tensor4D;
    const [epsU, epsC] = tf.split(eps, 2, 0) as [Tensor4D, Tensor4D];
    return tf.add(epsU, tf.mul(tf.sub(epsC, epsU), w));
  });
}

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
