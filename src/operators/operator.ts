/**
 * The one helper every built-in operator uses: a synchronous map over step contexts that, when its
 * work throws, disposes the context's tensors before passing the error on (RxJS then tears the
 * chain down and unsubscribes the source), and that can act once when the source completes.
 */
import { Observable, type OperatorFunction } from 'rxjs';
import { disposeContext, type StepContext } from './context.ts';

export function stepOperator(work: (ctx: StepContext) => void, onComplete?: () => void): OperatorFunction<StepContext, StepContext> {
  return (source) =>
    new Observable<StepContext>((subscriber) =>
      source.subscribe({
        next(ctx) {
          try {
            work(ctx);
          } catch (err) {
            disposeContext(ctx);
            subscriber.error(err);
            return;
          }
          subscriber.next(ctx);
        },
        error: (err) => subscriber.error(err),
        complete() {
          try {
            onComplete?.();
          } catch (err) {
            subscriber.error(err);
            return;
          }
          subscriber.complete();
        },
      }),
    );
}
