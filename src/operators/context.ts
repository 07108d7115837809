/**
 * The value that flows through the distillation stream: one micro-batch, its tensors and counters.
 *
 * Ownership: every tensor in `tensors` is owned by the context. An operator that reads a tensor and
 * is its last user disposes it and deletes the key; an operator that adds one hands it to the
 * context. After `loraUpdate` the context holds no tensors. `disposeContext` frees whatever is left
 * (used when an operator fails or the stream is torn down).
 */
import type { Tensor, Tensor3D, Tensor4D } from '../tf.ts';
import { tf } from '../tf.ts';
import type { StreamPosition } from '../streams/reader.ts';

export interface StepTensors {
  /** y: prompt embeddings [B, L, D] (from the source; disposed by loraUpdate). */
  promptEmbeds?: Tensor3D;
  /** z ~ N(0, I), the student's input noise [B, H, W, C] (studentForward → vsdUpdate). */
  latents?: Tensor4D;
  /** x̂0 = f_θ(z, y), no gradient attached [B, H, W, C] (studentForward → noiseAtT′). */
  x0?: Tensor4D;
  /** ε added at t (noiseAtT → vsdUpdate, whose 'dmd' weighting reads it). */
  noise?: Tensor4D;
  /** x̂_t = √ᾱ_t x̂0 + σ_t ε (noiseAtT → teacherCFG). */
  noisyX0?: Tensor4D;
  /** CFG-guided ε of the frozen teacher and of the LoRA teacher (teacherCFG → vsdUpdate). */
  epsTeacher?: Tensor4D;
  epsLora?: Tensor4D;
  /** x̂_t′ and the LoRA teacher's regression target (ε′, or v for a v-prediction teacher) (noiseAtT′ → loraUpdate). */
  loraNoisyX0?: Tensor4D;
  loraTarget?: Tensor4D;
}

export interface StepMetrics {
  /** 0.5·mean(g²), the VSD loss value (its gradient w.r.t. x̂0 is g / numel). */
  lossVsd?: number;
  /** The LoRA teacher's weighted denoising MSE. */
  lossLora?: number;
  /** Mean losses of the whole window over every MPI process (set by syncProcesses on a window's end). */
  windowLossVsd?: number;
  windowLossLora?: number;
  /** Pre-clip gradient norms, on micro-batches that close a window. */
  gradNormStudent?: number;
  gradNormLora?: number;
  /** True when a window's update was skipped for a non-finite loss or gradient. */
  skippedStudent?: boolean;
  skippedLora?: boolean;
}

export interface StepContext {
  /** Global micro-batch index, 0-based; also the key of every random draw of this micro-batch. */
  microStep: number;
  /** Optimiser steps completed; loraUpdate increments it on the micro-batch that closes a window. */
  step: number;
  /** Position inside the accumulation window, 0 … k−1. */
  windowIndex: number;
  /** True on the last micro-batch of a window: both optimisers step after it. */
  closesWindow: boolean;
  prompts: string[];
  position: StreamPosition;
  /** Timesteps drawn by noiseAtT (t ∈ [tMin, tMax]) and noiseAtT′ (t′ ∈ [0, T−1]), per sample. */
  timesteps?: number[];
  loraTimesteps?: number[];
  /** noiseAtT′'s per-batch draw: the LoRA teacher is conditioned on the null prompt. */
  loraUsesNullPrompt?: boolean;
  tensors: StepTensors;
  metrics: StepMetrics;
  /**
   * Set when `offloadToReplicas` handed this micro-batch to a data-parallel replica (1-based): the
   * context then holds no tensors and every built-in operator passes it through untouched (its
   * gradients join the window's when the main thread closes the window).
   */
  onReplica?: number;
  /**
   * True on the run's last micro-batch (distill's `stopAfter` said so when the step was computed):
   * the stream completes after it. Operators after the step may act on it (checkpoint saves on it).
   */
  last?: boolean;
}

/**
 * A fresh context for one micro-batch: it owns `promptEmbeds` from here on. `closesWindow` says
 * whether the optimisers step after it; a context whose window does not close leaves its gradients
 * in the state's accumulators (a replica's share, or `swiftbrush step` reading them).
 */
export function createStepContext(init: Pick<StepContext, 'microStep' | 'step' | 'windowIndex' | 'closesWindow' | 'prompts' | 'position'> & { promptEmbeds: Tensor3D }): StepContext {
  const { promptEmbeds, ...counters } = init;
  return { ...counters, tensors: { promptEmbeds }, metrics: {} };
}

/** Removes a tensor from the context and returns it; the caller now owns it. */
export function take<K extends keyof StepTensors>(ctx: StepContext, key: K, operator: string): NonNullable<StepTensors[K]> {
  const t = ctx.tensors[key];
  if (!t) throw new Error(`${operator}: the step context has no '${key}' (is an operator missing before ${operator}?)`);
  delete ctx.tensors[key];
  return t as NonNullable<StepTensors[K]>;
}

/** Reads a tensor the context keeps owning. */
export function need<K extends keyof StepTensors>(ctx: StepContext, key: K, operator: string): NonNullable<StepTensors[K]> {
  const t = ctx.tensors[key];
  if (!t) throw new Error(`${operator}: the step context has no '${key}' (is an operator missing before ${operator}?)`);
  return t as NonNullable<StepTensors[K]>;
}

export function contextTensors(ctx: StepContext): Tensor[] {
  return Object.values(ctx.tensors).filter((t): t is Tensor => Boolean(t));
}

/** Disposes every tensor the context still owns. */
export function disposeContext(ctx: StepContext): void {
  tf.dispose(contextTensors(ctx));
  ctx.tensors = {};
}
