/**
 * metrics: one JSON line per optimiser step in `path` (metrics.jsonl), with the window's mean
 * losses, pre-clip gradient norms, skipped updates, learning rates, throughput and memory, as
 * accelerate's trackers would log them. Synchronous appends (a line per step is cheap).
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { tap, type MonoTypeOperatorFunction } from 'rxjs';
import { tf } from '../tf.ts';
import type { StepContext } from './context.ts';
import type { DistillState } from './state.ts';

export interface StepRecord {
  step: number;
  micro_step: number;
  loss_vsd: number | null;
  loss_lora: number | null;
  grad_norm_student: number | null;
  grad_norm_lora: number | null;
  skipped: boolean;
  skipped_total: number;
  lr_student: number;
  lr_lora: number;
  samples_per_s: number;
  num_tensors: number;
  rss_mib: number;
  time: string;
}

/** Folds micro-batches into per-step records; `onRecord` gets one per optimiser step. */
export function stepRecords(state: DistillState, onRecord: (r: StepRecord) => void, now: () => number = () => performance.now()): MonoTypeOperatorFunction<StepContext> {
  // Means over the window's micro-batches that report a loss (those computed on replica threads,
  // and the student's loss on LoRA-only steps, report none).
  const vsd = { sum: 0, n: 0 };
  const lora = { sum: 0, n: 0 };
  const add = (acc: { sum: number; n: number }, v: number | undefined) => {
    if (v === undefined) return;
    acc.sum += v;
    acc.n += 1;
  };
  const mean = (acc: { sum: number; n: number }) => (acc.n ? acc.sum / acc.n : null);
  let samples = 0;
  let windowStart = now();
  return tap((ctx: StepContext) => {
    add(vsd, ctx.metrics.lossVsd);
    add(lora, ctx.metrics.lossLora);
    samples += ctx.prompts.length;
    if (!ctx.closesWindow) return;
    const t = now();
    onRecord({
      step: ctx.step,
      micro_step: ctx.microStep,
      loss_vsd: ctx.metrics.windowLossVsd ?? mean(vsd),
      loss_lora: ctx.metrics.windowLossLora ?? mean(lora),
      grad_norm_student: ctx.metrics.gradNormStudent ?? null,
      grad_norm_lora: ctx.metrics.gradNormLora ?? null,
      skipped: Boolean(ctx.metrics.skippedStudent || ctx.metrics.skippedLora),
      skipped_total: state.counters.skippedSteps,
      lr_student: state.studentOptimizer.lr,
      lr_lora: state.loraOptimizer.lr,
      samples_per_s: samples / Math.max(1e-9, (t - windowStart) / 1000),
      num_tensors: tf.memory().numTensors,
      rss_mib: Math.round(process.memoryUsage().rss / 2 ** 20),
      time: new Date().toISOString(),
    });
    vsd.sum = vsd.n = lora.sum = lora.n = samples = 0;
    windowStart = t;
  });
}

export function metricsJsonl(state: DistillState, path: string): MonoTypeOperatorFunction<StepContext> {
  mkdirSync(dirname(path), { recursive: true });
  return stepRecords(state, (r) => appendFileSync(path, JSON.stringify(r) + '\n'));
}
