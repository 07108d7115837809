/**
 * safetensors I/O: F16/BF16 widening against PyTorch's own `.float()`, streamed write/read round
 * trips, positioned reads, diffusers' sharded + fp16-variant checkpoints (written by
 * `save_pretrained`), and errors that name the file and the key.
 */
import { closeSync, openSync, writeSync, ftruncateSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import type { Tensor3D, Tensor4D } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { ReadBuffer, readSafetensors, readSafetensorsHeader, SafetensorsFileReader, serializeSafetensors, writeSafetensors, writeSafetensorsStreaming } from '../../src/models/safetensors.ts';
import { variantName, WeightFiles } from '../../src/models/weights.ts';
import { UNet2DConditionModel, WEIGHTS_NAME } from '../../src/models/unet_2d_condition.ts';
import { FIXTURES, UNET_FIXTURE_DIR } from '../fixtures.ts';
import { useTempDir } from '../temp_dir.ts';

const DTYPES = join(FIXTURES, 'safetensors-dtypes', 'dtypes.safetensors');
const SHARDED = join(FIXTURES, 'diffusers-sharded-fp16');

const tmp = useTempDir('safetensors-test-');
beforeAll(async () => {
  await initBackend(process.env.SWIFTBRUSH_BACKEND ?? 'wasm');
});

/** Bit-exact equality, NaN included (as bit patterns are compared after widening). */
function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i] && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) return false;
  return true;
}

describe('dtype widening', () => {
  it('every float16 value widens to exactly what PyTorch gives, and bfloat16 likewise', async () => {
    const f = (await readSafetensors(DTYPES)).tensors;
    expect(f.get('f16')!.dtype).toBe('F16');
    expect(f.get('f16')!.data).toBeInstanceOf(Float32Array);
    expect(f.get('f16')!.data.length).toBe(65536);
    expect(sameBits(f.get('f16')!.data as Float32Array, f.get('f16_as_f32')!.data as Float32Array)).toBe(true);
    expect(f.get('bf16')!.dtype).toBe('BF16');
    expect(f.get('bf16')!.shape).toEqual([64, 64]);
    expect(sameBits(f.get('bf16')!.data as Float32Array, f.get('bf16_as_f32')!.data as Float32Array)).toBe(true);
    // A few values by hand: 1, -2, the smallest subnormal, the largest half, infinity.
    const half = f.get('f16')!.data as Float32Array;
    expect([half[0x3c00], half[0xc000], half[0x0001], half[0x7bff], half[0x7c00]]).toEqual([1, -2, 2 ** -24, 65504, Infinity]);
  });
});

describe('reads into a reused buffer', () => {
  it('give what fresh reads give, for every dtype (all 65,536 halves included), each read reusing the same memory', async () => {
    const reader = SafetensorsFileReader.open(DTYPES);
    try {
      const buffer = new ReadBuffer();
      for (const e of reader.entries.values()) buffer.reserve(e.dtype, e.shape.reduce((a, b) => a * b, 1));
      let floatMemory: ArrayBufferLike | undefined;
      for (const name of reader.entries.keys()) {
        const fresh = reader.read(name);
        const reused = reader.read(name, buffer);
        expect(reused.dtype, name).toBe(fresh.dtype);
        expect(reused.shape, name).toEqual(fresh.shape);
        expect(reused.data.constructor, name).toBe(fresh.data.constructor);
        if (fresh.data instanceof Float32Array) expect(sameBits(reused.data as Float32Array, fresh.data), name).toBe(true);
        else expect(reused.data, name).toEqual(fresh.data);
        if (reused.data instanceof Float32Array) {
          floatMemory ??= reused.data.buffer;
          expect(reused.data.buffer === floatMemory, name).toBe(true);
        }
      }
      expect(floatMemory).toBeDefined();
    } finally {
      reader.close();
    }
  });
});

