/**
 * Sampling from a diffusers-layout UNet: the SwiftBrush one-step formula and DDIM with
 * classifier-free guidance, batched, seeded per sample, with no tensor left behind.
 *
 * Decisions:
 * - `steps = 1` is SwiftBrush's one-step generator, NOT a 1-step DDIM schedule (whose only timestep
 *   would be `steps_offset`, e.g. t = 1): x0 = predictOriginal(ε(z, T-1, y), z, T-1), i.e.
 *   (z − √(1−ᾱ_{T−1}) ε) / √ᾱ_{T−1} for an ε model (the v form for v-prediction), ᾱ from the schedule.
 *   Guidance defaults to 1 there (one conditional pass: a distilled student has guidance baked in);
 *   with w ≠ 1 the single pass is guided like a DDIM step (unconditional + conditional).
 * - `steps = N > 1` is diffusers' DDIM (eta 0) over `ddimTimesteps(schedule, N)` with CFG
 *   ε = ε_u + w (ε_c − ε_u); both conditions run as ONE batch of 2B (null rows first, as diffusers).
 * - The noise of sample i is N(0, I) seeded by (seed, i) alone, so a sample does not depend on the
 *   batch size, on --limit, or on the model: teacher and student sampled with the same seed start
 *   from the same z (the comparison grid shows them side by side).
 * - Outputs are clamped to the pixel range [-1, 1] (diffusers' postprocess does the same).
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { tf } from '../tf.ts';
import type { Tensor3D, Tensor4D } from '../tf.ts';
import { UNet2DConditionModel, CONFIG_NAME } from '../models/unet_2d_condition.ts';
import { NoiseSchedule } from '../models/schedule.ts';
import { ddimSample } from '../models/ddim.ts';
import { mixSeed } from '../util/rng.ts';
import { EmbeddingFile } from '../streams/parquet.ts';
import { checkEmbeddingWidth, expandFiles, modelWidth, readNullEmbedding } from '../streams/reader.ts';
import { readFile } from 'node:fs/promises';

export const PIXEL_RANGE: [number, number] = [-1, 1];
const SCHEDULER_CONFIG = 'scheduler_config.json';

export interface Pipeline {
  unet: UNet2DConditionModel;
  schedule: NoiseSchedule;
  unetDir: string;
  /** Where the scheduler config came from (or 'fallback'). */
  schedulerSource: string;
}

/**
 * Loads a diffusers pipeline folder (`DIR/unet/`, `DIR/scheduler/`) or a UNet folder (`DIR/config.json`;
 * the scheduler is then `DIR/../scheduler/`, else `DIR/scheduler_config.json`, else `fallbackSchedule`).
 */
export async function loadPipeline(dir: string, opts: { fallbackSchedule?: NoiseSchedule } = {}): Promise<Pipeline> {
  let unetDir: string;
  let candidates: string[];
  if (existsSync(join(dir, 'unet', CONFIG_NAME))) {
    unetDir = join(dir, 'unet');
    candidates = [join(dir, 'scheduler', SCHEDULER_CONFIG)];
  } else if (existsSync(join(dir, CONFIG_NAME))) {
    unetDir = dir;
    candidates = [join(dirname(resolve(dir)), 'scheduler', SCHEDULER_CONFIG), join(dir, SCHEDULER_CONFIG)];
  } else {
    throw new Error(`${dir}: neither a pipeline folder (unet/${CONFIG_NAME}) nor a UNet folder (${CONFIG_NAME})`);
  }
  const found = candidates.find((p) => existsSync(p));
  let schedule: NoiseSchedule;
  let schedulerSource: string;
  if (found) {
    schedule = await NoiseSchedule.load(found);
    schedulerSource = found;
  } else if (opts.fallbackSchedule) {
    schedule = opts.fallbackSchedule;
    schedulerSource = 'fallback';
  } else {
    throw new Error(`${dir}: no scheduler config; looked for ${candidates.join(' and ')} (pass a pipeline folder with unet/ and scheduler/)`);
  }
  const unet = await UNet2DConditionModel.fromPretrained(unetDir, { trainable: false });
  return { unet, schedule, unetDir, schedulerSource };
}

/** The model's image size [H, W, C] from its config (`sample_size`: a number or [H, W]). */
export function sampleShape(unet: UNet2DConditionModel): [number, number, number] {
  const s = unet.config.sample_size as number | number[] | undefined;
  const [h, w] = Array.isArray(s) ? s : [s, s];
  if (!(Number.isInteger(h) && Number.isInteger(w) && h! > 0 && w! > 0)) throw new Error(`UNet config has no usable sample_size (${JSON.stringify(s)}): cannot tell the image size`);
  return [h!, w!, unet.config.in_channels];
}

export interface PromptEmbeddings {
  prompts: string[];
  /** [P, L, D] row-major. */
  embeds: Float32Array;
  shape: [number, number];
}

