/**
 * Where a window's gradients meet before an optimiser steps (the one place both kinds of data
 * parallelism join):
 * - inside a process, the replica threads' micro-batches have been added to the accumulators
 *   (`ReplicaPool.collectInto`) before the main thread's own;
 * - across the processes of an MPI world, `allProcessesGradients` sums the accumulators with ONE
 *   MPI_Allreduce per optimiser (every gradient of the model flattened into one buffer, then split
 *   back), and `agreeOnSkip` makes every process take the same decision to skip a non-finite step.
 *
 * Each micro-batch's gradient is weighted 1 / (gradAccum · worldSize), so the all-reduced sum is the
 * mean over the global window: N processes at --grad-accum k compute what one process computes at
 * --grad-accum N·k. Every process then applies the same Adam step to the same weights.
 */
import { tf } from '../tf.ts';
import type { Tensor } from '../tf.ts';
import type { NamedGrads } from '../models/optim.ts';
import type { DistillState } from '../operators/state.ts';
import type { World } from './mpi.ts';

export type Model = 'student' | 'lora';

/** The weight of one micro-batch's gradient in its window's sum. */
export function microBatchWeight(state: Pick<DistillState, 'config' | 'world'>): number {
  return 1 / (state.config.gradAccum * (state.world?.size ?? 1));
}

/** Flat host buffers for the all-reduce, one per model, reused from step to step. */
const buffers = new WeakMap<World, Map<Model, Float32Array>>();

function bufferFor(world: World, model: Model, floats: number): Float32Array {
  let byModel = buffers.get(world);
  if (!byModel) buffers.set(world, (byModel = new Map()));
  let buffer = byModel.get(model);
  if (!buffer || buffer.length !== floats) byModel.set(model, (buffer = new Float32Array(floats)));
  return buffer;
}

/**
 * Sums named gradients over every process of `world` (one MPI_Allreduce): packs them in the
 * parameter order of `params` (a gradient a process does not have counts as zeros), reduces, and
 * returns new tensors; `grads` are disposed.
 */
export function allreduceGradients(world: World, model: Model, params: Map<string, tf.Variable>, grads: NamedGrads): NamedGrads {
  const layout = [...params].map(([name, v]) => ({ name, shape: v.shape, size: v.size }));
  const flat = bufferFor(world, model, layout.reduce((a, l) => a + l.size, 0));
  let offset = 0;
  for (const { name, size } of layout) {
    const g = grads.get(name);
    if (g) flat.set(g.dataSync() as Float32Array, offset);
    else flat.fill(0, offset, offset + size);
    offset += size;
  }
  tf.dispose([...grads.values()]);
  world.allreduceSum(flat);
  const out: NamedGrads = new Map();
  offset = 0;
  for (const { name, shape, size } of layout) {
    out.set(name, tf.tensor(flat.slice(offset, offset + size), shape, 'float32') as Tensor);
    offset += size;
  }
  return out;
}

/** A window's summed gradients of one model (this process's), summed over every process of the run; ownership passes. */
export function allProcessesGradients(state: DistillState, model: Model, local: NamedGrads): NamedGrads {
  const world = state.world;
  if (!world || world.size === 1) return local;
  const params = model === 'student' ? state.student.store.named() : state.lora.store.named();
  return allreduceGradients(world, model, params, local);
}

/** True on every process when any process would skip (a non-finite norm there): all skip together. */
export function agreeOnSkip(world: World | undefined, skip: boolean): boolean {
  if (!world || world.size === 1) return skip;
  const v = new Float64Array([skip ? 1 : 0]);
  world.allreduceMax64(v);
  return v[0]! > 0;
}
