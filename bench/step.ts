/**
 * The distillation step benchmark behind `swiftbrush bench` (npm run bench).
 *
 * Measures, on one UNet (default: the diffusers fixture, 4x16x16) at one batch size:
 * - the median seconds per step of the REAL stream (`distill`, fed by an in-memory pulled source);
 * - the median seconds per step of the REFERENCE loop (src/swiftbrush/reference_step.ts: the same
 *   math, optimiser steps and rules, the same UNet passes, no RxJS; the difference is the stream's
 *   overhead);
 * - each operator's share of the step (the six operators + EMA, each wrapped in a timer, in a third
 *   composed stream of the same operators);
 * - UNet forward (no tape) and forward+backward (grads of every student weight) in ms;
 * - peak RSS, RSS after warm-up vs at the end, and tf.memory().numTensors drift after warm-up.
 *
 * Stream and fused steps ALTERNATE one by one (the stream is fed one micro-batch at a time), and
 * the stream's overhead is the median of the per-pair ratios, with a bootstrap interval: load from
 * other processes on the machine hits both alike. Paired rounds, the timed stream and the
 * data-parallel stream are interleaved in rounds of a few steps; every figure is a median.
 */
import { mkdtemp, readFile, symlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Observable, Subject, lastValueFrom, pipe, tap, type OperatorFunction } from 'rxjs';
import { tf } from '../src/tf.ts';
import type { Tensor3D, Tensor4D } from '../src/tf.ts';
import type { EmbeddingBatch } from '../src/streams/reader.ts';
import { readNullEmbedding } from '../src/streams/reader.ts';
import { mulberry32 } from '../src/util/rng.ts';
import type { StepContext } from '../src/operators/context.ts';
import { distill, toStepContext } from '../src/operators/pipeline.ts';
import { createDistillState, disposeDistillState, OFFICIAL_DEFAULTS, resolveTeacherDirs, type DistillConfig, type DistillState } from '../src/operators/state.ts';
import { studentForward } from '../src/operators/student_forward.ts';
import { noiseAtT } from '../src/operators/noise_at_t.ts';
import { teacherCFG } from '../src/operators/teacher_cfg.ts';
import { vsdUpdate } from '../src/operators/vsd_update.ts';
import { noiseAtTPrime } from '../src/operators/noise_at_t_prime.ts';
import { loraUpdate } from '../src/operators/lora_update.ts';
import { latentShape } from '../src/swiftbrush/math.ts';
import { variableGrads } from '../src/models/backprop.ts';
import { referenceStep } from '../src/swiftbrush/reference_step.ts';
import { emaUpdate } from '../src/operators/ema_update.ts';
import { ReplicaPool } from '../src/parallel/replica_pool.ts';
import { FIXTURE_SCHEDULER, FIXTURE_UNET, median } from './common.ts';

export { FIXTURE_SCHEDULER, FIXTURE_UNET };

export interface BenchOptions {
  /** A pipeline folder (unet/ + scheduler/) or a bare unet folder (then `scheduler` or ../scheduler). */
  unet: string;
  /** Scheduler folder used when `unet` is a bare unet folder without a sibling scheduler/. */
  scheduler?: string;
  batchSize: number;
  /** Timed steps per mode (stream, fused, timed stream); >= 20 recommended. */
  steps: number;
  warmup: number;
  /** Steps per interleaved round. */
  round: number;
  /** UNet forward / forward+backward timed repetitions. */
  unetReps: number;
  /** Embeddings file whose "" row is the null prompt (zeros when absent or of another width). */
  embeddings?: string;
  config?: Partial<DistillConfig>;
  /** Prompt tokens L of the synthetic embeddings when `embeddings` has no null prompt of the UNet's width (default 8). */
  tokens?: number;
  /**
   * Also time data parallelism: the same optimiser step (batch B) as R micro-batches of B/R over
   * R threads (`--replicas R --grad-accum R`), interleaved with the other modes. 1 = skip.
   */
  replicas?: number;
  /** Called after each round (progress on stderr). */
  onProgress?: (done: number, total: number) => void;
}

