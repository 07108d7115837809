/**
 * Marble tests of the stream's timing on a tiny UNet: accumulation windows, checkpoint cadence,
 * the pull bound with a slow consumer, the run's last step, and teardown on error / unsubscribe.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Observable, concatMap, from, lastValueFrom, map, take, tap, timer, toArray, type Subscription } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { tf } from '../../src/tf.ts';
import { distill, swiftbrushStep, toStepContext } from '../../src/operators/pipeline.ts';
import { checkpoint } from '../../src/operators/checkpoint.ts';
import { stepOperator } from '../../src/operators/operator.ts';
import { studentForward } from '../../src/operators/student_forward.ts';
import { noiseAtT } from '../../src/operators/noise_at_t.ts';
import { teacherCFG } from '../../src/operators/teacher_cfg.ts';
import { vsdUpdate } from '../../src/operators/vsd_update.ts';
import { noiseAtTPrime } from '../../src/operators/noise_at_t_prime.ts';
import { loraUpdate } from '../../src/operators/lora_update.ts';
import type { StepContext } from '../../src/operators/context.ts';
import { disposeDistillState, type DistillState } from '../../src/operators/state.ts';
import type { EmbeddingBatch } from '../../src/streams/reader.ts';
import { fakeBatch, makeState, makeTinyTeacher, testConfig } from './helpers.ts';

let teacher: string;
let state: DistillState;
let scheduler: TestScheduler;

beforeAll(async () => {
  teacher = await makeTinyTeacher();
});

function newScheduler() {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

/** A context without tensors, as it leaves loraUpdate. */
function doneCtx(step: number): StepContext {
  return { microStep: step - 1, step, windowIndex: 0, closesWindow: true, prompts: [], position: { epoch: 0, batchIndex: step - 1 }, tensors: {}, metrics: {} };
}

/**
 * A source that keeps the reader's contract: at most `prefetch` batches beyond the demand signals.
 * It records, at every emission, how many batches were outstanding (emitted, not yet acknowledged).
 */
function creditSource(n: number, prefetch: number, demand: Observable<unknown>, outstanding: number[], async = false): Observable<EmbeddingBatch> {
  return new Observable<EmbeddingBatch>((subscriber) => {
    let emitted = 0;
    let acked = 0;
    // Like the Parquet reader, the async mode emits from promise continuations (no re-entrancy).
    const pump = () => (async ? void Promise.resolve().then(pumpNow) : pumpNow());
    const pumpNow = () => {
      while (emitted < n && emitted < acked + prefetch) {
        outstanding.push(emitted + 1 - acked);
        subscriber.next(fakeBatch(emitted++));
      }
      if (emitted === n && acked === n) subscriber.complete();
    };
    const sub: Subscription = demand.subscribe(() => {
      acked++;
      pump();
    });
    pump();
    return () => sub.unsubscribe();
  });
}

describe('accumulation windows', () => {
  it('k = 3: both optimisers step once per 3 micro-batches', async () => {
    state = await makeState(teacher, testConfig({ gradAccum: 3 }));
    try {
      scheduler = newScheduler();
      scheduler.run(({ cold, expectObservable }) => {
        const batches = Object.fromEntries([...'abcdef'].map((k, i) => [k, fakeBatch(i)]));
        const steps = cold('a-b-c-d-e-f|', batches).pipe(toStepContext(3), swiftbrushStep(state), map((ctx) => ctx.step));
        expectObservable(steps).toBe('a-b-c-d-e-f|', { a: 0, b: 0, c: 1, d: 1, e: 1, f: 2 });
      });
      expect(state.studentOptimizer.step).toBe(2);
      expect(state.loraOptimizer.step).toBe(2);
    } finally {
      disposeDistillState(state);
    }
  });

  it('a resume with another gradAccum keeps the checkpoint\'s step count and starts a fresh window', () => {
    // Checkpoint at step 200 after 400 micro-batches of gradAccum 2, resumed with gradAccum 4.
    const contexts = from([0, 1, 2, 3, 4].map((i) => fakeBatch(i))).pipe(
      toStepContext(4, 400, 200),
      map((ctx) => {
        tf.dispose(Object.values(ctx.tensors));
        return [ctx.microStep, ctx.step, ctx.windowIndex, ctx.closesWindow];
      }),
      toArray(),
    );
    return expect(lastValueFrom(contexts)).resolves.toEqual([
      [400, 200, 0, false],
      [401, 200, 1, false],
      [402, 200, 2, false],
      [403, 200, 3, true],
      [404, 201, 0, false],
    ]);
  });

  it('a partial last window is flushed when the stream completes (as accelerate does)', async () => {
    state = await makeState(teacher, testConfig({ gradAccum: 2 }));
    try {
      await lastValueFrom(from([0, 1, 2].map((i) => fakeBatch(i))).pipe(toStepContext(2), swiftbrushStep(state), toArray()));
      expect(state.studentOptimizer.step).toBe(2);
      expect(state.loraOptimizer.step).toBe(2);
      expect(state.studentGrads.empty && state.loraGrads.empty).toBe(true);
    } finally {
      disposeDistillState(state);
    }
  });
});

