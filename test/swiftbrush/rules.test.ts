/** The training loop's rules: window numbering, which steps update the student, closing a window. */
import { describe, expect, it } from 'vitest';
import { finishWindow, updatesStudent, windowPosition } from '../../src/swiftbrush/rules.ts';

describe('training rules', () => {
  it('numbers windows from the (re)start: k micro-batches per step, the last one closes it', () => {
    expect([0, 1, 2, 3, 4].map((i) => windowPosition(i, 0, 2))).toEqual([
      { step: 0, windowIndex: 0, closesWindow: false },
      { step: 0, windowIndex: 1, closesWindow: true },
      { step: 1, windowIndex: 0, closesWindow: false },
      { step: 1, windowIndex: 1, closesWindow: true },
      { step: 2, windowIndex: 0, closesWindow: false },
    ]);
    // Resumed at step 7 with k = 3: the first micro-batch after the resume opens step 7's window.
    expect(windowPosition(0, 7, 3)).toEqual({ step: 7, windowIndex: 0, closesWindow: false });
    expect(windowPosition(5, 7, 3)).toEqual({ step: 8, windowIndex: 2, closesWindow: true });
    expect(windowPosition(0, 0, 1).closesWindow).toBe(true);
  });

  it('updates the student on every N-th step (the first is step N − 1)', () => {
    expect([0, 1, 2, 3, 4, 5].filter((s) => updatesStudent({ studentUpdateEvery: 3 }, s))).toEqual([2, 5]);
    expect([0, 1, 2].every((s) => updatesStudent({ studentUpdateEvery: 1 }, s))).toBe(true);
  });

  it('advances the step, counts skipped windows and stops after maxNonFiniteSteps in a row', () => {
    const state = { config: { maxNonFiniteSteps: 2 }, counters: { nonFiniteInARow: 0, skippedSteps: 0 } };
    expect(finishWindow(state, 4, true)).toBe(5);
    expect(state.counters).toEqual({ nonFiniteInARow: 1, skippedSteps: 1 });
    expect(finishWindow(state, 5, false)).toBe(6);
    expect(state.counters).toEqual({ nonFiniteInARow: 0, skippedSteps: 1 });
    finishWindow(state, 6, true);
    expect(() => finishWindow(state, 7, true)).toThrow(/2 optimiser steps in a row had a non-finite loss or gradient \(last at step 8\)/);
    expect(state.counters.skippedSteps).toBe(3);
  });
});
