/**
 * AutoencoderKL: parity with diffusers on three configs (library and `vae-forward`), the posterior
 * sample, latent scaling, config and state-dict refusal, and tensor leaks.
 */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import type { Tensor4D } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { AutoencoderKL } from '../../src/models/autoencoder_kl.ts';
import { readSafetensors, writeSafetensors, type StoredTensor } from '../../src/models/safetensors.ts';
import { vaeForwardFile, vaeForwardNCHW } from '../../src/cli/vae_forward.ts';
import { nchwToNhwc, maxAbsDiff } from './scheduler-fixture.ts';
import { VAE_CONFIG_FIXTURES_DIR, VAE_FIXTURE_DIR } from '../fixtures.ts';
import { useTempDir } from '../temp_dir.ts';

const FIXTURES = {
  'diffusers-tiny-vae (2 levels, quant convs, mid attention)': VAE_FIXTURE_DIR,
  'three-levels (1 → 2 channels, no quant convs, no mid attention, shift_factor, 18x14 image)': join(VAE_CONFIG_FIXTURES_DIR, 'three-levels'),
  'quant-only (2 layers per block, quant_conv without post_quant_conv)': join(VAE_CONFIG_FIXTURES_DIR, 'quant-only'),
};

const tmp = useTempDir('vae-test-');
beforeAll(async () => {
  await initBackend(process.env.SWIFTBRUSH_BACKEND ?? 'wasm');
});

const io = async (dir: string) => (await readSafetensors(join(dir, 'io.safetensors'))).tensors;
const nhwc = (t: StoredTensor) => nchwToNhwc(t.data as Float32Array, t.shape);

describe.each(Object.entries(FIXTURES))('diffusers fixture %s', (_, dir) => {
  it('encode gives the posterior mean and logvar, decode the image, within 1e-4 of diffusers 0.30.3', async () => {
    const vae = await AutoencoderKL.fromPretrained(dir);
    const t = await io(dir);
    const image = nhwc(t.get('image')!);
    const latents = nhwc(t.get('latents')!);
    const got = tf.tidy(() => {
      const posterior = vae.encode(tf.tensor4d(image.data, image.shape));
      const decoded = vae.decode(tf.tensor4d(latents.data, latents.shape));
      return { mean: posterior.mean.dataSync(), logvar: posterior.logvar.dataSync(), decoded: decoded.dataSync(), meanShape: posterior.mean.shape, decodedShape: decoded.shape };
    });
    expect(got.meanShape).toEqual(nhwc(t.get('mean')!).shape);
    expect(got.decodedShape).toEqual(nhwc(t.get('decoded')!).shape);
    expect(maxAbsDiff(got.mean as Float32Array, nhwc(t.get('mean')!).data)).toBeLessThanOrEqual(1e-4);
    expect(maxAbsDiff(got.logvar as Float32Array, nhwc(t.get('logvar')!).data)).toBeLessThanOrEqual(1e-4);
    expect(maxAbsDiff(got.decoded as Float32Array, nhwc(t.get('decoded')!).data)).toBeLessThanOrEqual(1e-4);
    vae.dispose();
  });

  it('vae-forward writes mean, logvar and decoded (NCHW float32) matching the fixture, in batches of 1 too', async () => {
    const t = await io(dir);
    const inputs = join(tmp.path, 'in.safetensors');
    await writeSafetensors(inputs, { image: t.get('image')!, latents: t.get('latents')! } as Record<string, { shape: number[]; data: Float32Array }>);
    for (const batchSize of [undefined, 1]) {
      const out = join(tmp.path, `out-${batchSize}.safetensors`);
      const r = await vaeForwardFile({ vae: dir, inputs, out, batchSize });
      const written = (await readSafetensors(out)).tensors;
      expect(Object.keys(r.shapes).sort()).toEqual(['decoded', 'logvar', 'mean']);
      for (const key of ['mean', 'logvar', 'decoded']) {
        expect(written.get(key)!.dtype).toBe('F32');
        expect(written.get(key)!.shape).toEqual(t.get(key)!.shape);
        expect(maxAbsDiff(written.get(key)!.data as Float32Array, t.get(key)!.data as Float32Array), key).toBeLessThanOrEqual(1e-4);
      }
    }
  });
});