/** The width D a UNet takes (its cross_attention_dim), read from the config of a pipeline or UNet folder. */
export async function unetWidth(dir: string): Promise<{ width: number; model: string }> {
  const path = existsSync(join(dir, 'unet', CONFIG_NAME)) ? join(dir, 'unet', CONFIG_NAME) : join(dir, CONFIG_NAME);
  if (!existsSync(path)) throw new Error(`${dir}: neither a pipeline folder (unet/${CONFIG_NAME}) nor a UNet folder (${CONFIG_NAME})`);
  const config = JSON.parse(await readFile(path, 'utf8')) as { cross_attention_dim?: number | number[] };
  if (config.cross_attention_dim === undefined) throw new Error(`${path}: no cross_attention_dim`);
  return { width: modelWidth(config.cross_attention_dim, path), model: path };
}

/**
 * The non-null prompts of an embedding Parquet file (or list / glob), in file order, at most
 * `limit`. With `model` (the UNet's width), every file is checked against it first, and files
 * without shape metadata take D from it.
 */
export async function readPromptEmbeddings(spec: string, limit = Infinity, model?: { width: number; model: string }): Promise<PromptEmbeddings> {
  const prompts: string[] = [];
  const chunks: Float32Array[] = [];
  let shape: [number, number] | undefined;
  const files = expandFiles(spec);
  if (model) await checkEmbeddingWidth(files, model.width, model.model);
  for (const path of files) {
    const f = await EmbeddingFile.open(path, { width: model?.width });
    try {
      if (shape && f.info.shape.join() !== shape.join()) throw new Error(`${path}: embedding shape [${f.info.shape}] differs from [${shape}] of the files before it`);
      shape = f.info.shape;
      const per = shape[0] * shape[1];
      for (let g = 0; g < f.numRowGroups && prompts.length < limit; g++) {
        const group = await f.readRowGroup(g);
        for (let r = 0; r < group.rows && prompts.length < limit; r++) {
          const p = group.prompts[r];
          if (p === '' || p === null) continue;
          prompts.push(p!);
          chunks.push(group.embeds.slice(r * per, (r + 1) * per));
        }
      }
    } finally {
      f.close();
    }
    if (prompts.length >= limit) break;
  }
  if (!shape || prompts.length === 0) throw new Error(`${spec}: no non-empty prompts`);
  const embeds = new Float32Array(prompts.length * shape[0] * shape[1]);
  chunks.forEach((c, i) => embeds.set(c, i * c.length));
  return { prompts, embeds, shape };
}

/** The null-prompt ("") embedding of the file(s), [L, D]; `width`: the UNet's, for files without shape metadata. */
export async function readNullPrompt(spec: string, width?: number): Promise<Float32Array> {
  return (await readNullEmbedding(expandFiles(spec), { width })).embeds;
}

/** N(0, I) of sample `index` under `seed`: the same values whatever the batch. */
export function sampleNoise(seed: number, index: number, shape: [number, number, number]): Float32Array {
  return tf.tidy(() => tf.randomNormal(shape, 0, 1, 'float32', mixSeed(seed, index)).dataSync() as Float32Array);
}

export interface GenerateOptions {
  unet: UNet2DConditionModel;
  schedule: NoiseSchedule;
  /** [P, L, D] condition embeddings; `promptIndex` picks one per sample. */
  embeds: Float32Array;
  embedShape: [number, number];
  promptIndex: Int32Array;
  /** [L, D]; required when guidanceScale ≠ 1. */
  nullEmbed?: Float32Array;
  /** 1: SwiftBrush one-step; N > 1: DDIM N steps. */
  steps: number;
  guidanceScale: number;
  seed: number;
  /** Samples per UNet call (CFG doubles it); default 32. */
  batchSize?: number;
  /** Sample indices used for the noise are `indexOffset + i` (default 0). */
  indexOffset?: number;
  /** Run one untimed batch-1 UNet pass first (for fair samples/s). */
  warmup?: boolean;
  onBatch?: (done: number, total: number) => void;
}

export interface Generated {
  /** NHWC [N, H, W, C], clamped to [-1, 1]. */
  images: Float32Array;
  shape: [number, number, number, number];
  /** Wall seconds of the sampling itself (noise, UNet passes, read-back). */
  seconds: number;
}

