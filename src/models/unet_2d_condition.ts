/**
 * UNet2DConditionModel, built from a diffusers config.json and addressed by diffusers' state-dict
 * keys. Inputs and outputs of `forward` are NHWC; `unet-forward` converts from/to PyTorch's NCHW.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tf } from '../tf.ts';
import type { Tensor, Tensor3D, Tensor4D, Variable } from '../tf.ts';
import { fileValues, ParamStore, type HostArrays, type ParamSpec } from './params.ts';
import { Conv2d, GroupNorm, silu, type LoraState } from './layers.ts';
import { TimestepEmbedding, timestepTensor } from './embeddings.ts';
import { DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D } from './unet_2d_blocks.ts';
import type { StoredTensor } from './safetensors.ts';
import { checkAgainst, WeightFiles, type TensorSource } from './weights.ts';
import { writeJsonAtomic } from '../util/fs.ts';

export const WEIGHTS_NAME = 'diffusion_pytorch_model.safetensors';
export const CONFIG_NAME = 'config.json';

/** The keys of a diffusers UNet2DConditionModel config this port reads. */
export interface UNetConfig {
  _class_name?: string;
  sample_size?: number;
  in_channels: number;
  out_channels: number;
  center_input_sample: boolean;
  flip_sin_to_cos: boolean;
  freq_shift: number;
  down_block_types: string[];
  mid_block_type: string | null;
  up_block_types: string[];
  block_out_channels: number[];
  layers_per_block: number | number[];
  downsample_padding: number;
  mid_block_scale_factor: number;
  act_fn: string;
  norm_num_groups: number;
  norm_eps: number;
  cross_attention_dim: number | number[];
  transformer_layers_per_block: number | number[];
  attention_head_dim: number | number[];
  num_attention_heads: number | number[] | null;
  use_linear_projection: boolean;
  only_cross_attention: boolean | boolean[];
  conv_in_kernel: number;
  conv_out_kernel: number;
  [key: string]: unknown;
}

/** diffusers' defaults for UNet2DConditionModel (0.30), so partial configs read the same. */
export const UNET_DEFAULTS: UNetConfig = {
  in_channels: 4,
  out_channels: 4,
  center_input_sample: false,
  flip_sin_to_cos: true,
  freq_shift: 0,
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  mid_block_type: 'UNetMidBlock2DCrossAttn',
  up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  block_out_channels: [320, 640, 1280, 1280],
  layers_per_block: 2,
  downsample_padding: 1,
  mid_block_scale_factor: 1,
  act_fn: 'silu',
  norm_num_groups: 32,
  norm_eps: 1e-5,
  cross_attention_dim: 1280,
  transformer_layers_per_block: 1,
  attention_head_dim: 8,
  num_attention_heads: null,
  use_linear_projection: false,
  only_cross_attention: false,
  conv_in_kernel: 3,
  conv_out_kernel: 3,
};

/** Options this port does not implement: refused when set to anything but the listed value. */
const UNSUPPORTED: Record<string, unknown[]> = {
  addition_embed_type: [null],
  class_embed_type: [null],
  num_class_embeds: [null],
  time_cond_proj_dim: [null],
  encoder_hid_dim: [null],
  encoder_hid_dim_type: [null],
  timestep_post_act: [null],
  time_embedding_act_fn: [null],
  time_embedding_dim: [null],
  time_embedding_type: ['positional'],
  resnet_time_scale_shift: ['default'],
  resnet_skip_time_act: [false],
  resnet_out_scale_factor: [1, 1.0],
  dual_cross_attention: [false],
  cross_attention_norm: [null],
  attention_type: ['default'],
  class_embeddings_concat: [false],
  reverse_transformer_layers_per_block: [null],
  dropout: [0, 0.0],
  act_fn: ['silu', 'swish'],
};

