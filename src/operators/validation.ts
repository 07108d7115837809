/**
 * validation: every `every` optimiser steps, the student (its EMA weights when there is an EMA,
 * as diffusers' training scripts validate) draws one image per validation prompt from FIXED noise
 * (same seed every time, so grids are comparable across steps) and writes
 * `OUT/samples/step-<step>.png`. Rendering is synchronous; only the PNG write is asynchronous.
 */
import { join } from 'node:path';
import { concatMap, endWith, from, ignoreElements, of, type OperatorFunction } from 'rxjs';
import { tf } from '../tf.ts';
import type { Tensor3D, Tensor4D } from '../tf.ts';
import { writeImageGrid } from '../util/png.ts';
import { StepRng, STREAMS } from '../util/rng.ts';
import type { StepContext } from './context.ts';
import type { DistillState } from './state.ts';
import { latentShape, studentX0 } from '../swiftbrush/math.ts';

export interface ValidationOptions {
  out: string;
  every: number;
  /** Embeddings of the validation prompts [n, L, D]. */
  embeds: Float32Array;
  shape: [number, number, number];
  /** The validation prompts' text, written beside their rows of the grid. */
  prompts?: readonly string[];
  seed?: number;
  /** Images per prompt (grid columns). */
  perPrompt?: number;
}

/** Runs `fn` with the student's weights replaced by its EMA shadows, restoring them after. */
export function withEmaWeights<T>(state: DistillState, fn: () => T): T {
  if (!state.ema) return fn();
  const params = state.student.store.named();
  const saved = new Map([...params].map(([name, v]) => [name, tf.clone(v)]));
  try {
    for (const [name, v] of params) v.assign(state.ema.get(name));
    return fn();
  } finally {
    for (const [name, v] of params) v.assign(saved.get(name)!);
    tf.dispose([...saved.values()]);
  }
}

/** One-step samples of the student for the validation prompts: host [n·k, H, W, C]. */
export function renderValidation(state: DistillState, options: ValidationOptions): { images: Float32Array; shape: [number, number, number, number] } {
  const k = options.perPrompt ?? 4;
  const [n, L, D] = options.shape;
  const shape = latentShape(state);
  return withEmaWeights(state, () =>
    tf.tidy(() => {
      const y = tf.tensor3d(options.embeds, [n, L, D]);
      const yk = tf.reshape(tf.tile(tf.expandDims(y, 1), [1, k, 1, 1]), [n * k, L, D]) as Tensor3D;
      const z = new StepRng(options.seed ?? 0).normal(0, STREAMS.validation, [n * k, ...shape]) as Tensor4D;
      const x0 = studentX0(state, z, yk);
      return { images: x0.dataSync() as Float32Array, shape: [n * k, ...shape] as [number, number, number, number] };
    }),
  );
}

export function validation(state: DistillState, options: ValidationOptions): OperatorFunction<StepContext, StepContext> {
  return concatMap((ctx: StepContext) => {
    if (!ctx.closesWindow || ctx.step % options.every !== 0) return of(ctx);
    const { images, shape } = renderValidation(state, options);
    const path = join(options.out, 'samples', `step-${String(ctx.step).padStart(6, '0')}.png`);
    const cols = options.perPrompt ?? 4;
    const labels = { rowLabels: options.prompts, columnLabels: [{ text: `student, 1 step, at step ${ctx.step}`, from: 0, to: cols }] };
    return from(writeImageGrid(path, images, shape, { cols, range: [-1, 1], ...labels })).pipe(ignoreElements(), endWith(ctx));
  });
}