describe('streamed reads and writes', () => {
  it('write then read round-trips every dtype, shape and the metadata; the header is what the writer declared', async () => {
    const path = join(tmp.path, 'round.safetensors');
    const tensors = {
      b: { shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6.5]) },
      a: { shape: [4], data: Int32Array.from([1, -2, 3, 1 << 30]) },
      c: { shape: [], data: Float64Array.from([Math.PI]) },
      d: { shape: [3], data: BigInt64Array.from([1n, -5n, 1n << 40n]) },
      e: { shape: [0, 2], data: new Float32Array(0) },
    };
    await writeSafetensors(path, tensors, { format: 'pt' });
    const back = await readSafetensors(path);
    expect(back.metadata).toEqual({ format: 'pt' });
    for (const [k, v] of Object.entries(tensors)) {
      expect(back.tensors.get(k)!.shape).toEqual(v.shape);
      expect(Array.from(back.tensors.get(k)!.data as ArrayLike<unknown>)).toEqual(Array.from(v.data as ArrayLike<unknown>));
    }
    // Identical bytes to the in-memory serialiser (which the Python library's layout tests cover).
    const { readFileSync } = await import('node:fs');
    expect(new Uint8Array(readFileSync(path))).toEqual(serializeSafetensors(tensors, { format: 'pt' }));
    const header = readSafetensorsHeader(path);
    expect([...header.entries.keys()]).toEqual(['a', 'b', 'c', 'd', 'e']);
    expect(header.entries.get('b')!.dtype).toBe('F32');
  });

  it('the streaming writer asks for one tensor at a time, in file order, and leaves no file when a producer fails', async () => {
    const path = join(tmp.path, 'streamed.safetensors');
    const asked: string[] = [];
    writeSafetensorsStreaming(path, { y: { shape: [2], dtype: 'F32' }, x: { shape: [1], dtype: 'F32' } }, (name) => {
      asked.push(name);
      return name === 'x' ? Float32Array.from([7]) : Float32Array.from([8, 9]);
    });
    expect(asked).toEqual(['x', 'y']);
    expect(Array.from((await readSafetensors(path)).tensors.get('y')!.data as Float32Array)).toEqual([8, 9]);
    const failing = join(tmp.path, 'failing.safetensors');
    expect(() => writeSafetensorsStreaming(failing, { x: { shape: [3], dtype: 'F32' } }, () => Float32Array.from([1]))).toThrow(/failing\.safetensors: tensor 'x': shape \[3\] holds 3 values, data has 1/);
    const { readdirSync } = await import('node:fs');
    expect(readdirSync(tmp.path).filter((n) => n.includes('failing'))).toEqual([]);
  });

  it('reads tensors of a sparse file whose data lies beyond 2 GiB, without reading the rest', () => {
    const path = join(tmp.path, 'big.safetensors');
    const header = JSON.stringify({ gap: { dtype: 'U8', shape: [2 ** 31 + 8], data_offsets: [0, 2 ** 31 + 8] }, tail: { dtype: 'F32', shape: [2], data_offsets: [2 ** 31 + 8, 2 ** 31 + 16] } });
    const padded = header + ' '.repeat((8 - ((header.length + 8) % 8)) % 8);
    const fd = openSync(path, 'w');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(padded.length));
    writeSync(fd, len, 0, 8, 0);
    writeSync(fd, Buffer.from(padded), 0, padded.length, 8);
    const tailAt = 8 + padded.length + 2 ** 31 + 8;
    writeSync(fd, Buffer.from(Float32Array.from([1.5, -3]).buffer), 0, 8, tailAt);
    closeSync(fd);
    const reader = SafetensorsFileReader.open(path);
    try {
      expect(Array.from(reader.read('tail').data as Float32Array)).toEqual([1.5, -3]);
      expect(reader.entries.get('gap')!.end - reader.entries.get('gap')!.begin).toBe(2 ** 31 + 8);
    } finally {
      reader.close();
      ftruncateSync(openSync(path, 'r+'), 0);
    }
  });

  it('errors name the file (and the tensor)', async () => {
    const missing = join(tmp.path, 'nope.safetensors');
    await expect(readSafetensors(missing)).rejects.toThrow(new RegExp(`${missing}: cannot open`));
    const truncated = join(tmp.path, 'truncated.safetensors');
    const bytes = serializeSafetensors({ w: { shape: [4], data: new Float32Array(4) } });
    writeFileSync(truncated, bytes.subarray(0, bytes.length - 4));
    await expect(readSafetensors(truncated)).rejects.toThrow(new RegExp(`${truncated}: tensor 'w': data runs past the end of the file`));
    const garbage = join(tmp.path, 'garbage.safetensors');
    await writeFile(garbage, Buffer.from('0800000000000000{"a":1}!', 'hex'));
    await expect(readSafetensors(garbage)).rejects.toThrow(/garbage\.safetensors/);
    const badDtype = join(tmp.path, 'dtype.safetensors');
    const json = '{"w":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}';
    const head = Buffer.alloc(8);
    head.writeBigUInt64LE(BigInt(json.length));
    await writeFile(badDtype, Buffer.concat([head, Buffer.from(json), Buffer.alloc(1)]));
    await expect(readSafetensors(badDtype)).rejects.toThrow(new RegExp(`${badDtype}: tensor 'w': unsupported dtype 'F8_E4M3'`));
  });
});

