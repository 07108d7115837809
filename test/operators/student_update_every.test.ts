/**
 * studentUpdateEvery (DMD2's two-time-scale update): the LoRA teacher steps every optimiser step,
 * the student every N-th (first at step N−1); LoRA-only steps run no teacher pass and leak nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { from, lastValueFrom, toArray } from 'rxjs';
import { tf } from '../../src/tf.ts';
import { swiftbrushStep, toStepContext } from '../../src/operators/pipeline.ts';
import { disposeDistillState, type DistillState } from '../../src/operators/state.ts';
import { fakeBatch, makeState, makeTinyTeacher, testConfig } from './helpers.ts';

describe('studentUpdateEvery', () => {
  let state: DistillState;
  beforeAll(async () => {
    state = await makeState(await makeTinyTeacher(6), testConfig({ studentUpdateEvery: 3, gradAccum: 2 }));
  });
  afterAll(() => disposeDistillState(state));

  it('steps the LoRA teacher every step and the student on steps 2, 5, …; LoRA-only steps report no VSD loss', async () => {
    const studentBefore = state.student.parameters().map((v) => v.dataSync().slice());
    const tensorsBefore = tf.memory().numTensors;
    const batches = Array.from({ length: 12 }, (_, i) => fakeBatch(i)); // 6 windows of 2
    const out = await lastValueFrom(
      from(batches).pipe(
        toStepContext(2),
        swiftbrushStep(state),
        toArray(),
      ),
    );
    expect(state.loraOptimizer.step).toBe(6);
    expect(state.studentOptimizer.step).toBe(2); // steps 2 and 5 (0-based)
    // micro-batches of steps 0, 1, 3, 4 form no score gradient; those of steps 2 and 5 do
    expect(out.map((ctx) => ctx.metrics.lossVsd !== undefined)).toEqual([false, false, false, false, true, true, false, false, false, false, true, true]);
    expect(out.every((ctx) => ctx.metrics.lossLora !== undefined)).toBe(true);
    const moved = state.student.parameters().some((v, i) => v.dataSync().some((x, j) => x !== studentBefore[i]![j]));
    expect(moved).toBe(true);
    expect(tf.memory().numTensors).toBe(tensorsBefore);
  });
});
