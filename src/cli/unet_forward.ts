/**
 * `swiftbrush unet-forward --unet DIR --inputs IN.safetensors --out OUT.safetensors`: loads a
 * diffusers UNet2DConditionModel folder (`config.json` + `diffusion_pytorch_model.safetensors`),
 * runs ONE forward pass on PyTorch-layout inputs and writes the output, so a user can check that
 * their checkpoint loads and computes what diffusers computes.
 *
 * Inputs (any safetensors float dtype; F16/BF16/F64 are read as float32):
 *   sample                [B, C, H, W]  NCHW, as PyTorch
 *   timestep              [B], or a scalar / [1] broadcast to B (as diffusers does); any numeric dtype
 *   encoder_hidden_states [B, L, D]
 * Output: `out` [B, C_out, H, W] NCHW float32.
 */
import type { Command } from 'commander';
import { tf } from '../tf.ts';
import type { Tensor3D, Tensor4D } from '../tf.ts';
import { initBackend } from '../backend.ts';
import { log } from '../log.ts';
import { UNet2DConditionModel } from '../models/unet_2d_condition.ts';
import { readSafetensors, writeSafetensors, type StoredTensor } from '../models/safetensors.ts';
import { backendOption, int } from './options.ts';
import { countParams, forwardMemoryPlan, inspectUNetWeights, refuseIfTooBigForWasm } from '../models/memory.ts';

export interface UnetInputs {
  /** NCHW [B, C, H, W] float32. */
  sample: { shape: [number, number, number, number]; data: Float32Array };
  /** One timestep per sample (length B). */
  timesteps: number[];
  /** [B, L, D] float32. */
  encoderHiddenStates: { shape: [number, number, number]; data: Float32Array };
}

function toFloat32(t: StoredTensor): Float32Array {
  if (t.data instanceof Float32Array) return t.data;
  if (t.data instanceof BigInt64Array) return Float32Array.from(t.data, (v) => Number(v));
  return Float32Array.from(t.data as ArrayLike<number>);
}

/**
 * Validates the three input tensors against each other and the model config; errors name the key
 * and the shapes involved.
 */
export function parseUnetInputs(tensors: Map<string, StoredTensor>, config: UNet2DConditionModel['config'], source = 'inputs'): UnetInputs {
  const missing = ['sample', 'timestep', 'encoder_hidden_states'].filter((k) => !tensors.has(k));
  if (missing.length) throw new Error(`${source}: missing tensor(s) ${missing.map((k) => `'${k}'`).join(', ')} (has: ${[...tensors.keys()].join(', ') || 'none'}); expected sample [B,C,H,W], timestep [B], encoder_hidden_states [B,L,D]`);
  const s = tensors.get('sample')!;
  const t = tensors.get('timestep')!;
  const e = tensors.get('encoder_hidden_states')!;
  if (s.shape.length !== 4) throw new Error(`${source}: 'sample' must be NCHW [B,C,H,W], got shape [${s.shape}]`);
  const [B, C, H, W] = s.shape as [number, number, number, number];
  if (C !== config.in_channels) throw new Error(`${source}: 'sample' has ${C} channels (shape [${s.shape}], NCHW) but the UNet's in_channels is ${config.in_channels}`);
  if (B < 1 || H < 1 || W < 1) throw new Error(`${source}: 'sample' has an empty dimension: [${s.shape}]`);
  if (e.shape.length !== 3) throw new Error(`${source}: 'encoder_hidden_states' must be [B,L,D], got shape [${e.shape}]`);
  if (e.shape[0] !== B) throw new Error(`${source}: 'encoder_hidden_states' batch ${e.shape[0]} (shape [${e.shape}]) differs from 'sample' batch ${B}`);
  const dims = Array.isArray(config.cross_attention_dim) ? config.cross_attention_dim : [config.cross_attention_dim];
  if (dims.some((d) => d !== e.shape[2])) throw new Error(`${source}: 'encoder_hidden_states' has D = ${e.shape[2]} (shape [${e.shape}]) but the UNet's cross_attention_dim is ${JSON.stringify(config.cross_attention_dim)}`);
  if (t.shape.length > 1) throw new Error(`${source}: 'timestep' must be a scalar or [B], got shape [${t.shape}]`);
  const tv = Array.from(toFloat32(t));
  if (tv.length !== 1 && tv.length !== B) throw new Error(`${source}: 'timestep' has ${tv.length} values (shape [${t.shape}]) for a batch of ${B}; give one per sample or one for all`);
  if (tv.some((x) => !Number.isFinite(x))) throw new Error(`${source}: 'timestep' holds a non-finite value: [${tv}]`);
  const timesteps = tv.length === B ? tv : Array.from({ length: B }, () => tv[0]!);
  return {
    sample: { shape: [B, C, H, W], data: toFloat32(s) },
    timesteps,
    encoderHiddenStates: { shape: e.shape as [number, number, number], data: toFloat32(e) },
  };
}