const DOWN_TYPES = ['DownBlock2D', 'CrossAttnDownBlock2D'];
const UP_TYPES = ['UpBlock2D', 'CrossAttnUpBlock2D'];
const MID_TYPES = ['UNetMidBlock2DCrossAttn', null];

function perBlock<T>(value: T | T[], n: number, key: string): T[] {
  if (!Array.isArray(value)) return Array.from({ length: n }, () => value);
  if (value.length !== n) throw new Error(`config: '${key}' has ${value.length} entries for ${n} blocks`);
  return value;
}

/** Fills defaults and refuses every option this port cannot honour, naming it. */
export function parseUNetConfig(raw: Record<string, unknown>, source = 'config.json'): UNetConfig {
  const config = { ...UNET_DEFAULTS, ...raw } as UNetConfig;
  if (config._class_name && config._class_name !== 'UNet2DConditionModel') throw new Error(`${source}: _class_name '${config._class_name}' is not UNet2DConditionModel`);
  for (const [key, allowed] of Object.entries(UNSUPPORTED)) {
    if (key in raw && !allowed.some((a) => a === raw[key])) throw new Error(`${source}: option '${key}' = ${JSON.stringify(raw[key])} is not supported (supported: ${allowed.map((a) => JSON.stringify(a)).join(', ')})`);
  }
  const n = config.down_block_types.length;
  for (const t of config.down_block_types) if (!DOWN_TYPES.includes(t)) throw new Error(`${source}: down block type '${t}' is not supported (supported: ${DOWN_TYPES.join(', ')})`);
  for (const t of config.up_block_types) if (!UP_TYPES.includes(t)) throw new Error(`${source}: up block type '${t}' is not supported (supported: ${UP_TYPES.join(', ')})`);
  if (!MID_TYPES.includes(config.mid_block_type)) throw new Error(`${source}: mid_block_type '${config.mid_block_type}' is not supported (supported: UNetMidBlock2DCrossAttn, null)`);
  if (config.up_block_types.length !== n || config.block_out_channels.length !== n) throw new Error(`${source}: down_block_types, up_block_types and block_out_channels must have the same length`);
  for (const key of ['conv_in_kernel', 'conv_out_kernel'] as const) if (config[key] % 2 !== 1) throw new Error(`${source}: '${key}' must be odd, got ${config[key]}`);
  if (Array.isArray(config.transformer_layers_per_block) && config.transformer_layers_per_block.some((x) => Array.isArray(x))) throw new Error(`${source}: nested 'transformer_layers_per_block' lists are not supported`);
  return config;
}

export async function readUNetConfig(configPath: string): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await readFile(configPath, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`${configPath}: cannot read the UNet config (${(err as Error).message})`);
  }
}

export class UNet2DConditionModel {
  readonly conv_in: Conv2d;
  readonly time_embedding: TimestepEmbedding;
  readonly down_blocks: DownBlock2D[] = [];
  readonly mid_block: UNetMidBlock2DCrossAttn | null;
  readonly up_blocks: UpBlock2D[] = [];
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;
  /** Shared switch of every LoRA adapter attached to this model (see lora.ts). */
  readonly loraState: LoraState = { enabled: false };

