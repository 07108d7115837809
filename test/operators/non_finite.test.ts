/**
 * A NaN/Inf loss or gradient does not poison the weights: the window is skipped and counted, and
 * the run stops with a clear message after `maxNonFiniteSteps` in a row.
 */
import { describe, expect, it, beforeAll } from 'vitest';
import { from, lastValueFrom, toArray } from 'rxjs';
import { tf } from '../../src/tf.ts';
import { swiftbrushStep, toStepContext } from '../../src/operators/pipeline.ts';
import { stepOperator } from '../../src/operators/operator.ts';
import { studentForward } from '../../src/operators/student_forward.ts';
import { noiseAtT } from '../../src/operators/noise_at_t.ts';
import { teacherCFG } from '../../src/operators/teacher_cfg.ts';
import { vsdUpdate } from '../../src/operators/vsd_update.ts';
import { noiseAtTPrime } from '../../src/operators/noise_at_t_prime.ts';
import { loraUpdate } from '../../src/operators/lora_update.ts';
import { disposeDistillState } from '../../src/operators/state.ts';
import { fakeBatch, makeState, makeTinyTeacher, testConfig } from './helpers.ts';

describe('non-finite steps', () => {
  let teacher: string;
  beforeAll(async () => {
    teacher = await makeTinyTeacher(4);
  });

  it('skips windows with NaN gradients, keeps the weights, and stops after N in a row', async () => {
    const state = await makeState(teacher, testConfig({ maxNonFiniteSteps: 3, emaDecay: 0 }));
    try {
      // Poison one student weight: its forward is NaN everywhere, so every gradient is NaN.
      const [poisoned, ...others] = state.student.parameters();
      const nanWeight = tf.tidy(() => tf.fill(poisoned!.shape, NaN));
      poisoned!.assign(nanWeight);
      nanWeight.dispose();
      const before = others.map((v) => v.dataSync().slice());
      const loraBefore = state.lora.parameters().map((v) => v.dataSync().slice());
      const seen: number[] = [];
      const run = lastValueFrom(
        from([0, 1, 2, 3, 4].map((i) => fakeBatch(i))).pipe(toStepContext(1), swiftbrushStep(state), toArray()),
      );
      await expect(run).rejects.toThrow(/3 optimiser steps in a row had a non-finite loss or gradient/);
      seen.push(state.counters.skippedSteps);
      expect(seen).toEqual([3]);
      // No optimiser moved anything: the student's other weights and the LoRA weights are intact.
      others.forEach((v, i) => expect(Array.from(v.dataSync())).toEqual(Array.from(before[i]!)));
      state.lora.parameters().forEach((v, i) => expect(Array.from(v.dataSync())).toEqual(Array.from(loraBefore[i]!)));
      expect(state.studentOptimizer.step).toBe(0);
    } finally {
      disposeDistillState(state);
    }
  });
});

describe('errors with a synchronous source', () => {
  it('stop the chain at once: no later micro-batch is computed or steps an optimiser', async () => {
    const teacher = await makeTinyTeacher(6);
    const state = await makeState(teacher, testConfig({ emaDecay: 0 }));
    try {
      let entered = 0;
      const before = tf.memory().numTensors;
      const run = lastValueFrom(
        from([0, 1, 2, 3].map((i) => fakeBatch(i))).pipe(
          toStepContext(1),
          stepOperator(() => void entered++),
          studentForward(state),
          stepOperator((ctx) => {
            if (ctx.microStep === 1) throw new Error('boom');
          }),
          noiseAtT(state),
          teacherCFG(state),
          vsdUpdate(state),
          noiseAtTPrime(state),
          loraUpdate(state),
        ),
      );
      await expect(run).rejects.toThrow('boom');
      expect(entered).toBe(2);
      expect(state.studentOptimizer.step).toBe(1);
      expect(state.loraOptimizer.step).toBe(1);
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      disposeDistillState(state);
    }
  });
});
