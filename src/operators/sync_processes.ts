/**
 * syncProcesses: what the processes of an MPI world agree on at each window's end, through one
 * small all-reduce (the gradients have their own, in vsdUpdate / loraUpdate):
 * - the window's losses over every process's micro-batches (sums and counts), set as
 *   `metrics.windowLossVsd` / `windowLossLora` on the window's last micro-batch (rank 0's metrics);
 * - whether any process was asked to stop (SIGTERM / SIGINT on any rank, what Slurm sends): all
 *   stop at this same optimiser step (`stopAgreed`);
 * - every `checksumEvery` steps, a checksum of the weights: if the processes' weights differ the
 *   run stops with an error on every process.
 *
 * The agreement happens once per window, the first time `stopAgreed(ctx)` is asked for the
 * window's last micro-batch (the stream's `stopAfter`) or, if nobody asked (the run's last step),
 * when that micro-batch reaches the operator. Every process asks at the same point, so the
 * collectives match. The operator must run on every process, before the checkpoint; it passes each
 * window's last micro-batch on after one turn of the event loop (so that signals are handled). Holds
 * no tensors.
 */
import { concatMap, from, of, pipe, type OperatorFunction } from 'rxjs';
import type { StepContext } from './context.ts';
import { stepOperator } from './operator.ts';
import type { DistillState } from './state.ts';
import type { World } from '../parallel/mpi.ts';
import { weightsChecksum } from '../parallel/checksum.ts';

export interface SyncProcessesOptions {
  /** This process's own stop request (its signal handler's flag). */
  stopRequested: () => boolean;
  /** Optimiser steps between weight checksums (0 = never). */
  checksumEvery: number;
}

export interface ProcessSync {
  operator: OperatorFunction<StepContext, StepContext>;
  /** On a window's last micro-batch: whether any process asked to stop (the same answer everywhere). */
  stopAgreed: (ctx: StepContext) => boolean;
}

export function syncProcesses(state: DistillState, world: World, options: SyncProcessesOptions): ProcessSync {
  const sums = new Float64Array(5); // vsd sum, vsd count, lora sum, lora count, stop requests
  // Answers by the microStep of the window end; a window's context may be asked again after the
  // next window agreed (an operator that finishes asynchronously lets the next micro-batch run first).
  const agreed = new Map<number, boolean>();
  const addLosses = (ctx: StepContext) => {
    if (ctx.metrics.lossVsd !== undefined) {
      sums[0] = sums[0]! + ctx.metrics.lossVsd;
      sums[1] = sums[1]! + 1;
    }
    if (ctx.metrics.lossLora !== undefined) {
      sums[2] = sums[2]! + ctx.metrics.lossLora;
      sums[3] = sums[3]! + 1;
    }
  };
  const checkWeights = (step: number) => {
    const h = weightsChecksum(state);
    const range = new Float64Array([h, -h]);
    world.allreduceMax64(range);
    if (range[0] !== -range[1]!) {
      throw new Error(`the weights of the ${world.size} MPI processes differ after step ${step} (rank ${world.rank}: checksum ${h.toString(16)}; highest ${range[0]!.toString(16)}, lowest ${(-range[1]!).toString(16)}): every process must run the same backend and build; stopping`);
    }
  };
  const stopAgreed = (ctx: StepContext): boolean => {
    if (!ctx.closesWindow) throw new Error('syncProcesses: the processes agree on window ends only');
    const known = agreed.get(ctx.microStep);
    if (known !== undefined) return known;
    addLosses(ctx);
    sums[4] = options.stopRequested() ? 1 : 0;
    world.allreduceSum64(sums);
    if (sums[1]! > 0) ctx.metrics.windowLossVsd = sums[0]! / sums[1]!;
    if (sums[3]! > 0) ctx.metrics.windowLossLora = sums[2]! / sums[3]!;
    const stop = sums[4]! > 0;
    agreed.set(ctx.microStep, stop);
    if (agreed.size > 16) agreed.delete(agreed.keys().next().value!);
    sums.fill(0);
    if (options.checksumEvery > 0 && ctx.step % options.checksumEvery === 0) checkWeights(ctx.step);
    return stop;
  };
  const operator = pipe(
    stepOperator((ctx) => {
      if (ctx.closesWindow) stopAgreed(ctx);
      else addLosses(ctx);
    }),
    // A process that writes nothing can run window after window on promise callbacks alone, and a
    // signal is only handled when the event loop polls: let it poll once per window.
    concatMap((ctx: StepContext) => (ctx.closesWindow ? from(new Promise<StepContext>((resolve) => setImmediate(() => resolve(ctx)))) : of(ctx))),
  );
  return { operator, stopAgreed };
}
