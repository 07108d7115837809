/**
 * Data-parallel replicas: worker threads that each hold a copy of the models and compute the
 * gradients of whole micro-batches, so a gradient-accumulation window of k micro-batches runs on
 * up to k cores at once (wasm kernels are single-threaded under Node).
 *
 * The main thread keeps the only optimisers. For a window it hands micro-batches 0 … k−2 to the
 * replicas (`submit`), computes the window's last micro-batch itself, then — just before the
 * optimiser steps — adds the replicas' gradients to its accumulators (`collectInto`), and after the
 * steps writes the new weights where the replicas read them (`publish`). Every random draw is keyed
 * by the micro-batch index, so the result equals the same window computed sequentially (up to the
 * order of a floating-point sum).
 *
 * Everything crosses threads through SharedArrayBuffers and Atomics, synchronously: the operators
 * stay synchronous maps, and a replica's gradients are read as soon as it has written them. The
 * losses in metrics.jsonl are those of the main thread's micro-batches.
 */
import { Worker } from 'node:worker_threads';
import { tf } from '../tf.ts';
import type { Tensor } from '../tf.ts';
import type { NamedGrads } from '../models/optim.ts';
import { updatesStudent, type DistillConfig, type DistillState, type Replicas } from '../operators/state.ts';

/** Slot states (Int32 in shared memory). */
export const SLOT = { idle: 0, job: 1, done: 2, failed: 3, stop: 4 } as const;
/** Slot control words. */
export const CTRL = { state: 0, microStep: 1, batchSize: 2, step: 3, size: 4 } as const;
const ERROR_BYTES = 4096;

/** What a replica needs to build its own copy of the distillation state. */
export interface ReplicaInit {
  backend: string;
  teacherDir: string;
  nullEmbeds: Float32Array;
  embedShape: [number, number];
  config: DistillConfig;
  /** Parameter names and sizes, student then LoRA: the layout of the weight and gradient buffers. */
  layout: { name: string; size: number }[];
  studentCount: number;
  maxBatch: number;
  weights: SharedArrayBuffer;
  weightsVersion: SharedArrayBuffer;
  slot: ReplicaSlotBuffers;
}

export interface ReplicaSlotBuffers {
  control: SharedArrayBuffer;
  embeds: SharedArrayBuffer;
  grads: SharedArrayBuffer;
  error: SharedArrayBuffer;
}

/** Student parameters, then LoRA parameters, in their stores' (construction) order. */
export function parameterLayout(state: DistillState): { layout: { name: string; size: number }[]; studentCount: number; variables: tf.Variable[] } {
  const student = [...state.student.store.named()];
  const lora = [...state.lora.store.named()].map(([name, v]) => [`lora:${name}`, v] as const);
  const all = [...student, ...lora];
  return { layout: all.map(([name, v]) => ({ name, size: v.size })), studentCount: student.length, variables: all.map(([, v]) => v) };
}

function slotBuffers(total: number, maxEmbeds: number): ReplicaSlotBuffers {
  return {
    control: new SharedArrayBuffer(CTRL.size * 4),
    embeds: new SharedArrayBuffer(maxEmbeds * 4),
    grads: new SharedArrayBuffer(total * 4),
    error: new SharedArrayBuffer(ERROR_BYTES),
  };
}

/** Copies `tensors` (in layout order) into one flat Float32Array. */
export function packInto(target: Float32Array, tensors: Tensor[]): void {
  let offset = 0;
  for (const t of tensors) {
    const data = t.dataSync() as Float32Array;
    target.set(data, offset);
    offset += data.length;
  }
}

/** Splits a flat buffer into tensors of the layout's shapes. */
export function unpack(source: Float32Array, shapes: number[][], from = 0, count = shapes.length): Tensor[] {
  let offset = shapes.slice(0, from).reduce((a, s) => a + sizeOf(s), 0);
  const out: Tensor[] = [];
  for (let i = from; i < from + count; i++) {
    const n = sizeOf(shapes[i]!);
    out.push(tf.tensor(source.slice(offset, offset + n), shapes[i]!, 'float32'));
    offset += n;
  }
  return out;
}

const sizeOf = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

export function writeError(buffer: SharedArrayBuffer, message: string): void {
  const bytes = new TextEncoder().encode(message.slice(0, ERROR_BYTES / 4));
  const view = new Uint8Array(buffer);
  view.fill(0);
  view.set(bytes.subarray(0, ERROR_BYTES - 1));
}

function readError(buffer: SharedArrayBuffer): string {
  const view = new Uint8Array(buffer);
  const end = view.indexOf(0);
  return new TextDecoder().decode(view.slice(0, end < 0 ? view.length : end));
}

interface Slot {
  worker: Worker;
  buffers: ReplicaSlotBuffers;
  control: Int32Array;
  embeds: Float32Array;
  grads: Float32Array;
  busyWith: number | null;
  /** The optimiser step of the micro-batch in progress. */
  busyStep: number;
}

export class ReplicaPool implements Replicas {
  private constructor(
    private readonly slots: Slot[],
    private readonly weights: Float32Array,
    private readonly version: Int32Array,
    private readonly variables: tf.Variable[],
    private readonly shapes: number[][],
    private readonly studentCount: number,
    private readonly studentNames: string[],
    private readonly loraNames: string[],
  ) {}

  /** Workers besides the main thread. */
  get size(): number {
    return this.slots.length;
  }

