/**
 * UNet2DConditionModel: fixture parity with diffusers (library and `unet-forward`), weight round
 * trips, config refusal, other configs' key names / shapes / odd sizes, and tensor leaks.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import type { Tensor3D, Tensor4D } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { UNet2DConditionModel } from '../../src/models/unet_2d_condition.ts';
import { parseSafetensors, readSafetensors, type StoredTensor } from '../../src/models/safetensors.ts';
import { nchwToNhwc, maxAbsDiff } from './scheduler-fixture.ts';

import { UNET_FIXTURE_DIR } from '../fixtures.ts';
import { useTempDir } from '../temp_dir.ts';
export const UNET_FIXTURE = UNET_FIXTURE_DIR;

const tmp = useTempDir('unet-test-');
beforeAll(async () => {
  await initBackend(process.env.SWIFTBRUSH_BACKEND ?? 'wasm');
});

function io() {
  return parseSafetensors(new Uint8Array(readFileSync(join(UNET_FIXTURE, 'io.safetensors')))).tensors;
}

/** Runs `unet` on NHWC random inputs inside tidy; returns the NHWC output values. */
function run(unet: UNet2DConditionModel, b: number, h: number, w: number, seed = 1, timesteps?: number[]): { data: Float32Array; shape: number[] } {
  const c = unet.config;
  const D = Array.isArray(c.cross_attention_dim) ? c.cross_attention_dim[0]! : c.cross_attention_dim;
  return tf.tidy(() => {
    const x = tf.randomNormal([b, h, w, c.in_channels], 0, 1, 'float32', seed) as Tensor4D;
    const ctx = tf.randomNormal([b, 5, D], 0, 1, 'float32', seed + 1) as Tensor3D;
    const y = unet.forward(x, timesteps ?? Array.from({ length: b }, (_, i) => 999 - 300 * i), ctx);
    return { data: y.dataSync() as Float32Array, shape: y.shape };
  });
}

/** A small config in diffusers' keys (defaults filled by parseUNetConfig). */
function tinyConfig(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    sample_size: 8,
    in_channels: 2,
    out_channels: 3,
    block_out_channels: [8, 16],
    down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D'],
    up_block_types: ['CrossAttnUpBlock2D', 'UpBlock2D'],
    layers_per_block: 1,
    attention_head_dim: 2,
    cross_attention_dim: 12,
    norm_num_groups: 4,
    ...over,
  };
}

function shapesOf(unet: UNet2DConditionModel): Map<string, number[]> {
  return new Map([...unet.store.params].map(([k, p]) => [k, p.torchShape]));
}