  private constructor(readonly config: UNetConfig, readonly store: ParamStore) {
    const c = config;
    const n = c.block_out_channels.length;
    const ch0 = c.block_out_channels[0]!;
    const timeEmbedDim = ch0 * 4;
    // diffusers: num_attention_heads falls back to attention_head_dim (a historical misnomer).
    const heads = perBlock(c.num_attention_heads ?? c.attention_head_dim, n, 'attention_head_dim');
    const layers = perBlock(c.layers_per_block, n, 'layers_per_block');
    const crossDims = perBlock(c.cross_attention_dim, n, 'cross_attention_dim');
    const tLayers = perBlock(c.transformer_layers_per_block, n, 'transformer_layers_per_block');
    const common = { tembChannels: timeEmbedDim, groups: c.norm_num_groups, eps: c.norm_eps };
    const onlyCross = perBlock(c.only_cross_attention, n, 'only_cross_attention');
    const attention = (i: number, cross: boolean) => (cross ? { heads: heads[i]!, transformerLayers: tLayers[i]!, crossAttentionDim: crossDims[i]!, useLinearProjection: c.use_linear_projection, onlyCrossAttention: onlyCross[i]! } : undefined);

    this.conv_in = new Conv2d(store, 'conv_in', c.in_channels, ch0, c.conv_in_kernel, 1, (c.conv_in_kernel - 1) / 2);
    this.time_embedding = new TimestepEmbedding(store, 'time_embedding', ch0, timeEmbedDim);

    let outCh = ch0;
    c.down_block_types.forEach((type, i) => {
      const inCh = outCh;
      outCh = c.block_out_channels[i]!;
      this.down_blocks.push(new DownBlock2D(store, `down_blocks.${i}`, { ...common, numLayers: layers[i]!, inChannels: inCh, outChannels: outCh, addDownsample: i !== n - 1, downsamplePadding: c.downsample_padding, attention: attention(i, type === 'CrossAttnDownBlock2D') }));
    });

    this.mid_block = c.mid_block_type
      ? new UNetMidBlock2DCrossAttn(store, 'mid_block', { ...common, numLayers: 1, inChannels: c.block_out_channels[n - 1]!, outChannels: c.block_out_channels[n - 1]!, outputScaleFactor: c.mid_block_scale_factor, attention: { ...attention(n - 1, true)!, onlyCrossAttention: false } })
      : null;

    const rev = [...c.block_out_channels].reverse();
    const revHeads = [...heads].reverse();
    const revLayers = [...layers].reverse();
    const revCross = [...crossDims].reverse();
    const revT = [...tLayers].reverse();
    const revOnlyCross = [...onlyCross].reverse();
    outCh = rev[0]!;
    c.up_block_types.forEach((type, i) => {
      const prev = outCh;
      outCh = rev[i]!;
      const inCh = rev[Math.min(i + 1, n - 1)]!;
      const att = type === 'CrossAttnUpBlock2D' ? { heads: revHeads[i]!, transformerLayers: revT[i]!, crossAttentionDim: revCross[i]!, useLinearProjection: c.use_linear_projection, onlyCrossAttention: revOnlyCross[i]! } : undefined;
      this.up_blocks.push(new UpBlock2D(store, `up_blocks.${i}`, { ...common, numLayers: revLayers[i]! + 1, inChannels: inCh, outChannels: outCh, prevOutputChannels: prev, addUpsample: i !== n - 1, attention: att }));
    });

    this.conv_norm_out = new GroupNorm(store, 'conv_norm_out', c.norm_num_groups, ch0, c.norm_eps);
    this.conv_out = new Conv2d(store, 'conv_out', ch0, c.out_channels, c.conv_out_kernel, 1, (c.conv_out_kernel - 1) / 2);
  }

  /** A freshly initialised model (PyTorch's default init, seeded). */
  static fromConfig(raw: Record<string, unknown>, options: { seed?: number; trainable?: boolean; source?: string } = {}): UNet2DConditionModel {
    const config = parseUNetConfig(raw, options.source);
    return new UNet2DConditionModel(config, new ParamStore(options.seed ?? 0, options.trainable ?? true));
  }

  /** Every parameter's diffusers name, kind and PyTorch shape for a config, without allocating any. */
  static parameterSpecs(raw: Record<string, unknown>, source?: string): ParamSpec[] {
    return new UNet2DConditionModel(parseUNetConfig(raw, source), new ParamStore(0, false, { specOnly: true })).store.specs();
  }

