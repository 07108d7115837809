/**
 * The one helper every built-in operator uses: a synchronous map over step contexts that, when its
 * work throws, disposes the context's tensors before passing the error on (RxJS then tears the
 * chain down and unsubscribes the source), and that can act once when the source completes.
 *
 * Built from RxJS's own `map` and `concat`, so teardown reaches the source synchronously: after an
 * error, even a synchronous source (`from(array)`) stops at once and no later micro-batch is
 * computed or changes an optimiser.
 */
import { EMPTY, concat, defer, map, type OperatorFunction } from 'rxjs';
import { disposeContext, type StepContext } from './context.ts';

export function stepOperator(work: (ctx: StepContext) => void, onComplete?: () => void): OperatorFunction<StepContext, StepContext> {
  return (source) => {
    const mapped = source.pipe(
      map((ctx) => {
        if (ctx.onReplica !== undefined) return ctx; // computed on a replica thread
        try {
          work(ctx);
        } catch (err) {
          disposeContext(ctx);
          throw err;
        }
        return ctx;
      }),
    );
    if (!onComplete) return mapped;
    return concat(
      mapped,
      defer(() => {
        onComplete();
        return EMPTY;
      }),
    );
  };
}