describe('posterior sample and latent scaling', () => {
  it('sample(noise) = mean + exp(logvar / 2) · noise, and vae-forward writes it for `noise`', async () => {
    const t = await io(VAE_FIXTURE_DIR);
    const vae = await AutoencoderKL.fromPretrained(VAE_FIXTURE_DIR);
    const mean = t.get('mean')!;
    const noise = { shape: mean.shape, data: Float32Array.from({ length: mean.data.length }, (_, i) => Math.sin(i)) };
    const inputs = new Map<string, StoredTensor>([['image', t.get('image')!], ['noise', { dtype: 'F32', ...noise }]]);
    const out = vaeForwardNCHW(vae, inputs);
    const logvar = t.get('logvar')!.data as Float32Array;
    const want = Float32Array.from(mean.data as Float32Array, (m, i) => m + Math.exp(logvar[i]! / 2) * noise.data[i]!);
    expect(maxAbsDiff(out.sample!.data, want)).toBeLessThanOrEqual(1e-4);
    expect(() => vaeForwardNCHW(vae, new Map([['image', t.get('image')!], ['noise', { dtype: 'F32', shape: [2, 4, 4, 4], data: new Float32Array(128) }]]), 'in.safetensors')).toThrow(/in\.safetensors: 'noise' has shape \[2,4,4,4\], but the posterior of 'image' \[2,3,32,32\] has \[2,4,16,16\]/);
    vae.dispose();
  });

  it('scaleLatents / unscaleLatents are (z − shift)·scale and z/scale + shift, inverse of each other', () => {
    const vae = AutoencoderKL.fromConfig({ block_out_channels: [8], norm_num_groups: 4, latent_channels: 2, scaling_factor: 0.5, shift_factor: 0.25 });
    const [scaled, back] = tf.tidy(() => {
      const z = tf.tensor4d([1, -2, 3, 0.25], [1, 1, 2, 2]);
      const s = vae.scaleLatents(z);
      return [s.dataSync(), vae.unscaleLatents(s).dataSync()];
    });
    expect(Array.from(scaled)).toEqual([0.375, -1.125, 1.375, 0]);
    expect(Array.from(back)).toEqual([1, -2, 3, 0.25]);
    vae.dispose();
  });

  it('decodeToImages clamps to [−1, 1] what decode(unscale(z)) gives', async () => {
    const vae = await AutoencoderKL.fromPretrained(join(VAE_CONFIG_FIXTURES_DIR, 'three-levels'));
    const [images, raw] = tf.tidy(() => {
      const z = tf.mul(tf.randomNormal([1, 3, 2, 3], 0, 1, 'float32', 3), 4) as Tensor4D;
      return [vae.decodeToImages(z).dataSync(), tf.clipByValue(vae.decode(tf.add(tf.div(z, 0.5), 0.1)), -1, 1).dataSync()];
    });
    expect(maxAbsDiff(images as Float32Array, raw as Float32Array)).toBeLessThanOrEqual(1e-6);
    expect(Math.max(...images)).toBeLessThanOrEqual(1);
    expect(Math.min(...images)).toBeGreaterThanOrEqual(-1);
    vae.dispose();
  });
});

describe('refusal', () => {
  it('refuses unknown block types, act_fn, latents_mean and mismatched lengths by name', () => {
    expect(() => AutoencoderKL.fromConfig({ down_block_types: ['AttnDownEncoderBlock2D'] }, { source: 'vae/config.json' })).toThrow(/vae\/config\.json: down block type 'AttnDownEncoderBlock2D' is not supported \(supported: DownEncoderBlock2D\)/);
    expect(() => AutoencoderKL.fromConfig({ up_block_types: ['AttnUpDecoderBlock2D'] })).toThrow(/up block type 'AttnUpDecoderBlock2D' is not supported/);
    expect(() => AutoencoderKL.fromConfig({ act_fn: 'gelu' })).toThrow(/act_fn 'gelu' is not supported/);
    expect(() => AutoencoderKL.fromConfig({ latents_mean: [0, 0, 0, 0], latents_std: [1, 1, 1, 1] })).toThrow(/'latents_mean' \(per-channel latent statistics\) is not supported/);
    expect(() => AutoencoderKL.fromConfig({ block_out_channels: [32, 64] })).toThrow(/down_block_types \(1\), up_block_types \(1\) and block_out_channels \(2\)/);
    expect(() => AutoencoderKL.fromConfig({ _class_name: 'UNet2DConditionModel' })).toThrow(/is not AutoencoderKL/);
  });

  it('a state dict of another config lists missing, unexpected and mis-shaped keys', async () => {
    const tensors = (await readSafetensors(join(VAE_FIXTURE_DIR, 'diffusion_pytorch_model.safetensors'))).tensors;
    const vae = AutoencoderKL.fromConfig({ block_out_channels: [32, 64], down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D'], up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'], use_quant_conv: false, latent_channels: 8 });
    let message = '';
    try {
      vae.loadStateDict(tensors, 'x.safetensors');
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/^x\.safetensors does not match the VAE config/);
    expect(message).toMatch(/unexpected keys \(2\): quant_conv\.bias, quant_conv\.weight|unexpected keys \(2\): quant_conv\.weight, quant_conv\.bias/);
    expect(message).toMatch(/mis-shaped keys .*decoder\.conv_in\.weight: file \[64,4,3,3\] vs model \[64,8,3,3\]/);
    vae.dispose();
  });

  it('vae-forward names the inputs file and the key when an input is missing or mis-shaped', async () => {
    const vae = await AutoencoderKL.fromPretrained(VAE_FIXTURE_DIR);
    expect(() => vaeForwardNCHW(vae, new Map(), 'in.safetensors')).toThrow(/in\.safetensors: needs 'image' \[B,3,H,W\] \(to encode\) and\/or 'latents' \[B,4,h,w\]/);
    expect(() => vaeForwardNCHW(vae, new Map([['latents', { dtype: 'F32', shape: [1, 3, 4, 4], data: new Float32Array(48) }]]), 'in.safetensors')).toThrow(/in\.safetensors: 'latents' has 3 channels .* latent_channels is 4/);
    expect(() => vaeForwardNCHW(vae, new Map([['image', { dtype: 'F32', shape: [3, 8, 8], data: new Float32Array(192) }]]), 'in.safetensors')).toThrow(/'image' must be NCHW/);
    vae.dispose();
  });
});

describe('memory', () => {
  it('no tensor leaks across encode, decode and vae-forward; dispose frees every weight', async () => {
    const empty = tf.memory().numTensors;
    const vae = await AutoencoderKL.fromPretrained(VAE_FIXTURE_DIR);
    const t = await io(VAE_FIXTURE_DIR);
    const before = tf.memory().numTensors;
    for (let i = 0; i < 2; i++) vaeForwardNCHW(vae, new Map([['image', t.get('image')!], ['latents', t.get('latents')!]]), 'io', 1);
    expect(tf.memory().numTensors).toBe(before);
    vae.dispose();
    expect(tf.memory().numTensors).toBe(empty);
  });
});
