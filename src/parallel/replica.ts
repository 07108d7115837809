/**
 * A replica thread: builds its own copy of the distillation state and, for each micro-batch the
 * main thread hands it, runs the same operators as the main stream up to (not including) the
 * optimiser steps, then writes the student and LoRA gradients into shared memory.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Subject } from 'rxjs';
import { tf } from '../tf.ts';
import { initBackend } from '../backend.ts';
import { createDistillState, type DistillState } from '../operators/state.ts';
import type { StepContext } from '../operators/context.ts';
import { studentForward } from '../operators/student_forward.ts';
import { noiseAtT } from '../operators/noise_at_t.ts';
import { teacherCFG } from '../operators/teacher_cfg.ts';
import { vsdUpdate } from '../operators/vsd_update.ts';
import { noiseAtTPrime } from '../operators/noise_at_t_prime.ts';
import { loraUpdate } from '../operators/lora_update.ts';
import { CTRL, SLOT, packInto, parameterLayout, unpack, writeError, type ReplicaInit } from './replica_pool.ts';

const init = workerData as ReplicaInit;
const control = new Int32Array(init.slot.control);
const version = new Int32Array(init.weightsVersion);

/** Loads the published weights into this replica's variables. */
function loadWeights(state: DistillState, variables: tf.Variable[]): void {
  const tensors = unpack(new Float32Array(init.weights), variables.map((v) => v.shape));
  variables.forEach((v, i) => v.assign(tensors[i]!));
  tf.dispose(tensors);
}

async function main(): Promise<void> {
  await initBackend(init.backend);
  // The replica never steps an optimiser: its state's replicas field stays unset.
  const state = await createDistillState({ teacherDir: init.teacherDir, nullEmbeds: init.nullEmbeds, embedShape: init.embedShape, config: init.config });
  const { layout, variables } = parameterLayout(state);
  const mismatch = layout.findIndex((l, i) => l.name !== init.layout[i]?.name || l.size !== init.layout[i]?.size);
  if (mismatch >= 0 || layout.length !== init.layout.length) throw new Error(`parameter layout differs from the main thread's at #${mismatch} (${layout[mismatch]?.name})`);
  const [L, D] = init.embedShape;

  // The same operators as the main stream, fed one micro-batch at a time; never completed (so no
  // end-of-stream flush steps an optimiser here).
  const input = new Subject<StepContext>();
  let finished: StepContext | null = null;
  let failure: unknown = null;
  input.pipe(studentForward(state), noiseAtT(state), teacherCFG(state), vsdUpdate(state), noiseAtTPrime(state), loraUpdate(state)).subscribe({
    next: (ctx) => (finished = ctx),
    error: (err) => (failure = err),
  });
  parentPort!.postMessage({ ready: true });

  let loadedVersion = -1;
  for (;;) {
    const s = Atomics.load(control, CTRL.state);
    if (s === SLOT.stop) break;
    if (s !== SLOT.job) {
      // Sleep until the state word changes (idle → job, or done/failed → idle once the main thread
      // has read the result); waiting only on 'idle' would spin a core while 'done' is unread.
      Atomics.wait(control, CTRL.state, s);
      continue;
    }
    try {
      const published = Atomics.load(version, 0);
      if (published !== loadedVersion) {
        loadWeights(state, variables);
        loadedVersion = published;
      }
      const microStep = Atomics.load(control, CTRL.microStep);
      const batchSize = Atomics.load(control, CTRL.batchSize);
      const step = Atomics.load(control, CTRL.step);
      const embeds = new Float32Array(init.slot.embeds, 0, batchSize * L * D).slice();
      const gradAccum = state.config.gradAccum;
      finished = null;
      input.next({
        microStep,
        step,
        windowIndex: microStep % gradAccum, // unused here: the replica never closes a window
        closesWindow: false, // the main thread closes every window
        prompts: [],
        position: { epoch: 0, batchIndex: microStep },
        tensors: { promptEmbeds: tf.tensor3d(embeds, [batchSize, L, D]) },
        metrics: {},
      });
      if (failure) throw failure;
      if (!finished) throw new Error('the step produced no result');
      const student = state.studentGrads.take(); // empty on a LoRA-only step (studentUpdateEvery)
      const lora = state.loraGrads.take();
      const grads = new Float32Array(init.slot.grads);
      const studentFloats = init.layout.slice(0, init.studentCount).reduce((a, l) => a + l.size, 0);
      if (student.size) packInto(grads.subarray(0, studentFloats), [...student.values()]);
      packInto(grads.subarray(studentFloats), [...lora.values()]);
      tf.dispose([...student.values(), ...lora.values()]);
      Atomics.store(control, CTRL.state, SLOT.done);
    } catch (err) {
      writeError(init.slot.error, err instanceof Error ? err.stack ?? err.message : String(err));
      Atomics.store(control, CTRL.state, SLOT.failed);
    }
    Atomics.notify(control, CTRL.state);
  }
}

main().catch((err: unknown) => {
  parentPort!.postMessage({ error: err instanceof Error ? err.message : String(err) });
});