export interface BenchResult {
  backend: string;
  unet: string;
  batch_size: number;
  steps: number;
  params: number;
  /** Median seconds per step: the real `distill` stream. */
  step_s: number;
  /** Median seconds per step: the reference loop (same math and UNet passes, no RxJS). */
  fused_step_s: number;
  /**
   * The stream's overhead: the median over pairs of (stream step / fused step) − 1, where each pair
   * is one stream step and one fused step run back to back (positive: the stream is slower).
   */
  stream_overhead: number;
  /** 95 % bootstrap interval of `stream_overhead` (percentile method, 2,000 resamples of the pairs). */
  stream_overhead_ci95: [number, number];
  /** Median ms per operator (timed stream) and each one's share of their sum. */
  operator_ms: Record<string, number>;
  operator_share: Record<string, number>;
  /** UNet at `batch_size`: forward without tape, forward+backward w.r.t. every weight (median ms). */
  forward_ms: number;
  forward_backward_ms: number;
  /** Peak resident set size of the process (MiB), and RSS after warm-up / at the end. */
  peak_rss_mib: number;
  rss_after_warmup_mib: number;
  rss_end_mib: number;
  /** Seconds to build the distillation state: teacher and student loaded, LoRA, optimisers, EMA. */
  load_s: number;
  /** numTensors at the end minus after warm-up (0 = no leak). */
  tensor_drift: number;
  num_tensors: number;
  /** With `replicas` > 1: median seconds per optimiser step of batch B split over R threads, and step_s / that. */
  data_parallel?: { replicas: number; micro_batch: number; step_s: number; speedup: number };
}

const mib = (bytes: number) => bytes / 1024 / 1024;

/** Deterministic embeddings [B, L, D] for micro-batch i. */
function syntheticBatch(i: number, batchSize: number, L: number, D: number): EmbeddingBatch {
  const embeds = new Float32Array(batchSize * L * D);
  for (let j = 0; j < embeds.length; j++) embeds[j] = Math.sin(0.37 * j + 1.3 * i);
  return { embeds, shape: [batchSize, L, D], prompts: Array.from({ length: batchSize }, (_, k) => `p${i}-${k}`), position: { epoch: 0, batchIndex: i } } as EmbeddingBatch;
}

/**
 * A pulled in-memory source that keeps the reader's contract (at most `prefetch` batches beyond
 * the demand signals) and, like the Parquet reader, emits from promise continuations.
 */
function pulledSource(first: number, n: number, prefetch: number, demand: Observable<unknown>, make: (i: number) => EmbeddingBatch): Observable<EmbeddingBatch> {
  return new Observable<EmbeddingBatch>((subscriber) => {
    let emitted = 0;
    let acked = 0;
    const pumpNow = () => {
      while (emitted < n && emitted < acked + prefetch) subscriber.next(make(first + emitted++));
      if (emitted === n && acked === n) subscriber.complete();
    };
    const sub = demand.subscribe(() => {
      acked++;
      void Promise.resolve().then(pumpNow);
    });
    void Promise.resolve().then(pumpNow);
    return () => sub.unsubscribe();
  });
}

/**
 * Runs micro-batches first … first+n−1 through the real `distill` stream of `state`, pushing the
 * seconds between consecutive optimiser steps (contexts that close a window) into `times`.
 */
async function timedStream(state: DistillState, first: number, n: number, make: (i: number) => EmbeddingBatch, times: number[] | null): Promise<void> {
  let last = performance.now();
  await lastValueFrom(
    distill(state, {
      firstMicroStep: first,
      batches: (demand) => pulledSource(first, n, 2, demand, make),
      operators: [
        tap((ctx) => {
          if (!ctx.closesWindow) return;
          const now = performance.now();
          times?.push((now - last) / 1000);
          last = now;
        }),
      ],
    }),
  );
}

/**
 * The real `distill` stream of `state` (gradAccum 1), driven one step at a time: `step()` feeds the
 * next micro-batch (first, first+1, …, numbered as the stream numbers them) and resolves with the
 * seconds until it left the stream. Lets the benchmark alternate stream and fused steps one by one,
 * so machine load hits both alike.
 */
