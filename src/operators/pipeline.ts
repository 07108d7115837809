/**
 * The SwiftBrush step as one composed operator, and the stream that feeds it.
 *
 *   batches ─► toStepContext ─► (offloadToReplicas) ─► studentForward ─► noiseAtT ─► teacherCFG ─► vsdUpdate
 *           ─► noiseAtT′ ─► loraUpdate ─► emaUpdate ─► (your operators) ─► ack (pull the next batch)
 *
 * Backpressure: the embedding source emits at most `prefetch` batches beyond the ones the tail has
 * acknowledged, so a slow operator (or a slow subscriber) stops the reading of row groups.
 */
import { Observable, Subject, defer, identity, map, pipe, tap, type OperatorFunction, type SchedulerLike } from 'rxjs';
import { tf } from '../tf.ts';
import type { EmbeddingBatch } from '../streams/reader.ts';
import { type StepContext, createStepContext, disposeContext } from './context.ts';
import type { DistillState } from './state.ts';
import { studentForward } from './student_forward.ts';
import { noiseAtT } from './noise_at_t.ts';
import { teacherCFG } from './teacher_cfg.ts';
import { vsdUpdate } from './vsd_update.ts';
import { noiseAtTPrime } from './noise_at_t_prime.ts';
import { loraUpdate } from './lora_update.ts';
import { emaUpdate } from './ema_update.ts';
import { offloadToReplicas } from './offload_to_replicas.ts';
import { windowPosition } from '../swiftbrush/rules.ts';

/**
 * The six operators of one SwiftBrush step, in the official order, plus the student's EMA; first,
 * the hand-off of a window's micro-batches to data-parallel replicas (a no-op without them).
 */
export function swiftbrushStep(state: DistillState): OperatorFunction<StepContext, StepContext> {
  return pipe(offloadToReplicas(state), studentForward(state), noiseAtT(state), teacherCFG(state), vsdUpdate(state), noiseAtTPrime(state), loraUpdate(state), emaUpdate(state));
}

/**
 * Turns embedding batches into step contexts: uploads `promptEmbeds` and numbers the micro-batch.
 * `firstMicroStep` and `firstStep` continue both counts after a resume; windows are counted from
 * there, so a run resumed with another `gradAccum` keeps its optimiser-step numbering.
 * `microStepStride` N > 1 numbers the batches of one process of an MPI world that takes every N-th
 * micro-batch of the global stream (firstMicroStep = the global start + its rank): the micro-step
 * stays the global index, which keys every random draw.
 */
export function toStepContext(gradAccum: number, firstMicroStep = 0, firstStep = Math.floor(firstMicroStep / gradAccum), microStepStride = 1): OperatorFunction<EmbeddingBatch, StepContext> {
  return (source) =>
    defer(() => {
      let sinceStart = 0;
      return source.pipe(
        map((batch): StepContext => {
          const s = sinceStart++;
          return createStepContext({
            microStep: firstMicroStep + s * microStepStride,
            ...windowPosition(s, firstStep, gradAccum),
            prompts: batch.prompts,
            position: batch.position,
            promptEmbeds: tf.tensor3d(batch.embeds, batch.shape),
          });
        }),
      );
    });
}