/** Generates one image per entry of `promptIndex` (see the module comment for the decisions). */
export function generate(o: GenerateOptions): Generated {
  const [H, W, C] = sampleShape(o.unet);
  const [L, D] = o.embedShape;
  const per = L * D;
  const N = o.promptIndex.length;
  const P = o.embeds.length / per;
  if (!Number.isInteger(P)) throw new Error(`generate: embeddings length ${o.embeds.length} is not a multiple of ${L}x${D}`);
  if (!(Number.isInteger(o.steps) && o.steps >= 1)) throw new Error(`generate: steps must be a positive integer, got ${o.steps}`);
  if (!Number.isFinite(o.guidanceScale)) throw new Error(`generate: guidance scale must be finite, got ${o.guidanceScale}`);
  const guided = o.guidanceScale !== 1;
  if (guided && (!o.nullEmbed || o.nullEmbed.length !== per)) throw new Error(`generate: guidance scale ${o.guidanceScale} needs the null-prompt embedding [${L}, ${D}]`);
  const bs = Math.max(1, o.batchSize ?? 32);
  const T = o.schedule.numTrainTimesteps;
  const pix = H * W * C;
  const images = new Float32Array(N * pix);
  if (o.warmup) {
    // one untimed batch-1 pass: first-call kernel set-up would otherwise count against samples/s
    tf.tidy(() => o.unet.forward(tf.zeros([1, H, W, C]) as Tensor4D, [T - 1], tf.tensor3d(o.embeds.subarray(0, per), [1, L, D]) as Tensor3D).dataSync());
  }
  const t0 = performance.now();
  for (let s = 0; s < N; s += bs) {
    const e = Math.min(N, s + bs);
    const B = e - s;
    const noise = new Float32Array(B * pix);
    const ctx = new Float32Array(B * per);
    for (let i = 0; i < B; i++) {
      noise.set(sampleNoise(o.seed, (o.indexOffset ?? 0) + s + i, [H, W, C]), i * pix);
      const p = o.promptIndex[s + i]!;
      if (!(p >= 0 && p < P)) throw new Error(`generate: prompt index ${p} of sample ${s + i} is outside the ${P} prompts`);
      ctx.set(o.embeds.subarray(p * per, (p + 1) * per), i * per);
    }
    const out = tf.tidy(() => {
      const z = tf.tensor4d(noise, [B, H, W, C]);
      const cond = tf.tensor3d(ctx, [B, L, D]) as Tensor3D;
      const both = guided ? (tf.concat([tf.tile(tf.tensor3d(o.nullEmbed!, [1, L, D]), [B, 1, 1]), cond], 0) as Tensor3D) : cond;
      const modelOut = (x: Tensor4D, t: number): Tensor4D => {
        if (!guided) return o.unet.forward(x, new Array(B).fill(t), cond);
        const y = o.unet.forward(tf.concat([x, x], 0), new Array(2 * B).fill(t), both);
        const [u, c] = tf.split(y, 2, 0) as [Tensor4D, Tensor4D];
        return tf.add(u, tf.mul(tf.sub(c, u), o.guidanceScale));
      };
      let x0: Tensor4D;
      if (o.steps === 1) {
        x0 = o.schedule.predictOriginal(modelOut(z, T - 1), z, [T - 1]) as Tensor4D;
      } else {
        x0 = ddimSample({ schedule: o.schedule, steps: o.steps, guidanceScale: 1, noise: z, predict: (x, t) => modelOut(x, t) });
      }
      return tf.clipByValue(x0, PIXEL_RANGE[0], PIXEL_RANGE[1]);
    });
    images.set(out.dataSync() as Float32Array, s * pix);
    out.dispose();
    o.onBatch?.(e, N);
  }
  return { images, shape: [N, H, W, C], seconds: (performance.now() - t0) / 1000 };
}

/** NHWC → NCHW on the host (a copy; with C = 1 the same values). */
export function nhwcToNchw(data: Float32Array, shape: readonly [number, number, number, number]): Float32Array {
  const [N, H, W, C] = shape;
  if (C === 1) return data.slice();
  const out = new Float32Array(data.length);
  for (let n = 0; n < N; n++)
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++)
        for (let c = 0; c < C; c++) out[((n * C + c) * H + y) * W + x] = data[((n * H + y) * W + x) * C + c]!;
  return out;
}

/**
 * Lays samples out as a grid with one ROW PER PROMPT (prompts in order of first appearance, at most
 * `maxRows`) and up to `cols` samples of that prompt; empty cells are background (−1).
 * Returns NHWC images ready for writeImageGrid with { rows, cols } and the prompt indices of the rows.
 */
export function promptRows(images: Float32Array, shape: readonly [number, number, number, number], promptIndex: Int32Array, cols: number, maxRows = 100): { images: Float32Array; shape: [number, number, number, number]; rows: number; cols: number; rowPrompts: number[] } {
  const [N, H, W, C] = shape;
  const pix = H * W * C;
  const byPrompt = new Map<number, number[]>();
  for (let i = 0; i < N; i++) {
    const p = promptIndex[i]!;
    if (!byPrompt.has(p)) {
      if (byPrompt.size >= maxRows) continue;
      byPrompt.set(p, []);
    }
    const list = byPrompt.get(p)!;
    if (list.length < cols) list.push(i);
  }
  const rowPrompts = [...byPrompt.keys()];
  const out = new Float32Array(rowPrompts.length * cols * pix).fill(PIXEL_RANGE[0]);
  rowPrompts.forEach((p, r) => byPrompt.get(p)!.forEach((i, c) => out.set(images.subarray(i * pix, (i + 1) * pix), (r * cols + c) * pix)));
  return { images: out, shape: [rowPrompts.length * cols, H, W, C], rows: rowPrompts.length, cols, rowPrompts };
}