function steppedStream(state: DistillState, first: number, make: (i: number) => EmbeddingBatch): { step: () => Promise<number>; close: () => Promise<void> } {
  const feed = new Subject<EmbeddingBatch>();
  let next = first;
  let pending: { t0: number; resolve: (seconds: number) => void; reject: (err: unknown) => void } | null = null;
  const left = tap<StepContext>(() => pending?.resolve((performance.now() - pending.t0) / 1000));
  const finished = lastValueFrom(distill(state, { firstMicroStep: first, batches: () => feed, operators: [left] }), { defaultValue: undefined });
  finished.catch((err) => pending?.reject(err));
  return {
    step: () =>
      new Promise<number>((resolve, reject) => {
        pending = { t0: performance.now(), resolve, reject };
        feed.next(make(next++));
      }),
    close: async () => {
      feed.complete();
      await finished;
    },
  };
}

/** Percentile-bootstrap 95 % interval of the median of `xs` (seeded: the same data give the same interval). */
export function bootstrapMedianCi(xs: number[], resamples = 2000): [number, number] {
  const rand = mulberry32(12345);
  const medians: number[] = [];
  for (let r = 0; r < resamples; r++) medians.push(median(xs.map(() => xs[Math.floor(rand() * xs.length)]!)));
  medians.sort((a, b) => a - b);
  return [medians[Math.floor(0.025 * resamples)]!, medians[Math.ceil(0.975 * resamples) - 1]!];
}

/** Wraps a synchronous operator with a timer (the operators do their work inside `next`). */
function timedOperator(name: string, op: OperatorFunction<StepContext, StepContext>, times: Map<string, number[]>): OperatorFunction<StepContext, StepContext> {
  let t0 = 0;
  const list = times.get(name) ?? [];
  times.set(name, list);
  return (source) => op(source.pipe(tap(() => (t0 = performance.now())))).pipe(tap(() => list.push(performance.now() - t0)));
}

/**
 * One micro-batch of the reference loop (src/swiftbrush/reference_step.ts: the same math, optimiser
 * steps, training rules and UNet passes as the stream, no RxJS), as its own window (k = 1),
 * numbered like the stream numbers micro-step `microStep` at gradAccum 1.
 */
export function fusedStep(state: DistillState, microStep: number, batch: EmbeddingBatch): void {
  const y = tf.tensor3d(batch.embeds, batch.shape);
  try {
    referenceStep(state, microStep, { step: microStep, windowIndex: 0, closesWindow: true }, y);
  } finally {
    y.dispose();
  }
}