describe("diffusers' weight files: variants and shards", () => {
  it("names variants as diffusers' _add_variant does", () => {
    expect(variantName('diffusion_pytorch_model.safetensors', 'fp16')).toBe('diffusion_pytorch_model.fp16.safetensors');
    expect(variantName('diffusion_pytorch_model.safetensors.index.json', 'fp16')).toBe('diffusion_pytorch_model.safetensors.fp16.index.json');
    expect(variantName('diffusion_pytorch_model.safetensors')).toBe('diffusion_pytorch_model.safetensors');
  });

  it('loads a sharded fp16-variant checkpoint written by save_pretrained and matches diffusers within 1e-4', async () => {
    const files = WeightFiles.open(SHARDED, WEIGHTS_NAME, 'fp16');
    expect(files.files.length).toBe(5);
    files.close();
    const unet = await UNet2DConditionModel.fromPretrained(SHARDED, { trainable: false, variant: 'fp16' });
    try {
      const io = (await readSafetensors(join(SHARDED, 'io.safetensors'))).tensors;
      const x = io.get('sample')!;
      const ctx = io.get('encoder_hidden_states')!;
      const got = tf.tidy(() => {
        const sample = tf.transpose(tf.tensor4d(x.data as Float32Array, x.shape as [number, number, number, number]), [0, 2, 3, 1]) as Tensor4D;
        const y = unet.forward(sample, Array.from(io.get('timestep')!.data as BigInt64Array, Number), tf.tensor3d(ctx.data as Float32Array, ctx.shape as [number, number, number]) as Tensor3D);
        return tf.transpose(y, [0, 3, 1, 2]).dataSync() as Float32Array;
      });
      const want = io.get('out')!.data as Float32Array;
      let worst = 0;
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
      expect(worst).toBeLessThanOrEqual(1e-4);
    } finally {
      unet.dispose();
    }
  });

  it('without --variant, or with an absent one, the error names the folder and the variants that are there', async () => {
    await expect(UNet2DConditionModel.fromPretrained(SHARDED)).rejects.toThrow(/diffusers-sharded-fp16: no weights: neither diffusion_pytorch_model\.safetensors nor diffusion_pytorch_model\.safetensors\.index\.json is there \(found .*: use --variant fp16\)/);
    await expect(UNet2DConditionModel.fromPretrained(UNET_FIXTURE_DIR, { variant: 'fp16' })).rejects.toThrow(/no weights: neither diffusion_pytorch_model\.fp16\.safetensors .*use no --variant/);
  });

  it('a shard index that names a missing shard or a key the shard lacks is refused, naming the index', async () => {
    const dir = join(tmp.path, 'sharded');
    const a = { 'x.weight': { shape: [2], data: Float32Array.from([1, 2]) } };
    await writeSafetensors(join(dir, 'diffusion_pytorch_model-00001-of-00002.safetensors'), a);
    const index = join(dir, 'diffusion_pytorch_model.safetensors.index.json');
    await writeFile(index, JSON.stringify({ metadata: {}, weight_map: { 'x.weight': 'diffusion_pytorch_model-00001-of-00002.safetensors', 'y.weight': 'diffusion_pytorch_model-00002-of-00002.safetensors' } }));
    expect(() => WeightFiles.open(dir, WEIGHTS_NAME)).toThrow(new RegExp(`${index}: names shard diffusion_pytorch_model-00002-of-00002\\.safetensors, which is not in`));
    await writeSafetensors(join(dir, 'diffusion_pytorch_model-00002-of-00002.safetensors'), { 'z.weight': { shape: [1], data: Float32Array.from([3]) } });
    expect(() => WeightFiles.open(dir, WEIGHTS_NAME)).toThrow(/key 'y\.weight' should be in diffusion_pytorch_model-00002-of-00002\.safetensors, which has no such tensor/);
    await writeFile(index, JSON.stringify({ weight_map: { 'x.weight': 'diffusion_pytorch_model-00001-of-00002.safetensors', 'z.weight': 'diffusion_pytorch_model-00002-of-00002.safetensors' } }));
    const files = WeightFiles.open(dir, WEIGHTS_NAME);
    expect(Array.from(files.read('z.weight').data as Float32Array)).toEqual([3]);
    files.close();
  });

  it('a weights file that does not match the config names the file and the keys', async () => {
    const dir = join(tmp.path, 'mismatch');
    const { cpSync } = await import('node:fs');
    cpSync(UNET_FIXTURE_DIR, dir, { recursive: true });
    const file = join(dir, WEIGHTS_NAME);
    const tensors = (await readSafetensors(file)).tensors;
    tensors.delete('conv_in.bias');
    await writeSafetensors(file, Object.fromEntries([...tensors].map(([k, v]) => [k, { shape: v.shape, data: v.data }])));
    await expect(UNet2DConditionModel.fromPretrained(dir)).rejects.toThrow(new RegExp(`${file} does not match the UNet config:\\n  missing keys \\(1\\): conv_in\\.bias`));
  });

  it('a loaded model leaves no tensor behind but its variables, and a save streams back the same bytes', async () => {
    const before = tf.memory().numTensors;
    const unet = await UNet2DConditionModel.fromPretrained(UNET_FIXTURE_DIR);
    expect(tf.memory().numTensors - before).toBe(unet.store.params.size);
    const out = join(tmp.path, 'saved');
    await unet.savePretrained(out);
    unet.dispose();
    expect(tf.memory().numTensors).toBe(before);
    const a = (await readSafetensors(join(UNET_FIXTURE_DIR, WEIGHTS_NAME))).tensors;
    const b = (await readSafetensors(join(out, WEIGHTS_NAME))).tensors;
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [k, v] of a) expect(b.get(k)!.data).toEqual(v.data);
  });
});
