/** LoRA adapters: zero-B identity, on/off switching on one model, PEFT save/load, refusal. */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { tf } from '../../src/tf.ts';
import type { Tensor, Tensor3D, Tensor4D } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { UNet2DConditionModel } from '../../src/models/unet_2d_condition.ts';
import { LoraAdapter, DEFAULT_LORA_TARGETS } from '../../src/models/lora.ts';
import { Conv2d, Linear } from '../../src/models/layers.ts';
import { readSafetensors, writeSafetensors } from '../../src/models/safetensors.ts';
import { Adam } from '../../src/models/optim.ts';

import { UNET_FIXTURE_DIR } from '../fixtures.ts';
const FIXTURE = UNET_FIXTURE_DIR;

let tmp: string;
let unet: UNet2DConditionModel;
beforeAll(async () => {
  await initBackend(process.env.SWIFTBRUSH_BACKEND ?? 'wasm');
  tmp = await mkdtemp(join(tmpdir(), 'lora-test-'));
  unet = await UNet2DConditionModel.fromPretrained(FIXTURE, { trainable: false });
});
afterAll(async () => {
  unet.dispose();
  await rm(tmp, { recursive: true, force: true });
});

const inputs = () => ({
  x: tf.randomNormal([2, 16, 16, 4], 0, 1, 'float32', 11) as Tensor4D,
  ctx: tf.randomNormal([2, 8, 32], 0, 1, 'float32', 12) as Tensor3D,
  t: [999, 37],
});

function forward(model: UNet2DConditionModel): Float32Array {
  return tf.tidy(() => {
    const { x, ctx, t } = inputs();
    return model.forward(x, t, ctx).dataSync() as Float32Array;
  });
}

const identical = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));