async function withPipelineDir<T>(unet: string, scheduler: string | undefined, fn: (dir: string) => Promise<T>): Promise<T> {
  // A pipeline folder (or a UNet folder inside one) is used as it is; the bench's own errors are not
  // caught here, only the layout check.
  const isPipeline = await resolveTeacherDirs(unet).then(
    (dirs) => readFile(join(dirs.scheduler, 'scheduler_config.json')).then(() => true, () => false),
    () => false,
  );
  if (isPipeline) return fn(unet);
  const tmp = await mkdtemp(join(tmpdir(), 'sb-bench-'));
  try {
    await symlink(await realDir(unet), join(tmp, 'unet'));
    await symlink(await realDir(scheduler ?? FIXTURE_SCHEDULER), join(tmp, 'scheduler'));
    return await fn(tmp);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

async function realDir(p: string): Promise<string> {
  const { realpath } = await import('node:fs/promises');
  return realpath(p);
}

/** UNet forward (no tape) and forward+backward (every weight) at the benchmark's batch, median ms. */
export function timeUnet(state: DistillState, batchSize: number, L: number, reps: number): { forward_ms: number; forward_backward_ms: number } {
  const unet = state.student;
  const D = state.nullEmbeds.shape[2];
  const x = tf.randomNormal([batchSize, ...latentShape(state)], 0, 1, 'float32', 1) as Tensor4D;
  const ctx = tf.randomNormal([batchSize, L, D], 0, 1, 'float32', 2) as Tensor3D;
  const target = tf.randomNormal(x.shape, 0, 1, 'float32', 3);
  const ts = Array.from({ length: batchSize }, (_, i) => 999 - ((i * 997) % 1000));
  const vars = unet.parameters();
  const fwd = () => tf.tidy(() => unet.forward(x, ts, ctx).dataSync());
  const fwdBwd = () => {
    const { value, grads } = variableGrads(() => tf.sum(tf.mul(unet.forward(x, ts, ctx), target)) as tf.Scalar, vars);
    value.dataSync();
    tf.dispose([value, ...Object.values(grads)]);
  };
  fwd();
  fwdBwd();
  const f: number[] = [];
  const fb: number[] = [];
  for (let r = 0; r < reps; r++) {
    let t0 = performance.now();
    fwd();
    f.push(performance.now() - t0);
    t0 = performance.now();
    fwdBwd();
    fb.push(performance.now() - t0);
  }
  tf.dispose([x, ctx, target]);
  return { forward_ms: median(f), forward_backward_ms: median(fb) };
}

export async function runBench(o: BenchOptions): Promise<BenchResult> {
  return withPipelineDir(o.unet, o.scheduler, async (dir) => {
    const dirs = await resolveTeacherDirs(dir);
    const raw = JSON.parse(await readFile(join(dirs.unet, 'config.json'), 'utf8')) as { cross_attention_dim: number | number[] };
    const D = Array.isArray(raw.cross_attention_dim) ? raw.cross_attention_dim[0]! : raw.cross_attention_dim;
    let nullEmbeds: Float32Array;
    let L = o.tokens ?? 8;
    const fromFile = o.embeddings ? await readNullEmbedding(o.embeddings).catch(() => null) : null;
    if (fromFile && fromFile.shape[1] === D) {
      nullEmbeds = fromFile.embeds;
      L = fromFile.shape[0];
    } else {
      nullEmbeds = new Float32Array(L * D);
    }
    const config: DistillConfig = { ...OFFICIAL_DEFAULTS, batchSize: o.batchSize, gradAccum: 1, ...o.config };
    const loadStart = performance.now();
    const state = await createDistillState({ teacherDir: dir, nullEmbeds, embedShape: [L, D], config });
    const loadS = (performance.now() - loadStart) / 1000;
    let dpState: DistillState | null = null;
    try {
      const make = (i: number) => syntheticBatch(i, o.batchSize, L, D);
      const R = o.replicas ?? 1;
      if (R > 1 && o.batchSize % R !== 0) throw new Error(`--replicas ${R} must divide --batch-size ${o.batchSize} (each thread takes B/R prompts)`);
      dpState = R > 1 ? await createDistillState({ teacherDir: dir, nullEmbeds, embedShape: [L, D], config: { ...config, batchSize: o.batchSize / R, gradAccum: R, replicas: R } }) : null;
      if (dpState) dpState.replicas = await ReplicaPool.start(dpState, { count: R - 1, teacherDir: dir, backend: tf.getBackend(), maxBatch: o.batchSize / R });
      let micro = 0;
      let dpMicro = 0;
      const dpTimes: number[] = [];
      const dpRound = async (n: number, record: boolean) => {
        if (!dpState) return;
        await timedStream(dpState, dpMicro, n * R, (i) => syntheticBatch(i, o.batchSize / R, L, D), record ? dpTimes : null);
        dpMicro += n * R;
      };
      const streamTimes: number[] = [];
      const fusedTimes: number[] = [];
      const opTimes = new Map<string, number[]>();
      let pairs = 0;

      // The fused steps draw their noise from micro-steps far from the stream's (which counts on).
      let fusedMicro = 1_000_000;
      const fusedOnce = () => {
        const t0 = performance.now();
        fusedStep(state, fusedMicro, make(fusedMicro));
        fusedMicro++;
        return (performance.now() - t0) / 1000;
      };
      /**
       * n pairs of one stream step and one fused step. The order flips every pair (stream first,
       * then fused first), so whatever one step leaves to the next (garbage, caches) hits both alike.
       */
      const pairedRound = async (n: number, record: boolean) => {
        const stream = steppedStream(state, micro, make);
        micro += n + 1;
        try {
          await stream.step(); // the first step after subscribing: not timed
          for (let i = 0; i < n; i++) {
            let fusedS = 0;
            if (pairs % 2) fusedS = fusedOnce();
            const streamS = await stream.step();
            if (pairs % 2 === 0) fusedS = fusedOnce();
            if (record) streamTimes.push(streamS), fusedTimes.push(fusedS), pairs++;
          }
        } finally {
          await stream.close();
        }
      };
      const timedRound = async (n: number) => {
        const first = micro;
        const ops: [string, OperatorFunction<StepContext, StepContext>][] = [
          ['studentForward', studentForward(state)],
          ['noiseAtT', noiseAtT(state)],
          ['teacherCFG', teacherCFG(state)],
          ['vsdUpdate', vsdUpdate(state)],
          ['noiseAtTPrime', noiseAtTPrime(state)],
          ['loraUpdate', loraUpdate(state)],
          ['emaUpdate', emaUpdate(state)],
        ];
        const demand = new Subject<void>();
        const chain = ops.reduce<OperatorFunction<StepContext, StepContext>>((acc, [name, op]) => pipe(acc, timedOperator(name, op, opTimes)), (s) => s);
        await lastValueFrom(
          pulledSource(first, n, 2, demand, make).pipe(
            toStepContext(1, first),
            chain,
            tap(() => demand.next()),
          ),
        );
        micro += n;
      };

      // Warm-up: kernels, weights on the backend, allocator pools.
      await pairedRound(o.warmup, false);
      await timedRound(1);
      await dpRound(o.warmup, false);
      opTimes.clear();
      const tensorsAfterWarmup = tf.memory().numTensors;
      const rssAfterWarmup = process.memoryUsage().rss;

      let done = 0;
      while (done < o.steps) {
        // The stream's first step of a round includes the subscription: one extra untimed step.
        const n = Math.min(o.round, o.steps - done);
        await pairedRound(n, true);
        await timedRound(n);
        await dpRound(n + 1, true);
        dpTimes.splice(dpTimes.length - n - 1, 1);
        done += n;
        o.onProgress?.(done, o.steps);
      }
      const tensorDrift = tf.memory().numTensors - tensorsAfterWarmup;
      const rssEnd = process.memoryUsage().rss;
      const unet = timeUnet(state, o.batchSize, L, o.unetReps);

      const operatorMs = Object.fromEntries([...opTimes].map(([k, v]) => [k, median(v)]));
      const total = Object.values(operatorMs).reduce((a, b) => a + b, 0);
      const stepS = median(streamTimes);
      const fusedS = median(fusedTimes);
      const pairRatios = streamTimes.map((t, i) => t / fusedTimes[i]! - 1);
      return {
        backend: tf.getBackend(),
        unet: o.unet,
        batch_size: o.batchSize,
        steps: o.steps,
        params: state.student.parameters().reduce((a, v) => a + v.size, 0),
        step_s: stepS,
        fused_step_s: fusedS,
        stream_overhead: median(pairRatios),
        stream_overhead_ci95: bootstrapMedianCi(pairRatios),
        operator_ms: operatorMs,
        operator_share: Object.fromEntries(Object.entries(operatorMs).map(([k, v]) => [k, v / total])),
        ...unet,
        peak_rss_mib: mib(process.resourceUsage().maxRSS * 1024),
        load_s: loadS,
        rss_after_warmup_mib: mib(rssAfterWarmup),
        rss_end_mib: mib(rssEnd),
        tensor_drift: tensorDrift,
        num_tensors: tf.memory().numTensors,
        ...(dpState ? { data_parallel: { replicas: R, micro_batch: o.batchSize / R, step_s: median(dpTimes), speedup: stepS / median(dpTimes) } } : {}),
      };
    } finally {
      await dpState?.replicas?.dispose();
      if (dpState) disposeDistillState(dpState);
      disposeDistillState(state);
    }
  });
}
