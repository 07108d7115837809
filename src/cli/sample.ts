/**
 * `swiftbrush sample --unet DIR --embeddings FILE.parquet [--steps 1|N] [--guidance-scale W]
 * [--seed S] [--limit P] [--n N] [--batch-size B] --out OUT`
 *
 * DIR: a pipeline folder (unet/ + scheduler/) or a UNet folder (scheduler from ../scheduler).
 * Samples N images (default one per prompt) round-robin over the first P non-empty prompts of the
 * file, and writes OUT/images.safetensors (`images` [N,C,H,W] float32 NCHW in [-1,1],
 * `prompt_index` [N] int32 = line of OUT/prompts.txt, 0-based), OUT/prompts.txt, OUT/grid.png
 * (one row per prompt). Steps 1 = SwiftBrush one-step (guidance default 1); N > 1 = DDIM with CFG
 * (guidance default DEFAULT_DDIM_GUIDANCE). See src/eval/sampling.ts.
 */
import type { Command } from 'commander';
import { existsSync, statSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { initBackend } from '../backend.ts';
import { log } from '../log.ts';
import { writeSafetensors } from '../models/safetensors.ts';
import { writeImageGrid } from '../util/png.ts';
import { generate, loadPipeline, nhwcToNchw, promptRows, readNullPrompt, readPromptEmbeddings, unetWidth } from '../eval/sampling.ts';
import { backendOption, float, int } from './options.ts';

/** CFG scale of multi-step (DDIM) sampling when none is given; one-step sampling defaults to 1. */
export const DEFAULT_DDIM_GUIDANCE = 3;

export interface SampleOptions {
  unet: string;
  embeddings: string;
  out: string;
  steps?: number;
  guidanceScale?: number;
  seed?: number;
  limit?: number;
  n?: number;
  batchSize?: number;
  /** Samples per prompt shown in grid.png (default 8). */
  gridCols?: number;
}

export interface SampleResult {
  n: number;
  prompts: number;
  steps: number;
  guidanceScale: number;
  seconds: number;
  samplesPerSecond: number;
  files: { images: string; prompts: string; grid: string };
}

export async function sampleToDir(o: SampleOptions): Promise<SampleResult> {
  const steps = o.steps ?? 1;
  const guidanceScale = o.guidanceScale ?? (steps === 1 ? 1 : DEFAULT_DDIM_GUIDANCE);
  if (existsSync(o.out) && !statSync(o.out).isDirectory()) throw new Error(`--out ${o.out} is a file, not a folder: name a folder for images.safetensors, prompts.txt and grid.png`);
  // Shapes before any work: the embeddings' width against the UNet's cross_attention_dim.
  const model = await unetWidth(o.unet);
  const { prompts, embeds, shape } = await readPromptEmbeddings(o.embeddings, o.limit, model);
  const nullEmbed = guidanceScale !== 1 ? await readNullPrompt(o.embeddings, model.width) : undefined;
  const n = o.n ?? prompts.length;
  const promptIndex = Int32Array.from({ length: n }, (_, i) => i % prompts.length);
  const { unet, schedule, schedulerSource } = await loadPipeline(o.unet);
  try {
    log.info({ unet: o.unet, scheduler: schedulerSource, n, prompts: prompts.length, steps, guidanceScale, seed: o.seed ?? 0 }, 'sampling');
    let last = 0;
    const g = generate({
      unet, schedule, embeds, embedShape: shape, promptIndex, nullEmbed, steps, guidanceScale, seed: o.seed ?? 0, batchSize: o.batchSize, warmup: true,
      onBatch: (done, total) => {
        if (done === total || performance.now() - last > 2000) {
          last = performance.now();
          log.info({ done, total }, 'sample');
        }
      },
    });
    await mkdir(o.out, { recursive: true });
    const [N, H, W, C] = g.shape;
    const files = { images: join(o.out, 'images.safetensors'), prompts: join(o.out, 'prompts.txt'), grid: join(o.out, 'grid.png') };
    await writeSafetensors(files.images, {
      images: { shape: [N, C, H, W], data: nhwcToNchw(g.images, g.shape) },
      prompt_index: { shape: [N], data: promptIndex },
    }, { format: 'pt', steps: String(steps), guidance_scale: String(guidanceScale), seed: String(o.seed ?? 0), unet: o.unet, embeddings: o.embeddings, pixel_range: '[-1, 1]' });
    await writeFile(files.prompts, prompts.join('\n') + '\n');
    const grid = promptRows(g.images, g.shape, promptIndex, o.gridCols ?? 8);
    const title = steps === 1 ? '1 step' : `DDIM ${steps} steps, guidance ${guidanceScale}`;
    await writeImageGrid(files.grid, grid.images, grid.shape, { rows: grid.rows, cols: grid.cols, rowLabels: grid.rowPrompts.map((p) => prompts[p]!), columnLabels: [{ text: title, from: 0, to: grid.cols }] });
    return { n, prompts: prompts.length, steps, guidanceScale, seconds: g.seconds, samplesPerSecond: n / g.seconds, files };
  } finally {
    unet.dispose();
  }
}

export function register(program: Command): void {
  program
    .command('sample')
    .description('generate images from a diffusers UNet (one step: SwiftBrush x0 at t=T-1; N steps: DDIM with classifier-free guidance)')
    .requiredOption('--unet <dir>', 'pipeline folder (unet/ + scheduler/) or UNet folder (scheduler in ../scheduler) (required)')
    .requiredOption('--embeddings <file>', 'embedding Parquet (prompts; the "" row is the null prompt for guidance) (required)')
    .requiredOption('--out <dir>', 'output folder: images.safetensors, prompts.txt, grid.png (required)')
    .option('--steps <n>', '1 = one-step generator; N > 1 = DDIM steps', int(1), 1)
    .option('--guidance-scale <w>', `classifier-free guidance (default: 1 for --steps 1, ${DEFAULT_DDIM_GUIDANCE} for DDIM)`, float)
    .option('--seed <n>', 'noise seed (sample i uses (seed, i))', int(0), 0)
    .option('--limit <n>', 'use the first N prompts of the file', int(1))
    .option('--n <n>', 'number of samples, round-robin over the prompts (default: one per prompt)', int(1))
    .option('--batch-size <n>', 'samples per UNet call', int(1), 32)
    .addOption(backendOption())
    .action(async (opts: SampleOptions & { backend?: string }) => {
      const backend = await initBackend(opts.backend);
      const r = await sampleToDir(opts);
      log.info({ backend: backend.backend, seconds: Number(r.seconds.toFixed(2)), samples_per_s: Number(r.samplesPerSecond.toFixed(2)) }, 'sampled');
      process.stdout.write(`${r.files.images}: ${r.n} images (${r.prompts} prompts, ${r.steps} step${r.steps > 1 ? 's' : ''}, guidance ${r.guidanceScale}, ${r.samplesPerSecond.toFixed(2)} samples/s); grid ${r.files.grid}\n`);
    });
}
