/**
 * `swiftbrush vae-forward --vae DIR --inputs IN.safetensors --out OUT.safetensors`: loads a
 * diffusers AutoencoderKL folder (`config.json` + `diffusion_pytorch_model.safetensors`), runs it
 * on PyTorch-layout inputs and writes the outputs, so a user can check that their VAE loads and
 * computes what diffusers computes.
 *
 * Inputs (any safetensors float dtype; read as float32), at least one of:
 *   image    [B, in_channels, H, W]       NCHW in [−1, 1] → `mean`, `logvar` (the posterior, before scaling)
 *   noise    [B, latent_channels, h, w]   with `image`: also `sample` = mean + exp(logvar / 2) · noise
 *   latents  [B, latent_channels, h, w]   raw latents (before scaling, as `vae.decode` takes them) → `decoded`
 * Outputs: NCHW float32.
 */
import type { Command } from 'commander';
import { tf } from '../tf.ts';
import type { Tensor4D } from '../tf.ts';
import { initBackend } from '../backend.ts';
import { log } from '../log.ts';
import { AutoencoderKL } from '../models/autoencoder_kl.ts';
import { readSafetensors, writeSafetensors, type StoredTensor } from '../models/safetensors.ts';
import { backendOption, int } from './options.ts';
import { toFloat32 } from './unet_forward.ts';

type Nchw = { shape: [number, number, number, number]; data: Float32Array };

function nchwInput(tensors: Map<string, StoredTensor>, key: string, channels: number, what: string, source: string): Nchw | undefined {
  const t = tensors.get(key);
  if (!t) return undefined;
  if (t.shape.length !== 4) throw new Error(`${source}: '${key}' must be NCHW [B,C,H,W], got shape [${t.shape}]`);
  if (t.shape[1] !== channels) throw new Error(`${source}: '${key}' has ${t.shape[1]} channels (shape [${t.shape}], NCHW) but the VAE's ${what} is ${channels}`);
  if (t.shape.some((d) => d < 1)) throw new Error(`${source}: '${key}' has an empty dimension: [${t.shape}]`);
  return { shape: t.shape as Nchw['shape'], data: toFloat32(t) };
}

/** Runs `fn` on NHWC chunks of `batchSize` samples of each NCHW input and gathers its NCHW outputs; no tensor outlives the call. */
function chunked(inputs: Nchw[], batchSize: number, fn: (xs: Tensor4D[]) => Tensor4D[]): Nchw[] {
  const B = inputs[0]!.shape[0];
  const step = Math.max(1, Math.min(B, batchSize));
  let outs: { shape: Nchw['shape']; parts: Float32Array[] }[] | undefined;
  for (let i = 0; i < B; i += step) {
    const j = Math.min(B, i + step);
    const ys = tf.tidy(() => {
      const xs = inputs.map(({ shape: [, C, H, W], data }) => tf.transpose(tf.tensor4d(data.subarray(i * C * H * W, j * C * H * W), [j - i, C, H, W]), [0, 2, 3, 1]) as Tensor4D);
      return fn(xs).map((y) => tf.transpose(y, [0, 3, 1, 2]) as Tensor4D);
    });
    outs ??= ys.map((y) => ({ shape: [B, y.shape[1], y.shape[2], y.shape[3]], parts: [] }));
    ys.forEach((y, k) => outs![k]!.parts.push(y.dataSync() as Float32Array));
    tf.dispose(ys);
  }
  return outs!.map(({ shape, parts }) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    let offset = 0;
    for (const p of parts) {
      data.set(p, offset);
      offset += p.length;
    }
    return { shape, data };
  });
}

/** Encodes `image` (and draws `sample` with `noise`) and decodes `latents`, whichever are given. */
export function vaeForwardNCHW(vae: AutoencoderKL, tensors: Map<string, StoredTensor>, source = 'inputs', batchSize = Infinity): Record<string, Nchw> {
  const c = vae.config;
  const image = nchwInput(tensors, 'image', c.in_channels, 'in_channels', source);
  const noise = nchwInput(tensors, 'noise', c.latent_channels, 'latent_channels', source);
  const latents = nchwInput(tensors, 'latents', c.latent_channels, 'latent_channels', source);
  if (!image && !latents) throw new Error(`${source}: needs 'image' [B,${c.in_channels},H,W] (to encode) and/or 'latents' [B,${c.latent_channels},h,w] (to decode); has: ${[...tensors.keys()].join(', ') || 'none'}`);
  if (noise && !image) throw new Error(`${source}: 'noise' draws a posterior sample of 'image', which is missing`);
  const out: Record<string, Nchw> = {};
  if (image) {
    const [B, , H, W] = image.shape;
    if (noise) {
      const exact = [B, c.latent_channels, vae.latentSize(H), vae.latentSize(W)];
      if (noise.shape.join() !== exact.join()) throw new Error(`${source}: 'noise' has shape [${noise.shape}], but the posterior of 'image' [${image.shape}] has [${exact}]`);
    }
    const [mean, logvar, sample] = chunked(noise ? [image, noise] : [image], batchSize, ([x, n]) => {
      const posterior = vae.encode(x!);
      return n ? [posterior.mean, posterior.logvar, posterior.sample(n)] : [posterior.mean, posterior.logvar];
    });
    Object.assign(out, { mean, logvar }, sample ? { sample } : {});
  }
  if (latents) [out.decoded] = chunked([latents], batchSize, ([z]) => [vae.decode(z!)]);
  return out;
}

export interface VaeForwardOptions {
  vae: string;
  inputs: string;
  out: string;
  batchSize?: number;
}

/** The command as a function: load, check, run, write. Returns the written tensors' shapes and the seconds spent computing. */
export async function vaeForwardFile(opts: VaeForwardOptions): Promise<{ shapes: Record<string, number[]>; seconds: number }> {
  const vae = await AutoencoderKL.fromPretrained(opts.vae);
  try {
    const inputs = (await readSafetensors(opts.inputs)).tensors;
    const t0 = performance.now();
    const out = vaeForwardNCHW(vae, inputs, opts.inputs, opts.batchSize);
    const seconds = (performance.now() - t0) / 1000;
    await writeSafetensors(opts.out, out, { format: 'pt' });
    return { shapes: Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.shape])), seconds };
  } finally {
    vae.dispose();
  }
}

export function register(program: Command): void {
  program
    .command('vae-forward')
    .description('run a diffusers AutoencoderKL folder: `image` → posterior `mean`/`logvar` (and `sample` with `noise`), `latents` → `decoded` (NCHW float32 safetensors)')
    .requiredOption('--vae <dir>', 'folder with config.json and diffusion_pytorch_model.safetensors')
    .requiredOption('--inputs <file>', 'safetensors with image [B,C,H,W] and/or latents [B,4,h,w] (raw, before scaling); optional noise [B,4,h,w]')
    .requiredOption('--out <file>', 'output safetensors: mean, logvar (, sample) for image; decoded for latents')
    .option('--batch-size <n>', 'samples per pass (default: the whole batch)', int(1))
    .addOption(backendOption())
    .action(async (opts: VaeForwardOptions & { backend?: string }) => {
      const backend = await initBackend(opts.backend);
      const r = await vaeForwardFile(opts);
      log.info({ backend: backend.backend, seconds: Number(r.seconds.toFixed(3)) }, 'vae-forward');
      process.stdout.write(`${opts.out}: ${Object.entries(r.shapes).map(([k, s]) => `${k} [${s.join(', ')}]`).join(', ')} float32\n`);
    });
}