describe('checkpoint cadence', () => {
  it('every 2 steps, each save taking 3 frames, holds the stream in order', async () => {
    state = await makeState(teacher, testConfig());
    const saved: number[] = [];
    const tensorsBefore = tf.memory().numTensors;
    try {
      scheduler = newScheduler();
      scheduler.run(({ cold, expectObservable }) => {
        const ctxs = { a: doneCtx(1), b: doneCtx(2), c: doneCtx(3), d: doneCtx(4), e: doneCtx(5) };
        const out = cold('a-b-c-d-e|', ctxs).pipe(
          checkpoint(state, { out: 'unused', every: 2, save: (step) => { saved.push(step); return timer(3); } }),
          map((ctx) => ctx.step),
        );
        expectObservable(out).toBe('a----(bc)(de|)', { a: 1, b: 2, c: 3, d: 4, e: 5 });
      });
      expect(saved).toEqual([2, 4]);
      expect(tf.memory().numTensors).toBe(tensorsBefore); // each snapshot is freed once its save completes
    } finally {
      disposeDistillState(state);
    }
  });

  it('a forced checkpoint (stop requested / last step) is written off-cadence', async () => {
    state = await makeState(teacher, testConfig());
    const saved: number[] = [];
    try {
      scheduler = newScheduler();
      scheduler.run(({ cold, expectObservable }) => {
        const out = cold('a-b-c|', { a: doneCtx(1), b: doneCtx(2), c: doneCtx(3) }).pipe(
          checkpoint(state, { out: 'unused', every: 100, force: (ctx) => ctx.step === 3, save: (step) => { saved.push(step); return timer(1); } }),
          map((ctx) => ctx.step),
        );
        expectObservable(out).toBe('a-b--(c|)', { a: 1, b: 2, c: 3 });
      });
      expect(saved).toEqual([3]);
    } finally {
      disposeDistillState(state);
    }
  });
});

describe('backpressure', () => {
  it('with a slow consumer the source is never more than `prefetch` batches ahead', async () => {
    state = await makeState(teacher, testConfig());
    const outstanding: number[] = [];
    const demands: number[] = [];
    const stepsAtExit: number[] = [];
    try {
      scheduler = newScheduler();
      scheduler.run(({ expectObservable }) => {
        // When a context leaves, no later micro-batch has touched the weights yet (k = 1: step m+1 done, not m+2).
        const slowConsumer = concatMap((ctx: StepContext) => timer(5).pipe(map(() => (stepsAtExit.push(state.studentOptimizer.step - ctx.microStep), ctx))));
        const steps = distill(state, {
          batches: (demand) => {
            demand.subscribe(() => demands.push(scheduler.now()));
            return creditSource(5, 2, demand, outstanding);
          },
          operators: [slowConsumer],
        }).pipe(map((ctx) => ctx.microStep));
        // One micro-batch in the chain at a time: each leaves the slow consumer 5 frames after it entered.
        expectObservable(steps).toBe('-----a----b----c----d----(e|)', { a: 0, b: 1, c: 2, d: 3, e: 4 });
      });
      // The source is credited as each batch enters the chain; it never runs more than 2 ahead.
      expect(Math.max(...outstanding)).toBeLessThanOrEqual(2);
      expect(outstanding.length).toBe(5);
      expect(demands).toEqual([0, 5, 10, 15, 20]);
      expect(stepsAtExit).toEqual([1, 1, 1, 1, 1]);
    } finally {
      disposeDistillState(state);
    }
  });
});