export interface DistillStreamOptions {
  /** Builds the embedding source; it must emit at most `prefetch` batches beyond the demand signals. */
  batches: (demand: Observable<unknown>) => Observable<EmbeddingBatch>;
  /** Micro-batch index to start from (resume). */
  firstMicroStep?: number;
  /** Optimiser step to start from (resume; default firstMicroStep / gradAccum). */
  firstStep?: number;
  /** Global micro-steps between two batches of this process (the MPI world's size; default 1). */
  microStepStride?: number;
  /** Operators after the SwiftBrush step (checkpoint, validation, metrics, progress, your own). */
  operators?: OperatorFunction<StepContext, StepContext>[];
  /**
   * Whether this micro-batch is the run's last (normally one that closes a window: the run's last
   * step, or a stop was requested). Asked once per micro-batch, when it has left the SwiftBrush step
   * and before `operators` see it; a yes is kept as `ctx.last` (the checkpoint operator saves on
   * it). After a last micro-batch the stream completes: none beyond it is let in or computed.
   */
  stopAfter?: (ctx: StepContext) => boolean;
  /**
   * Runs after the SwiftBrush step, before `stopAfter` is asked (the run lets the event loop turn
   * there, so that a signal that came during the step has been handled when the stop is decided).
   */
  settle?: OperatorFunction<StepContext, StepContext>;
  scheduler?: SchedulerLike;
}

/**
 * Lets one item at a time into what follows: the next is released only when `release` signals
 * that the previous one has left the chain; items that arrive meanwhile wait in a queue (whose
 * length the source's credit protocol bounds). `onTake` fires as each item is let in.
 */
export function oneAtATime<T>(release: Observable<unknown>, onTake: () => void): OperatorFunction<T, T> {
  return (source) =>
    new Observable<T>((subscriber) => {
      const queue: T[] = [];
      let busy = false;
      let sourceDone = false;
      const pump = () => {
        if (!busy && queue.length) {
          busy = true;
          const item = queue.shift()!;
          onTake();
          subscriber.next(item);
        } else if (!busy && sourceDone && !queue.length) {
          subscriber.complete();
        }
      };
      const releases = release.subscribe(() => {
        busy = false;
        pump();
      });
      const upstream = source.subscribe({
        next: (item) => {
          queue.push(item);
          pump();
        },
        error: (err) => subscriber.error(err),
        complete: () => {
          sourceDone = true;
          pump();
        },
      });
      return () => {
        releases.unsubscribe();
        upstream.unsubscribe();
      };
    });
}

/**
 * The whole distillation as an Observable of finished steps (contexts that hold no tensors).
 *
 * Micro-batches go through the chain strictly one at a time: the next enters only when the
 * previous one has left the last operator and the subscriber's `next` has returned (so an
 * asynchronous operator — a checkpoint being written — never sees weights from a later step, and a
 * subscriber that stops the stream, e.g. with `take`, stops it before another micro-batch is computed).
 * With `stopAfter`, the stream completes after the run's last micro-batch; nothing after it is
 * computed, so the state then holds exactly that step's weights.
 * The source is credited as each batch enters, so it decodes at most `prefetch` batches ahead.
 * Unsubscribing or an error disposes the in-flight context's tensors and closes the source.
 */
export function distill(state: DistillState, options: DistillStreamOptions): Observable<StepContext> {
  return new Observable<StepContext>((subscriber) => {
    const demand = new Subject<void>();
    const left = new Subject<void>();
    const extra = options.operators ?? [];
    const stopAfter = options.stopAfter;
    let inFlight: StepContext | null = null;
    const steps = options.batches(demand).pipe(
      oneAtATime(left, () => demand.next()),
      toStepContext(state.config.gradAccum, options.firstMicroStep ?? 0, options.firstStep, options.microStepStride),
      tap((ctx) => (inFlight = ctx)),
      swiftbrushStep(state),
      options.settle ?? identity,
      tap((ctx) => {
        if (stopAfter?.(ctx)) ctx.last = true;
      }),
      (source) => extra.reduce((acc, op) => op(acc), source),
    );
    const subscription = steps.subscribe({
      next: (ctx) => {
        inFlight = null;
        subscriber.next(ctx);
        if (ctx.last) subscriber.complete();
        else if (!subscriber.closed) left.next();
      },
      error: (err) => subscriber.error(err),
      complete: () => subscriber.complete(),
    });
    return () => {
      subscription.unsubscribe();
      if (inFlight) disposeContext(inFlight);
      demand.complete();
      left.complete();
    };
  });
}
