/**
 * Memory plans: figures from config.json and the weight headers (nothing loaded) against the
 * models actually built; an SD-2.1-sized teacher refused on wasm before loading; backend aborts
 * explained.
 */
import { closeSync, cpSync, ftruncateSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import { explainBackendError, initBackend } from '../../src/backend.ts';
import { parseUNetConfig, UNet2DConditionModel, WEIGHTS_NAME } from '../../src/models/unet_2d_condition.ts';
import { LoraAdapter } from '../../src/models/lora.ts';
import { countParams, distillMemoryPlan, inspectUNetWeights, loraParams, WASM_HEAP_BYTES } from '../../src/models/memory.ts';
import { createDistillState, OFFICIAL_DEFAULTS, planDistillation } from '../../src/operators/state.ts';
import { SCHEDULER_FIXTURE_DIR, UNET_FIXTURE_DIR } from '../fixtures.ts';

/** SD 2.1's UNet config (stabilityai/stable-diffusion-2-1, unet/config.json). */
const SD21 = {
  _class_name: 'UNet2DConditionModel', sample_size: 96, in_channels: 4, out_channels: 4, layers_per_block: 2,
  block_out_channels: [320, 640, 1280, 1280], cross_attention_dim: 1024, attention_head_dim: [5, 10, 20, 20], use_linear_projection: true,
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
};

let tmp: string;
beforeAll(async () => {
  await initBackend('wasm');
  tmp = await mkdtemp(join(tmpdir(), 'memory-test-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** A weights file with the header of `config`'s parameters (F16) and no data on disk (sparse). */
function sparseWeights(dir: string, config: Record<string, unknown>): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const p of UNet2DConditionModel.parameterSpecs(config)) {
    const bytes = p.torchShape.reduce((a, b) => a * b, 1) * 2;
    header[p.name] = { dtype: 'F16', shape: p.torchShape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const json = Buffer.from(JSON.stringify(header));
  const fd = openSync(join(dir, WEIGHTS_NAME), 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeSync(fd, len);
  writeSync(fd, json);
  ftruncateSync(fd, 8 + json.length + offset);
  closeSync(fd);
}

describe('memory plans', () => {
  it("the dry-run's figures come from the header and equal the built models' parameters (UNet and LoRA)", async () => {
    const info = await inspectUNetWeights(UNET_FIXTURE_DIR);
    const unet = await UNet2DConditionModel.fromPretrained(UNET_FIXTURE_DIR, { trainable: false });
    const lora = LoraAdapter.attach(unet, { rank: 4, alpha: 4, targetModules: ['to_q', 'to_v', 'conv1'] });
    try {
      const built = unet.parameters().reduce((a, v) => a + v.size, 0);
      expect(info.fileParams).toBe(built);
      expect(countParams(info.specs)).toBe(built);
      expect(loraParams(info.specs, 4, ['to_q', 'to_v', 'conv1'])).toBe(lora.parameters().reduce((a, v) => a + v.size, 0));
      const { plan, params, fileParams } = await planDistillation(UNET_FIXTURE_DIR, { ...OFFICIAL_DEFAULTS, batchSize: 2 }, 8);
      expect(params).toBe(built);
      expect(fileParams).toBe(built);
      const bytes = Object.fromEntries(plan.items.map((i) => [i.what, i.bytes]));
      expect(bytes.teacher).toBe(4 * built);
      expect(bytes.student).toBe(4 * built);
      expect(bytes['student EMA']).toBe(4 * built);
      expect(bytes['Adam moments (student)']).toBe(8 * built);
      expect(bytes['activations (estimate)']).toBeGreaterThan(0);
    } finally {
      lora.dispose();
      unet.dispose();
    }
  });

  it('gradient accumulation adds a second gradient set; EMA off drops the EMA line', () => {
    const specs = UNet2DConditionModel.parameterSpecs(SD21);
    const base = { specs, config: parseUNetConfig(SD21), batchSize: 1, gradAccum: 1, emaDecay: 0, loraRank: 64, loraTargets: ['to_q', 'to_v'], tokens: 77 };
    const one = distillMemoryPlan(base);
    const two = distillMemoryPlan({ ...base, gradAccum: 4 });
    expect(countParams(specs)).toBe(865_910_724); // diffusers' count for SD 2.1
    expect(one.items.some((i) => i.what === 'student EMA')).toBe(false);
    expect(two.total - one.total).toBe(4 * 865_910_724);
  });

  it('an SD-2.1-sized teacher is refused on wasm before anything is loaded, naming the native backend', async () => {
    const pipe = join(tmp, 'sd21');
    sparseWeights(join(pipe, 'unet'), SD21);
    cpSync(SCHEDULER_FIXTURE_DIR, join(pipe, 'scheduler'), { recursive: true });
    const before = tf.memory().numTensors;
    const { plan } = await planDistillation(pipe, OFFICIAL_DEFAULTS, 77);
    expect(plan.total).toBeGreaterThan(WASM_HEAP_BYTES);
    await expect(createDistillState({ teacherDir: pipe, nullEmbeds: new Float32Array(77 * 1024), embedShape: [77, 1024], config: { ...OFFICIAL_DEFAULTS, batchSize: 1 } })).rejects.toThrow(
      /865,910,724 parameters\) needs about [\d.]+ GiB, more than the wasm backend's 4 GiB heap: use the native backend \(build it once with `npm run native:build`.*GPU host/s,
    );
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('backend aborts', () => {
  it('"memory access out of bounds" and "Aborted()" become errors that say what ran out and where to go', () => {
    for (const raw of ['RuntimeError: memory access out of bounds', 'Aborted(). Build with -sASSERTIONS for more info.']) {
      const err = explainBackendError(new Error(raw)) as Error;
      expect(err.message).toMatch(/wasm backend most likely ran out of its 4 GiB heap/);
      expect(err.message).toMatch(/npm run native:build/);
      expect(err.message).toContain(raw.split('\n')[0]);
    }
    const other = new Error('file not found');
    expect(explainBackendError(other)).toBe(other);
  });
});