  /**
   * Starts `count` replica threads for `state` (each builds its own models from `teacherDir`) and
   * publishes the current weights to them.
   */
  static async start(state: DistillState, options: { count: number; teacherDir: string; backend: string; maxBatch: number }): Promise<ReplicaPool> {
    const { layout, studentCount, variables } = parameterLayout(state);
    const total = layout.reduce((a, l) => a + l.size, 0);
    const weights = new SharedArrayBuffer(total * 4);
    const weightsVersion = new SharedArrayBuffer(4);
    const [L, D] = [state.nullEmbeds.shape[1], state.nullEmbeds.shape[2]];
    const nullEmbeds = state.nullEmbeds.dataSync() as Float32Array;
    const slots: Slot[] = [];
    try {
      for (let i = 0; i < options.count; i++) {
        const buffers = slotBuffers(total, options.maxBatch * L * D);
        const init: ReplicaInit = { backend: options.backend, teacherDir: options.teacherDir, nullEmbeds: nullEmbeds.slice(), embedShape: [L, D], config: state.config, layout, studentCount, maxBatch: options.maxBatch, weights, weightsVersion, slot: buffers };
        const worker = new Worker(new URL('./replica_worker.mjs', import.meta.url), { workerData: init, execArgv: [] });
        slots.push({ worker, buffers, control: new Int32Array(buffers.control), embeds: new Float32Array(buffers.embeds), grads: new Float32Array(buffers.grads), busyWith: null, busyStep: 0 });
      }
      await Promise.all(slots.map((s, i) => whenReady(s.worker, i)));
    } catch (err) {
      await Promise.all(slots.map((s) => s.worker.terminate()));
      throw err;
    }
    const student = [...state.student.store.named().keys()];
    const lora = [...state.lora.store.named().keys()];
    const pool = new ReplicaPool(slots, new Float32Array(weights), new Int32Array(weightsVersion), variables, variables.map((v) => v.shape), studentCount, student, lora);
    pool.publish();
    return pool;
  }

  /** Writes the current student and LoRA weights for the replicas (call when every slot is idle). */
  publish(): void {
    packInto(this.weights, this.variables);
    Atomics.add(this.version, 0, 1);
  }

  /** Slot for a micro-batch that does not close its window: window index i → replica i mod size. */
  slotFor(windowIndex: number): number {
    return windowIndex % this.slots.length;
  }

  /**
   * Hands one micro-batch to replica `index` (waiting for that replica's previous micro-batch
   * first, whose gradients then go into `state`'s accumulators). `step` is the optimiser step the
   * micro-batch belongs to (the global micro-step index alone does not tell it under MPI or after a
   * resume with another --grad-accum).
   */
  submit(index: number, microStep: number, step: number, embeds: Float32Array, batchSize: number, state: DistillState): void {
    const slot = this.slots[index]!;
    if (slot.busyWith !== null) this.harvest(slot, index, state);
    if (embeds.length > slot.embeds.length) throw new Error(`replica ${index + 1}: a micro-batch of ${batchSize} prompts exceeds the ${slot.embeds.length} floats reserved`);
    slot.embeds.set(embeds);
    Atomics.store(slot.control, CTRL.microStep, microStep);
    Atomics.store(slot.control, CTRL.batchSize, batchSize);
    Atomics.store(slot.control, CTRL.step, step);
    slot.busyWith = microStep;
    slot.busyStep = step;
    Atomics.store(slot.control, CTRL.state, SLOT.job);
    Atomics.notify(slot.control, CTRL.state);
  }

  /** Waits for every busy replica and adds its gradients to `state`'s student and LoRA accumulators. */
  collectInto(state: DistillState): void {
    this.slots.forEach((slot, i) => {
      if (slot.busyWith !== null) this.harvest(slot, i, state);
    });
  }

  private harvest(slot: Slot, index: number, state: DistillState): void {
    for (;;) {
      const s = Atomics.load(slot.control, CTRL.state);
      if (s === SLOT.done) break;
      if (s === SLOT.failed) throw new Error(`replica ${index + 1} failed on micro-batch ${slot.busyWith}: ${readError(slot.buffers.error)}`);
      Atomics.wait(slot.control, CTRL.state, s, 60_000);
    }
    // The replica weighted its micro-batch 1/gradAccum; across an MPI world of N processes the
    // window's weight is 1/(gradAccum·N) (gradient_sync.ts).
    const weight = 1 / (state.world?.size ?? 1);
    if (updatesStudent(state.config, slot.busyStep)) state.studentGrads.addOwned(named(this.studentNames, unpack(slot.grads, this.shapes, 0, this.studentCount)), weight);
    state.loraGrads.addOwned(named(this.loraNames, unpack(slot.grads, this.shapes, this.studentCount, this.shapes.length - this.studentCount)), weight);
    slot.busyWith = null;
    Atomics.store(slot.control, CTRL.state, SLOT.idle);
  }

  async dispose(): Promise<void> {
    for (const slot of this.slots) {
      Atomics.store(slot.control, CTRL.state, SLOT.stop);
      Atomics.notify(slot.control, CTRL.state);
    }
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}

function named(names: string[], tensors: Tensor[]): NamedGrads {
  return new Map(names.map((n, i) => [n, tensors[i]!]));
}

function whenReady(worker: Worker, index: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (err: Error) => reject(new Error(`replica ${index + 1} could not start: ${err.message}`));
    worker.once('error', fail);
    worker.once('exit', (code) => fail(new Error(`exited with code ${code}`)));
    worker.once('message', (msg: { ready?: true; error?: string }) => {
      worker.removeAllListeners('exit');
      worker.removeAllListeners('error');
      worker.on('error', () => {}); // later failures surface through the slot's state
      if (msg.ready) resolve();
      else fail(new Error(msg.error ?? 'unknown error'));
    });
  });
}
