/**
 * yieldToEventLoop: passes each context on from a `setImmediate`, so that the event loop turns once
 * per micro-batch. A run of synchronous steps (tfjs kernels, batches already decoded) would
 * otherwise hold the loop for many steps, and a SIGINT / SIGTERM handler, a timer or a finished
 * write would wait until the stream next awaited I/O. `after` runs once the loop has turned (the
 * run samples its stop request there). Holds no tensors; an unsubscribe cancels the pending turn.
 */
import { Observable, concatMap, type OperatorFunction } from 'rxjs';

export function yieldToEventLoop<T>(after?: (value: T) => void): OperatorFunction<T, T> {
  return concatMap(
    (value: T) =>
      new Observable<T>((subscriber) => {
        const handle = setImmediate(() => {
          try {
            after?.(value);
            subscriber.next(value);
            subscriber.complete();
          } catch (err) {
            subscriber.error(err);
          }
        });
        return () => clearImmediate(handle);
      }),
  );
}
