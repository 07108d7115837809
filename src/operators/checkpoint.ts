/**
 * checkpoint: every `every` optimiser steps, on the run's last step (`ctx.last`, set by distill's
 * `stopAfter`: the run's end, or a stop request) and at any window end where `force(ctx)` holds,
 * snapshots the training state synchronously (clones sharing the live tensors' data: no copy),
 * then writes it as `OUT/checkpoint-<step>/` through a temp folder and a rename, keeping the newest
 * `keep` (the format: src/training/checkpoint.ts). The context passes on once the files are in
 * place. The snapshot's tensors are freed once written (or once a custom `save` completes).
 */
import { concatMap, endWith, finalize, from, ignoreElements, of, type Observable, type OperatorFunction } from 'rxjs';
import type { StepContext } from './context.ts';
import type { DistillState } from './state.ts';
import { disposeTrainingSnapshot, saveCheckpoint, snapshotTrainingState, writeTrainingSnapshot, type TrainingSnapshot } from '../training/checkpoint.ts';
import { log } from '../log.ts';
import { microStepsConsumed } from '../parallel/shard.ts';

export interface CheckpointOptions {
  out: string;
  every: number;
  keep?: number;
  /** Also checkpoint at this window's end. */
  force?: (ctx: StepContext) => boolean;
  /**
   * Replaces the file writing (tests inject a fake, e.g. one that takes virtual time). The snapshot
   * is freed when what it returns completes.
   */
  save?: (step: number, snapshot: TrainingSnapshot) => Observable<unknown> | Promise<unknown>;
}

export function shouldCheckpoint(ctx: StepContext, every: number, force?: (ctx: StepContext) => boolean): boolean {
  return ctx.closesWindow && (ctx.step % every === 0 || ctx.last === true || Boolean(force?.(ctx)));
}

/**
 * Writes training checkpoints from the stream of step contexts (see the file's comment).
 * Reads `ctx.step`, `ctx.microStep`, `ctx.closesWindow`, `ctx.last`; adds nothing; disposes no
 * context tensor.
 */
export function checkpoint(state: DistillState, options: CheckpointOptions): OperatorFunction<StepContext, StepContext> {
  const save =
    options.save ??
    ((step: number, snapshot: TrainingSnapshot) =>
      saveCheckpoint(options.out, step, (dir) => writeTrainingSnapshot(state, snapshot, dir), options.keep).then((path) => log.info({ step, path }, 'checkpoint saved')));
  return concatMap((ctx: StepContext) => {
    if (!shouldCheckpoint(ctx, options.every, options.force)) return of(ctx);
    const snapshot = snapshotTrainingState(state, { step: ctx.step, microStep: microStepsConsumed(ctx.microStep, state.world), counters: state.counters });
    return from(save(ctx.step, snapshot)).pipe(
      finalize(() => disposeTrainingSnapshot(snapshot)),
      ignoreElements(),
      endWith(ctx),
    );
  });
}