describe('the last step', () => {
  // Every batch is queued at frame 0 and each step then takes 3 frames (a checkpoint being written):
  // when step 3 leaves the chain, batch 3 is already waiting to be let in.
  const slowSave = concatMap((ctx: StepContext) => timer(3).pipe(map(() => ctx)));
  const batches = Object.fromEntries([...'abcdef'].map((k, i) => [k, fakeBatch(i)]));

  it('stopAfter: the stream completes after the last micro-batch; the next is never let in or computed', async () => {
    state = await makeState(teacher, testConfig());
    const demands: number[] = [];
    const lastFlags: (boolean | undefined)[] = [];
    try {
      const before = tf.memory().numTensors;
      scheduler = newScheduler();
      scheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('(abcdef)', batches); // never completes: only distill can end the run
        const steps = distill(state, {
          batches: (demand) => (demand.subscribe(() => demands.push(scheduler.now())), source),
          stopAfter: (ctx) => ctx.step === 3,
          operators: [tap((ctx) => lastFlags.push(ctx.last)), slowSave],
        }).pipe(map((ctx) => ctx.step));
        expectObservable(steps).toBe('---a--b--(c|)', { a: 1, b: 2, c: 3 });
        expectSubscriptions(source.subscriptions).toBe('^--------!');
      });
      expect(demands).toEqual([0, 3, 6]); // three batches entered the chain, the fourth never did
      expect(lastFlags).toEqual([undefined, undefined, true]); // the decision is on the context before the operators
      expect(state.studentOptimizer.step).toBe(3);
      expect(state.loraOptimizer.step).toBe(3);
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      disposeDistillState(state);
    }
  });

  it('a subscriber that stops the stream (take) stops it before another micro-batch is computed', async () => {
    state = await makeState(teacher, testConfig());
    try {
      scheduler = newScheduler();
      scheduler.run(({ cold, expectObservable }) => {
        const steps = distill(state, { batches: () => cold('(abcdef|)', batches), operators: [slowSave] }).pipe(
          map((ctx) => ctx.step),
          take(2),
        );
        expectObservable(steps).toBe('---a--(b|)', { a: 1, b: 2 });
      });
      expect(state.studentOptimizer.step).toBe(2);
      expect(state.loraOptimizer.step).toBe(2);
    } finally {
      disposeDistillState(state);
    }
  });
});

describe('teardown', () => {
  const chain = (s: DistillState, failAt: number) => [
    studentForward(s),
    noiseAtT(s),
    stepOperator((ctx) => {
      if (ctx.microStep === failAt) throw new Error('boom in a custom operator');
    }),
    teacherCFG(s),
    vsdUpdate(s),
    noiseAtTPrime(s),
    loraUpdate(s),
  ];

  it('an error in one operator tears the chain down: error sent, source unsubscribed, no tensor left', async () => {
    state = await makeState(teacher, testConfig());
    try {
      const before = tf.memory().numTensors;
      scheduler = newScheduler();
      scheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
        const source = hot('-a-b-c-d|', { a: fakeBatch(0), b: fakeBatch(1), c: fakeBatch(2), d: fakeBatch(3) });
        const ops = chain(state, 1);
        const out = source.pipe(toStepContext(1), (s) => ops.reduce((acc, op) => op(acc), s), map((ctx) => ctx.microStep));
        expectObservable(out).toBe('-a-#', { a: 0 }, new Error('boom in a custom operator'));
        expectSubscriptions(source.subscriptions).toBe('^--!');
      });
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      disposeDistillState(state);
    }
  });

  it('an error inside the UNet (wrong embedding width) disposes the in-flight tensors too', async () => {
    state = await makeState(teacher, testConfig());
    try {
      const before = tf.memory().numTensors;
      const bad = { ...fakeBatch(0), embeds: new Float32Array(2 * 8 * 16), shape: [2, 8, 16] as [number, number, number] };
      await expect(lastValueFrom(from([bad]).pipe(toStepContext(1), swiftbrushStep(state)))).rejects.toThrow();
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      disposeDistillState(state);
    }
  });

  it('unsubscribing mid-stream leaves no tensor behind, and tensors stay flat across steps', async () => {
    state = await makeState(teacher, testConfig({ gradAccum: 2 }));
    try {
      const counts: number[] = [];
      const before = tf.memory().numTensors;
      await lastValueFrom(
        distill(state, { batches: (demand) => creditSource(100, 2, demand, [], true) }).pipe(
          map(() => counts.push(tf.memory().numTensors)),
          take(8),
        ),
      );
      // The count depends only on the position in the window (mid-window the accumulators hold one
      // gradient per parameter); it never grows from one window to the next.
      expect(new Set(counts.filter((_, i) => i % 2 === 1)).size).toBe(1);
      expect(new Set(counts.filter((_, i) => i % 2 === 0)).size).toBe(1);
      // Only the accumulators of an unfinished window may remain; after a full window, none.
      expect(state.studentGrads.empty).toBe(true);
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      disposeDistillState(state);
    }
  });
});

afterAll(() => {
  // every state was disposed in its test
});