describe('diffusers fixture (diffusers-tiny-unet, diffusers 0.30.3)', () => {
  it('library forward matches `out` within 1e-4 (and out_f64 within 1e-4)', async () => {
    const unet = await UNet2DConditionModel.fromPretrained(UNET_FIXTURE, { trainable: false });
    const t = io();
    const sample = nchwToNhwc(t.get('sample')!.data as Float32Array, t.get('sample')!.shape);
    const want = nchwToNhwc(t.get('out')!.data as Float32Array, t.get('out')!.shape);
    const want64 = nchwToNhwc(Float32Array.from(t.get('out_f64')!.data as Float64Array), t.get('out_f64')!.shape);
    const e = t.get('encoder_hidden_states')!;
    const got = tf.tidy(() => unet.forward(tf.tensor4d(sample.data, sample.shape), Array.from(t.get('timestep')!.data as Float32Array), tf.tensor3d(e.data as Float32Array, e.shape as [number, number, number])).dataSync() as Float32Array);
    expect(maxAbsDiff(got, want.data)).toBeLessThanOrEqual(1e-4);
    expect(maxAbsDiff(got, want64.data)).toBeLessThanOrEqual(1e-4);
    unet.dispose();
  });

  it('round trip: load → save → load gives identical bytes for every tensor, and a second save is byte-identical', async () => {
    const original = (await readSafetensors(join(UNET_FIXTURE, 'diffusion_pytorch_model.safetensors'))).tensors;
    const a = await UNet2DConditionModel.fromPretrained(UNET_FIXTURE);
    const dir1 = join(tmp.path, 'rt1');
    await a.savePretrained(dir1);
    const saved = (await readSafetensors(join(dir1, 'diffusion_pytorch_model.safetensors'))).tensors;
    expect([...saved.keys()].sort()).toEqual([...original.keys()].sort());
    const bytes = (t: StoredTensor) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    for (const [k, t] of original) {
      const s = saved.get(k)!;
      expect(s.dtype, k).toBe('F32');
      expect(s.shape, k).toEqual(t.shape);
      expect(bytes(s).equals(bytes(t)), k).toBe(true);
    }
    const b = await UNet2DConditionModel.fromPretrained(dir1);
    const dir2 = join(tmp.path, 'rt2');
    await b.savePretrained(dir2);
    const [f1, f2] = await Promise.all([dir1, dir2].map((d) => readFile(join(d, 'diffusion_pytorch_model.safetensors'))));
    expect(f1!.equals(f2!)).toBe(true);
    // the config keeps diffusers' keys and values
    const cfg = JSON.parse(await readFile(join(dir2, 'config.json'), 'utf8'));
    const fixtureCfg = JSON.parse(readFileSync(join(UNET_FIXTURE, 'config.json'), 'utf8'));
    expect(cfg._class_name).toBe('UNet2DConditionModel');
    for (const k of ['block_out_channels', 'down_block_types', 'up_block_types', 'attention_head_dim', 'cross_attention_dim', 'layers_per_block', 'norm_num_groups', 'in_channels', 'out_channels']) expect(cfg[k], k).toEqual(fixtureCfg[k]);
    // identical outputs from the reloaded model
    expect(run(b, 1, 16, 16).data).toEqual(run(a, 1, 16, 16).data);
    a.dispose();
    b.dispose();
  });

  it('no tensor leaks across forward calls', async () => {
    const unet = await UNet2DConditionModel.fromPretrained(UNET_FIXTURE);
    run(unet, 2, 16, 16);
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) run(unet, 2, 16, 16, i);
    expect(tf.memory().numTensors).toBe(before);
    const params = unet.store.params.size;
    unet.dispose();
    expect(tf.memory().numTensors).toBe(before - params);
  });
});

describe('config and state-dict refusal', () => {
  it('refuses unsupported options by name', () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ class_embed_type: 'timestep' }, /class_embed_type/],
      [{ time_cond_proj_dim: 16 }, /time_cond_proj_dim/],
      [{ resnet_time_scale_shift: 'scale_shift' }, /resnet_time_scale_shift/],
      [{ addition_embed_type: 'text_time' }, /addition_embed_type/],
      [{ act_fn: 'gelu' }, /act_fn/],
      [{ down_block_types: ['DownBlock2D', 'SimpleCrossAttnDownBlock2D'] }, /SimpleCrossAttnDownBlock2D/],
      [{ mid_block_type: 'UNetMidBlock2DSimpleCrossAttn' }, /mid_block_type/],
      [{ attention_head_dim: [2, 2, 2] }, /attention_head_dim/],
      [{ _class_name: 'UNet2DModel' }, /UNet2DModel/],
    ];
    for (const [over, re] of cases) expect(() => UNet2DConditionModel.fromConfig(tinyConfig(over)), JSON.stringify(over)).toThrow(re);
    // accepted at their neutral values, as diffusers' own config.json writes them
    expect(() => UNet2DConditionModel.fromConfig(tinyConfig({ class_embed_type: null, dropout: 0.0, resnet_out_scale_factor: 1.0, upcast_attention: false })).dispose()).not.toThrow();
  });

  it('lists missing, unexpected and mis-shaped keys together', () => {
    const unet = UNet2DConditionModel.fromConfig(tinyConfig());
    const sd = unet.stateDict();
    const map = new Map<string, StoredTensor>(Object.entries(sd).map(([k, v]) => [k, { dtype: 'F32', shape: v.shape, data: v.data }]));
    map.delete('conv_in.bias');
    map.set('down_blocks.9.resnets.0.conv1.weight', { dtype: 'F32', shape: [1], data: new Float32Array(1) });
    map.set('conv_out.weight', { dtype: 'F32', shape: [3, 8, 1, 1], data: new Float32Array(24) });
    let message = '';
    try {
      unet.loadStateDict(map, 'bad.safetensors');
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/bad\.safetensors/);
    expect(message).toMatch(/missing keys \(1\): conv_in\.bias/);
    expect(message).toMatch(/unexpected keys \(1\): down_blocks\.9\.resnets\.0\.conv1\.weight/);
    expect(message).toMatch(/mis-shaped keys \(1\): conv_out\.weight: file \[3,8,1,1\] vs model \[3,8,3,3\]/);
    unet.dispose();
  });
});

