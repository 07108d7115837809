/**
 * The training loop's rules, in one place: where a micro-batch sits in its accumulation window,
 * which optimiser steps update the student, how the step counter advances when a window closes, and
 * when too many non-finite windows stop the run. The operators, the stream's context numbering and
 * the reference loop ask these.
 */

/** A micro-batch's place in training. */
export interface WindowPosition {
  /** Optimiser steps completed before this micro-batch's window. */
  step: number;
  /** Position inside the accumulation window, 0 … k−1. */
  windowIndex: number;
  /** True on the last micro-batch of a window: the optimisers step after it. */
  closesWindow: boolean;
}

/**
 * The position of the `sinceStart`-th micro-batch (0-based) of a run (re)started at optimiser step
 * `firstStep`: windows of `gradAccum` are counted from the start, so a run resumed with another
 * gradAccum keeps its step numbering.
 */
export function windowPosition(sinceStart: number, firstStep: number, gradAccum: number): WindowPosition {
  return {
    step: firstStep + Math.floor(sinceStart / gradAccum),
    windowIndex: sinceStart % gradAccum,
    closesWindow: sinceStart % gradAccum === gradAccum - 1,
  };
}

/**
 * Whether optimiser step `step` (0-based: the steps completed before it) updates the student; the
 * LoRA teacher steps on every one (studentUpdateEvery, DMD2's two-time-scale update).
 */
export function updatesStudent(config: { studentUpdateEvery: number }, step: number): boolean {
  return (step + 1) % config.studentUpdateEvery === 0;
}

/**
 * After a window's optimiser steps: returns the next step number and counts the window when a step
 * was skipped for a non-finite loss or gradient; too many in a row stop the run (an error), so the
 * weights stay intact.
 */
export function finishWindow(state: { config: { maxNonFiniteSteps: number }; counters: { nonFiniteInARow: number; skippedSteps: number } }, step: number, skipped: boolean): number {
  const next = step + 1;
  if (!skipped) {
    state.counters.nonFiniteInARow = 0;
    return next;
  }
  state.counters.skippedSteps += 1;
  state.counters.nonFiniteInARow += 1;
  if (state.counters.nonFiniteInARow >= state.config.maxNonFiniteSteps) {
    throw new Error(`${state.counters.nonFiniteInARow} optimiser steps in a row had a non-finite loss or gradient (last at step ${next}); stopping so the weights stay intact. Lower the learning rates or check the teacher and embeddings.`);
  }
  return next;
}
