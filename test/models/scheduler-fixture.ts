/** Test helper: a tiny safetensors parse for the scheduler fixture (NCHW float32 → NHWC). */
import { readFileSync } from 'node:fs';

import { SCHEDULER_FIXTURE_DIR } from '../fixtures.ts';
export const SCHEDULER_FIXTURE = SCHEDULER_FIXTURE_DIR;

export interface FixtureTensor {
  dtype: string;
  shape: number[];
  data: Float32Array | Int32Array;
}

export function readFixture(path = `${SCHEDULER_FIXTURE}/schedule.safetensors`): Map<string, FixtureTensor> {
  const bytes = readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, FixtureTensor>();
  for (const [name, h] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [s, e] = h.data_offsets;
    const buf = bytes.buffer.slice(bytes.byteOffset + 8 + n + s, bytes.byteOffset + 8 + n + e);
    if (h.dtype === 'F32') out.set(name, { dtype: h.dtype, shape: h.shape, data: new Float32Array(buf) });
    else if (h.dtype === 'I32') out.set(name, { dtype: h.dtype, shape: h.shape, data: new Int32Array(buf) });
    else if (h.dtype === 'I64') out.set(name, { dtype: h.dtype, shape: h.shape, data: Int32Array.from(new BigInt64Array(buf), Number) });
    else throw new Error(`unexpected dtype ${h.dtype} for ${name}`);
  }
  return out;
}

/** NCHW [B,C,H,W] → NHWC [B,H,W,C]. */
export function nchwToNhwc(data: Float32Array, shape: number[]): { data: Float32Array; shape: [number, number, number, number] } {
  const [B, C, H, W] = shape as [number, number, number, number];
  const out = new Float32Array(data.length);
  for (let b = 0; b < B; b++)
    for (let c = 0; c < C; c++)
      for (let y = 0; y < H; y++)
        for (let x = 0; x < W; x++) out[((b * H + y) * W + x) * C + c] = data[((b * C + c) * H + y) * W + x]!;
  return { data: out, shape: [B, H, W, C] };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
