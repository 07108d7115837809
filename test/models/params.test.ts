/**
 * Loading weights through one reused read buffer: every parameter gets the file's values in tfjs
 * layout and keeps them after the buffer has been overwritten by later reads, on each backend
 * (the native one when it is built). The layout permutations that only move size-1 axes are
 * included: a backend may make such a transpose a view of its input.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { ParamStore, type ParamKind } from '../../src/models/params.ts';
import { readSafetensors, ReadBuffer } from '../../src/models/safetensors.ts';
import { UNet2DConditionModel, WEIGHTS_NAME } from '../../src/models/unet_2d_condition.ts';
import { UNET_FIXTURE_DIR } from '../fixtures.ts';

const BACKENDS: { name: string; skip?: string }[] = [{ name: 'wasm' }, { name: 'cpu' }, { name: 'tensorflow' }];
let initial: string;

beforeAll(async () => {
  await initBackend(process.env.SWIFTBRUSH_BACKEND ?? 'wasm');
  initial = tf.getBackend();
  await import('@tensorflow/tfjs-backend-wasm');
  try {
    await import('@tensorflow/tfjs-node' as string);
  } catch (err) {
    BACKENDS[2]!.skip = `native backend not installed (npm run native:build -- tensorflow_cpu-*.whl): ${String(err instanceof Error ? err.message : err).split('\n')[0]}`;
  }
});
afterAll(async () => {
  await tf.setBackend(initial);
});

/** PyTorch-layout shapes of each kind, the size-1 cases included. */
const CASES: { kind: ParamKind; shape: number[] }[] = [
  { kind: 'conv', shape: [4, 3, 3, 2] },
  { kind: 'conv', shape: [4, 3, 1, 1] },
  { kind: 'conv', shape: [1, 1, 3, 3] },
  { kind: 'conv', shape: [4, 1, 1, 1] },
  { kind: 'conv', shape: [1, 3, 1, 1] },
  { kind: 'linear', shape: [3, 5] },
  { kind: 'linear', shape: [1, 5] },
  { kind: 'linear', shape: [5, 1] },
  { kind: 'vector', shape: [7] },
];

/** PyTorch layout → tfjs layout in plain loops (conv OIHW → HWIO, linear [out, in] → [in, out]). */
function toTfLayout(kind: ParamKind, data: Float32Array, shape: number[]): Float32Array {
  const out = new Float32Array(data.length);
  if (kind === 'conv') {
    const [O, I, KH, KW] = shape as [number, number, number, number];
    for (let o = 0; o < O; o++) for (let i = 0; i < I; i++) for (let h = 0; h < KH; h++) for (let w = 0; w < KW; w++) out[((h * KW + w) * I + i) * O + o] = data[((o * I + i) * KH + h) * KW + w]!;
  } else if (kind === 'linear') {
    const [O, I] = shape as [number, number];
    for (let o = 0; o < O; o++) for (let i = 0; i < I; i++) out[i * O + o] = data[o * I + i]!;
  } else {
    out.set(data);
  }
  return out;
}

/** Byte equality, fast on large arrays (deep equality of typed arrays is slow). */
function sameBytes(a: Float32Array, b: Float32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

describe('parameters read through a reused buffer', () => {
  for (const backend of BACKENDS) {
    it(`keep the values they were read with, in tfjs layout, on ${backend.name}`, async (t) => {
      if (backend.skip) t.skip(backend.skip);
      await tf.setBackend(backend.name);
      const values = CASES.map(({ shape }, k) => Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, i) => k * 100 + i + 0.5));
      const shared = new ReadBuffer();
      // Large enough for malloc to map it on its own: then its values are 64-byte aligned, and the
      // native backend uses them in place rather than copying them.
      shared.reserve('F32', 1 << 20);
      const store = new ParamStore(0, false, {
        read: (name) => {
          // Every read lands in the same memory, as a model load's reads do.
          const k = Number(name.slice(1));
          const view = shared.floats(values[k]!.length);
          view.set(values[k]!);
          return view;
        },
      });
      const before = tf.memory().numTensors;
      CASES.forEach(({ kind, shape }, k) => store.create(`p${k}`, kind, shape, { constant: 0 }));
      shared.floats(64).fill(-1); // the buffer is overwritten after the last read too
      expect(tf.memory().numTensors - before).toBe(CASES.length);
      CASES.forEach(({ kind, shape }, k) => {
        const v = store.get(`p${k}`);
        expect(Array.from(v.dataSync())).toEqual(Array.from(toTfLayout(kind, values[k]!, shape)));
        expect(store.torchValue(`p${k}`)).toEqual(values[k]);
      });
      store.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });

    it(`load the fixture UNet bit for bit on ${backend.name}`, async (t) => {
      if (backend.skip) t.skip(backend.skip);
      await tf.setBackend(backend.name);
      const unet = await UNet2DConditionModel.fromPretrained(UNET_FIXTURE_DIR, { trainable: false });
      try {
        const file = (await readSafetensors(join(UNET_FIXTURE_DIR, WEIGHTS_NAME))).tensors;
        const loaded = unet.stateDict();
        expect(Object.keys(loaded).sort()).toEqual([...file.keys()].sort());
        const differ = [...file].filter(([name, t]) => !sameBytes(loaded[name]!.data, t.data as Float32Array)).map(([name]) => name);
        expect(differ).toEqual([]);
      } finally {
        unet.dispose();
      }
    });
  }
});