describe('LoraAdapter', () => {
  it('attaches to every to_q/to_k/to_v/to_out.0 by default; zero B: enabled output equals the base model exactly', () => {
    const base = forward(unet);
    const lora = LoraAdapter.attach(unet, { rank: 4, alpha: 8, targetModules: DEFAULT_LORA_TARGETS });
    // fixture: 2 transformer blocks in down_blocks.1, 3 in up_blocks.0, 1 in the mid block; 2 attentions each
    expect(lora.modules.length).toBe(6 * 2 * 4);
    lora.enable();
    expect(identical(forward(unet), base)).toBe(true);
    lora.disable();
    lora.dispose();
    expect(identical(forward(unet), base)).toBe(true);
  });

  it('after training-like updates: enabled differs, disabled restores the base output exactly; with() restores the switch', () => {
    const base = forward(unet);
    const lora = LoraAdapter.attach(unet, { rank: 2, alpha: 2, targetModules: ['to_q', 'to_v'] }, 5);
    onTestFinished(() => lora.dispose());
    expect(lora.modules.every((m) => /\.(to_q|to_v)$/.test(m.name))).toBe(true);
    const params = new Map([...lora.store.params].map(([k, p]) => [k, p.variable]));
    const opt = new Adam(params, { lr: 1e-2 });
    for (let step = 0; step < 2; step++) {
      const { value, grads } = tf.variableGrads(() => lora.with(true, () => {
        const { x, ctx, t } = inputs();
        return tf.mean(tf.square(unet.forward(x, t, ctx))) as tf.Scalar;
      }), lora.parameters());
      opt.apply(new Map<string, Tensor>([...params].map(([k, v]) => [k, grads[v.name]!])));
      tf.dispose([value, ...Object.values(grads)]);
    }
    opt.dispose();
    const enabled = lora.with(true, () => forward(unet));
    expect(unet.loraState.enabled).toBe(false);
    expect(identical(enabled, base)).toBe(false);
    lora.enable();
    expect(identical(forward(unet), enabled)).toBe(true);
    lora.disable();
    expect(identical(forward(unet), base)).toBe(true);
  });

  it('applies scale alpha/r: Linear(x) = W x + b + (alpha/r) B A x', () => {
    const lora = LoraAdapter.attach(unet, { rank: 2, alpha: 6, targetModules: ['to_k'] }, 1);
    const lin = lora.modules[0]! as Linear;
    lin.lora!.B.assign(tf.randomNormal(lin.lora!.B.shape, 0, 1, 'float32', 3));
    const [off, on, manual] = tf.tidy(() => {
      const x = tf.randomNormal([3, lin.inFeatures], 0, 1, 'float32', 4);
      const off = lora.with(false, () => lin.forward(x));
      const on = lora.with(true, () => lin.forward(x));
      const manual = tf.add(off, tf.mul(tf.matMul(tf.matMul(x, lin.lora!.A), lin.lora!.B), 3));
      return [off, on, manual].map((t) => t.dataSync() as Float32Array);
    });
    expect(identical(on!, off!)).toBe(false);
    let d = 0;
    on!.forEach((v, i) => (d = Math.max(d, Math.abs(v - manual![i]!))));
    expect(d).toBeLessThan(1e-5);
    lora.dispose();
  });

  it('on Conv2d (PEFT: A = conv with the layer kernel/stride/padding into r channels, B = 1x1): equals the merged kernel W + (alpha/r) A·B', () => {
    const base = forward(unet);
    const lora = LoraAdapter.attach(unet, { rank: 3, alpha: 6, targetModules: ['conv1', 'conv2', 'conv_in', 'downsamplers.0.conv'] }, 2);
    onTestFinished(() => lora.dispose());
    const convs = lora.modules as Conv2d[];
    expect(convs.every((m) => m instanceof Conv2d)).toBe(true);
    expect(convs.map((m) => m.name)).toContain('conv_in');
    expect(convs.map((m) => m.name)).toContain('down_blocks.0.downsamplers.0.conv'); // stride 2, explicit padding
    expect(lora.with(true, () => forward(unet))).toEqual(base); // B = 0: identity
    for (const m of convs) m.lora!.B.assign(tf.randomNormal(m.lora!.B.shape, 0, 0.2, 'float32', 7));
    const adapted = lora.with(true, () => forward(unet));
    expect(identical(adapted, base)).toBe(false);
    // Merge into the base kernels (tfjs layout [kh, kw, in, r] x [1, 1, r, out]) and compare with LoRA off.
    const saved = convs.map((m) => tf.clone(m.weight));
    for (const m of convs) {
      const merged = tf.tidy(() => {
        const [kh, kw, cin, r] = m.lora!.A.shape as number[];
        const a = tf.reshape(m.lora!.A, [kh! * kw! * cin!, r!]);
        const b = tf.reshape(m.lora!.B, [r!, m.outChannels]);
        return tf.add(m.weight, tf.mul(tf.reshape(tf.matMul(a, b), m.weight.shape), 2));
      });
      m.weight.assign(merged);
      merged.dispose();
    }
    const mergedOut = forward(unet);
    convs.forEach((m, i) => m.weight.assign(saved[i]!));
    tf.dispose(saved);
    let d = 0;
    adapted.forEach((v, i) => (d = Math.max(d, Math.abs(v - mergedOut[i]!))));
    expect(d).toBeLessThan(1e-4);
    expect(identical(forward(unet), base)).toBe(true);
  });

  it('Conv2d adapters save in PEFT layout ([r,in,kh,kw] / [out,r,1,1]) and load back to identical outputs', async () => {
    const lora = LoraAdapter.attach(unet, { rank: 2, alpha: 2, targetModules: ['conv1', 'to_q'] }, 4);
    for (const p of lora.store.params.values()) p.variable.assign(tf.randomNormal(p.variable.shape, 0, 0.1, 'float32', 22));
    const enabled = lora.with(true, () => forward(unet));
    const dir = join(tmp, 'conv-adapter');
    await lora.save(dir);
    lora.dispose();
    const file = (await readSafetensors(join(dir, 'adapter_model.safetensors'))).tensors;
    expect(file.get('down_blocks.0.resnets.0.conv1.lora_A.weight')!.shape).toEqual([2, 32, 3, 3]);
    expect(file.get('down_blocks.0.resnets.0.conv1.lora_B.weight')!.shape).toEqual([32, 2, 1, 1]);
    const fresh = await UNet2DConditionModel.fromPretrained(FIXTURE, { trainable: false });
    const loaded = await LoraAdapter.load(fresh, dir);
    expect(loaded.with(true, () => forward(fresh))).toEqual(enabled);
    loaded.dispose();
    fresh.dispose();
  });

  it('PEFT save/load round trip: key names, [r,in]/[out,r] shapes, config, identical outputs; prefixes accepted', async () => {
    const lora = LoraAdapter.attach(unet, { rank: 4, alpha: 16, targetModules: ['to_q', 'to_k', 'to_v', 'to_out.0'] }, 9);
    for (const p of lora.store.params.values()) p.variable.assign(tf.randomNormal(p.variable.shape, 0, 0.1, 'float32', 21));
    const enabled = lora.with(true, () => forward(unet));
    const dir = join(tmp, 'adapter');
    await lora.save(dir);
    const file = (await readSafetensors(join(dir, 'adapter_model.safetensors'))).tensors;
    expect(file.get('down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight')!.shape).toEqual([4, 32]); // cross-attention: in = 32
    expect(file.get('down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight')!.shape).toEqual([64, 4]);
    expect(file.get('mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight')!.shape).toEqual([64, 4]);
    expect(file.size).toBe(48 * 2);
    const cfg = JSON.parse(await readFile(join(dir, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 16, target_modules: ['to_q', 'to_k', 'to_v', 'to_out.0'] });
    lora.dispose();

    const fresh = await UNet2DConditionModel.fromPretrained(FIXTURE, { trainable: false });
    const loaded = await LoraAdapter.load(fresh, dir);
    expect(loaded.with(true, () => forward(fresh))).toEqual(enabled);
    const sd = loaded.stateDict();
    for (const [k, t] of file) expect(identical(sd[k]!.data, t.data as Float32Array), k).toBe(true);
    loaded.dispose();

    // diffusers' `unet.` prefix (save_lora_weights) is accepted
    const prefixed = join(tmp, 'prefixed');
    await writeSafetensors(join(prefixed, 'adapter_model.safetensors'), Object.fromEntries([...file].map(([k, v]) => [`unet.${k}`, { shape: v.shape, data: v.data }])));
    await writeFile(join(prefixed, 'adapter_config.json'), JSON.stringify(cfg));
    const again = await LoraAdapter.load(fresh, prefixed);
    expect(again.with(true, () => forward(fresh))).toEqual(enabled);
    again.dispose();
    fresh.dispose();
  });

  it('refuses unknown targets, bad ranks, and mismatched state dicts', () => {
    expect(() => LoraAdapter.attach(unet, { rank: 2, alpha: 2, targetModules: ['to_x'] })).toThrow(/to_x/);
    expect(() => LoraAdapter.attach(unet, { rank: 0, alpha: 2, targetModules: ['to_q'] })).toThrow(/rank/);
    const lora = LoraAdapter.attach(unet, { rank: 2, alpha: 2, targetModules: ['to_q'] });
    expect(() => LoraAdapter.attach(unet, { rank: 2, alpha: 2, targetModules: ['to_q'] })).toThrow(/already has a LoRA adapter/);
    const sd = lora.stateDict();
    const map = new Map<string, { shape: number[]; data: Float32Array }>(Object.entries(sd).map(([k, v]) => [k, { shape: v.shape, data: v.data }]));
    const key = [...map.keys()][0]!;
    const bad = new Map(map);
    bad.delete(key);
    expect(() => lora.loadStateDict(bad, 'x.safetensors')).toThrow(new RegExp(`missing keys: ${key.replace(/\./g, '\\.')}`));
    const shaped = new Map(map);
    shaped.set(key, { shape: [3, 3], data: new Float32Array(9) });
    expect(() => lora.loadStateDict(shaped, 'x.safetensors')).toThrow(/has shape \[3,3\]/);
    lora.dispose();
  });
});