describe('other configs: diffusers key names, shapes and sizes', () => {
  it('use_linear_projection: proj_in/proj_out are Linear [out,in] and compute what the 1x1 conv computes', () => {
    const conv = UNet2DConditionModel.fromConfig(tinyConfig(), { seed: 3 });
    const lin = UNet2DConditionModel.fromConfig(tinyConfig({ use_linear_projection: true }), { seed: 3 });
    const cs = shapesOf(conv);
    const ls = shapesOf(lin);
    expect(ls.get('down_blocks.1.attentions.0.proj_in.weight')).toEqual([16, 16]);
    expect(ls.get('down_blocks.1.attentions.0.proj_out.weight')).toEqual([16, 16]);
    expect(cs.get('down_blocks.1.attentions.0.proj_in.weight')).toEqual([16, 16, 1, 1]);
    expect([...ls.keys()].sort()).toEqual([...cs.keys()].sort());
    // Same weights (1x1 conv [out,in,1,1] → linear [out,in]): same output.
    const sd = conv.stateDict();
    lin.loadStateDict(new Map(Object.entries(sd).map(([k, v]) => {
      const shape = /proj_(in|out)\.weight$/.test(k) ? v.shape.slice(0, 2) : v.shape;
      return [k, { dtype: 'F32' as const, shape, data: v.data }];
    })));
    const a = run(conv, 2, 8, 8);
    const b = run(lin, 2, 8, 8);
    expect(maxAbsDiff(a.data, b.data)).toBeLessThan(1e-5);
    conv.dispose();
    lin.dispose();
  });

  it('CrossAttn-first block order, per-block attention_head_dim lists, layers_per_block 1 and 2, 14 → 7 → 4 → 7 → 14', () => {
    const cfg = tinyConfig({
      in_channels: 1,
      out_channels: 1,
      block_out_channels: [8, 16, 16],
      down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
      up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
      attention_head_dim: [1, 2, 4],
      layers_per_block: [1, 2, 1],
      use_linear_projection: true,
    });
    const unet = UNet2DConditionModel.fromConfig(cfg);
    const s = shapesOf(unet);
    // down path
    expect(s.get('down_blocks.0.attentions.0.proj_in.weight')).toEqual([8, 8]);
    expect(s.get('down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight')).toEqual([8, 12]);
    expect(s.get('down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight')).toEqual([64, 8]);
    expect(s.get('down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight')).toEqual([8, 32]);
    expect(s.get('down_blocks.0.downsamplers.0.conv.weight')).toEqual([8, 8, 3, 3]);
    expect(s.get('down_blocks.1.resnets.0.conv_shortcut.weight')).toEqual([16, 8, 1, 1]);
    expect(s.has('down_blocks.1.resnets.1.conv1.weight')).toBe(true);
    expect(s.has('down_blocks.1.attentions.1.norm.weight')).toBe(true);
    expect(s.has('down_blocks.1.resnets.2.conv1.weight')).toBe(false);
    expect(s.has('down_blocks.2.downsamplers.0.conv.weight')).toBe(false);
    expect(s.has('down_blocks.2.attentions.0.norm.weight')).toBe(false);
    expect(s.get('mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight')).toEqual([16, 16]);
    expect(s.get('time_embedding.linear_1.weight')).toEqual([32, 8]);
    expect(s.get('down_blocks.0.resnets.0.time_emb_proj.weight')).toEqual([8, 32]);
    // up path: reversed layers_per_block + 1 resnets; skip channels as diffusers concatenates them
    expect(s.get('up_blocks.0.resnets.0.conv1.weight')).toEqual([16, 32, 3, 3]);
    expect(s.has('up_blocks.0.resnets.1.conv1.weight')).toBe(true);
    expect(s.has('up_blocks.0.resnets.2.conv1.weight')).toBe(false);
    expect(s.has('up_blocks.0.upsamplers.0.conv.weight')).toBe(true);
    expect(s.has('up_blocks.0.attentions.0.norm.weight')).toBe(false);
    expect(s.has('up_blocks.1.resnets.2.conv1.weight')).toBe(true); // layers_per_block[1] = 2 → 3 resnets
    expect(s.get('up_blocks.1.resnets.2.conv_shortcut.weight')).toEqual([16, 24, 1, 1]); // 16 + skip 8
    expect(s.get('up_blocks.2.resnets.0.conv1.weight')).toEqual([8, 24, 3, 3]);
    expect(s.get('up_blocks.2.resnets.1.conv_shortcut.weight')).toEqual([8, 16, 1, 1]);
    expect(s.has('up_blocks.2.upsamplers.0.conv.weight')).toBe(false);
    expect(s.get('conv_out.weight')).toEqual([1, 8, 3, 3]);
    // Heads come from the per-block list (reversed on the way up).
    const heads = (name: string) => (unet as unknown as Record<string, { attentions: { transformer_blocks: { attn1: { heads: number } }[] }[] }[]>);
    const up = heads('up_blocks').up_blocks!;
    const down = heads('down_blocks').down_blocks!;
    expect(down[0]!.attentions[0]!.transformer_blocks[0]!.attn1.heads).toBe(1);
    expect(down[1]!.attentions[0]!.transformer_blocks[0]!.attn1.heads).toBe(2);
    expect(up[1]!.attentions[0]!.transformer_blocks[0]!.attn1.heads).toBe(2);
    expect(up[2]!.attentions[0]!.transformer_blocks[0]!.attn1.heads).toBe(1);
    expect(unet.mid_block!.attentions[0]!.transformer_blocks[0]!.attn1.heads).toBe(4);
    // 14 → 7 → 4 (stride-2 conv of 7) → upsampled to 7 (the skip's size) → 14; also non-square
    expect(run(unet, 2, 14, 14).shape).toEqual([2, 14, 14, 1]);
    expect(run(unet, 1, 10, 6).shape).toEqual([1, 10, 6, 1]);
    // Different head counts give different outputs for the same weights.
    const other = UNet2DConditionModel.fromConfig({ ...cfg, attention_head_dim: 1 });
    other.loadStateDict(new Map(Object.entries(unet.stateDict()).map(([k, v]) => [k, { dtype: 'F32' as const, shape: v.shape, data: v.data }])));
    expect(maxAbsDiff(run(unet, 1, 14, 14).data, run(other, 1, 14, 14).data)).toBeGreaterThan(1e-6);
    unet.dispose();
    other.dispose();
  });

  it('the MNIST teacher layout (28 → 14 → 7, only_cross_attention) and a mid-block-free 4-level UNet on 28 (… 7 → 4 → 7)', () => {
    const cfg = tinyConfig({
      in_channels: 1,
      out_channels: 1,
      block_out_channels: [4, 8, 8, 8],
      down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
      up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
      mid_block_type: null,
      layers_per_block: 2,
      attention_head_dim: 2,
      transformer_layers_per_block: [1, 2, 1, 1],
      only_cross_attention: [false, true, false, false],
    });
    const unet = UNet2DConditionModel.fromConfig(cfg);
    const s = shapesOf(unet);
    expect([...s.keys()].some((k) => k.startsWith('mid_block.'))).toBe(false);
    expect(s.has('down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.weight')).toBe(true);
    expect(s.get('down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.weight')).toEqual([8, 12]); // only_cross_attention: attn1 reads the text
    expect(s.get('down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_k.weight')).toEqual([8, 8]);
    expect(s.has('up_blocks.2.attentions.0.transformer_blocks.1.attn1.to_q.weight')).toBe(true); // reversed transformer layers
    expect(s.get('up_blocks.2.attentions.0.transformer_blocks.0.attn1.to_k.weight')).toEqual([8, 12]); // reversed only_cross_attention
    expect(run(unet, 2, 28, 28).shape).toEqual([2, 28, 28, 1]);
    unet.dispose();
  });
});
