/**
 * offloadToReplicas: data parallelism inside a gradient-accumulation window.
 *
 * With `state.replicas` set (config.replicas > 1), a micro-batch that does not close its window is
 * handed to a replica thread (window index i → replica i mod (replicas − 1)): its prompt embeddings
 * are copied there and disposed here, and the context continues as a hollow one (`onReplica`), which
 * every built-in operator passes through. The window's last micro-batch stays on the main thread;
 * `vsdUpdate` adds the replicas' gradients before the optimisers step and `loraUpdate` publishes the
 * new weights after. Without replicas this operator passes everything through.
 *
 * Reads and disposes `promptEmbeds` of the micro-batches it hands off.
 */
import type { OperatorFunction } from 'rxjs';
import type { StepContext } from './context.ts';
import { take } from './context.ts';
import { stepOperator } from './operator.ts';
import type { DistillState } from './state.ts';

export function offloadToReplicas(state: DistillState): OperatorFunction<StepContext, StepContext> {
  return stepOperator((ctx) => {
    const pool = state.replicas;
    if (!pool || ctx.closesWindow) return;
    const y = take(ctx, 'promptEmbeds', 'offloadToReplicas');
    try {
      const index = pool.slotFor(ctx.windowIndex);
      pool.submit(index, ctx.microStep, ctx.step, y.dataSync() as Float32Array, y.shape[0], state);
      ctx.onReplica = index + 1;
    } finally {
      y.dispose();
    }
  });
}