/**
 * The UNet on NCHW inputs → NCHW float32 output, in chunks of `batchSize` samples (default: all at
 * once). No tensor outlives the call.
 */
export function unetForwardNCHW(unet: UNet2DConditionModel, inputs: UnetInputs, batchSize = Infinity): { shape: [number, number, number, number]; data: Float32Array } {
  const [B, C, H, W] = inputs.sample.shape;
  const [, L, D] = inputs.encoderHiddenStates.shape;
  const Cout = unet.config.out_channels;
  const out = new Float32Array(B * Cout * H * W);
  const step = Math.max(1, Math.min(B, batchSize));
  for (let i = 0; i < B; i += step) {
    const j = Math.min(B, i + step);
    const chunk = tf.tidy(() => {
      const x = tf.transpose(tf.tensor4d(inputs.sample.data.subarray(i * C * H * W, j * C * H * W), [j - i, C, H, W]), [0, 2, 3, 1]) as Tensor4D;
      const ctx = tf.tensor3d(inputs.encoderHiddenStates.data.subarray(i * L * D, j * L * D), [j - i, L, D]) as Tensor3D;
      const y = unet.forward(x, inputs.timesteps.slice(i, j), ctx);
      return tf.transpose(y, [0, 3, 1, 2]);
    });
    out.set(chunk.dataSync() as Float32Array, i * Cout * H * W);
    chunk.dispose();
  }
  return { shape: [B, Cout, H, W], data: out };
}

export interface UnetForwardOptions {
  unet: string;
  inputs: string;
  out: string;
  batchSize?: number;
  /** diffusers' variant: `fp16` reads diffusion_pytorch_model.fp16.safetensors. */
  variant?: string;
}

/**
 * The command as a function: check that it fits (on wasm, refused before loading), load, check,
 * run, write. Returns the output shape, seconds spent loading and in the forward pass.
 */
export async function unetForwardFile(opts: UnetForwardOptions): Promise<{ shape: number[]; seconds: number; loadSeconds: number; loadCpuSeconds: number }> {
  const info = await inspectUNetWeights(opts.unet, opts.variant);
  const inputs = parseUnetInputs((await readSafetensors(opts.inputs)).tensors, info.config, opts.inputs);
  const [B, , H, W] = inputs.sample.shape;
  const plan = forwardMemoryPlan(info.specs, info.config, Math.min(B, opts.batchSize ?? Infinity), [H, W], inputs.encoderHiddenStates.shape[1]);
  refuseIfTooBigForWasm(plan, tf.getBackend(), `${opts.unet} (${countParams(info.specs).toLocaleString('en')} parameters)`);
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const unet = await UNet2DConditionModel.fromPretrained(opts.unet, { trainable: false, variant: opts.variant });
  const loadSeconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const loadCpuSeconds = (cpu.user + cpu.system) / 1e6;
  try {
    const t1 = performance.now();
    const out = unetForwardNCHW(unet, inputs, opts.batchSize);
    const seconds = (performance.now() - t1) / 1000;
    await writeSafetensors(opts.out, { out }, { format: 'pt' });
    return { shape: out.shape, seconds, loadSeconds, loadCpuSeconds };
  } finally {
    unet.dispose();
  }
}

export function register(program: Command): void {
  program
    .command('unet-forward')
    .description('run a diffusers UNet2DConditionModel folder on sample/timestep/encoder_hidden_states (NCHW safetensors) and write `out` (NCHW float32)')
    .requiredOption('--unet <dir>', 'folder with config.json and diffusion_pytorch_model.safetensors (required)')
    .requiredOption('--inputs <file>', 'safetensors with sample [B,C,H,W], timestep [B] (or scalar), encoder_hidden_states [B,L,D] (required)')
    .requiredOption('--out <file>', 'output safetensors (tensor `out`, [B,C,H,W] float32) (required)')
    .option('--batch-size <n>', 'samples per forward pass (default: the whole batch)', int(1))
    .option('--variant <name>', "weights variant, as diffusers' from_pretrained(variant=...): fp16 reads diffusion_pytorch_model.fp16.safetensors")
    .addOption(backendOption())
    .action(async (opts: UnetForwardOptions & { backend?: string }) => {
      const backend = await initBackend(opts.backend);
      const r = await unetForwardFile(opts);
      log.info({ backend: backend.backend, load_s: Number(r.loadSeconds.toFixed(3)), load_cpu_s: Number(r.loadCpuSeconds.toFixed(3)), seconds: Number(r.seconds.toFixed(3)), peak_rss_mib: Math.round(process.resourceUsage().maxRSS / 1024) }, 'unet-forward');
      process.stdout.write(`${opts.out}: out [${r.shape.join(', ')}] float32\n`);
    });
}