  /**
   * Loads `dir/config.json` and the weights as diffusers' `from_pretrained` finds them:
   * `diffusion_pytorch_model[.variant].safetensors` or its sharded index. Every variable is built
   * from the file's tensor (read one at a time; F16/BF16 widened), never initialised first.
   */
  static async fromPretrained(dir: string, options: { trainable?: boolean; variant?: string } = {}): Promise<UNet2DConditionModel> {
    const configPath = join(dir, CONFIG_NAME);
    const raw = await readUNetConfig(configPath);
    const config = parseUNetConfig(raw, configPath);
    const weights = WeightFiles.open(dir, WEIGHTS_NAME, options.variant);
    try {
      checkAgainst(UNet2DConditionModel.parameterSpecs(raw, configPath), weights);
      return new UNet2DConditionModel(config, new ParamStore(0, options.trainable ?? true, fileValues(weights)));
    } finally {
      weights.close();
    }
  }

  /**
   * Assigns every parameter from a PyTorch-layout state dict or weight files, one tensor at a time;
   * any missing, unexpected or mis-shaped key is an error naming the source.
   */
  loadStateDict(tensors: Map<string, StoredTensor> | TensorSource, source = 'state dict'): void {
    this.store.loadStateDict(tensors, source, 'the UNet config');
  }

  /** PyTorch-layout copies of every parameter (caller owns the arrays). */
  stateDict(): HostArrays {
    return this.store.torchStateDict();
  }

  /**
   * Writes `dir/config.json` and `dir/diffusion_pytorch_model.safetensors` (each atomically; the
   * weights streamed one tensor at a time). `weights`: device tensors keyed like the parameters
   * (e.g. the EMA shadow) or host arrays in PyTorch layout; default the parameters.
   */
  async savePretrained(dir: string, weights?: Map<string, Tensor> | HostArrays): Promise<void> {
    this.store.writeSafetensors(join(dir, WEIGHTS_NAME), weights);
    await writeJsonAtomic(join(dir, CONFIG_NAME), { _class_name: 'UNet2DConditionModel', _diffusers_version: '0.30.3', ...this.config });
  }

  /** The base weights (LoRA adapters excluded). */
  parameters(): Variable[] {
    return this.store.variables();
  }

  /**
   * ε (or v) prediction. sample: NHWC [B, H, W, C]; timesteps: one per sample (host numbers);
   * encoderHiddenStates: [B, L, D]. Wrap calls in tf.tidy: intermediate tensors are not disposed here.
   */
  forward(sample: Tensor4D, timesteps: ArrayLike<number>, encoderHiddenStates: Tensor3D): Tensor4D {
    const c = this.config;
    if (timesteps.length !== sample.shape[0]) throw new Error(`forward: ${timesteps.length} timesteps for a batch of ${sample.shape[0]}`);
    if (encoderHiddenStates.shape[0] !== sample.shape[0]) throw new Error(`forward: encoder_hidden_states batch ${encoderHiddenStates.shape[0]} vs sample batch ${sample.shape[0]}`);
    const emb = this.time_embedding.forward(timestepTensor(timesteps, c.block_out_channels[0]!, c.flip_sin_to_cos, c.freq_shift));
    let h = this.conv_in.forward(c.center_input_sample ? tf.sub(tf.mul(sample, 2), 1) : sample);
    const skips: Tensor4D[] = [h];
    for (const block of this.down_blocks) {
      const { hidden, states } = block.forward(h, emb, encoderHiddenStates);
      h = hidden;
      skips.push(...states);
    }
    if (this.mid_block) h = this.mid_block.forward(h, emb, encoderHiddenStates);
    this.up_blocks.forEach((block, i) => {
      const own = skips.splice(skips.length - block.resnets.length, block.resnets.length);
      // Upsample to the next skip's size, as diffusers' forward_upsample_size does for odd sizes.
      const next = skips[skips.length - 1];
      const size = i < this.up_blocks.length - 1 && next ? ([next.shape[1], next.shape[2]] as [number, number]) : undefined;
      h = block.forward(h, own, emb, encoderHiddenStates, size);
    });
    return this.conv_out.forward(silu(this.conv_norm_out.forward(h)));
  }

  dispose(): void {
    this.store.dispose();
  }
}
