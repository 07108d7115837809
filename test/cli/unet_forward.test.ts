/** `swiftbrush unet-forward`: fixture parity through the command function and the real CLI, broadcasting, and errors. */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../src/backend.ts';
import { unetForwardFile } from '../../src/cli/unet_forward.ts';
import { parseSafetensors, readSafetensors, writeSafetensors, type StoredTensor, type TypedArray } from '../../src/models/safetensors.ts';
import { maxAbsDiff } from '../models/scheduler-fixture.ts';

import { UNET_FIXTURE_DIR } from '../fixtures.ts';
const FIXTURE = UNET_FIXTURE_DIR;
const run = promisify(execFile);

let tmp: string;
let io: Map<string, StoredTensor>;
beforeAll(async () => {
  await initBackend(process.env.SWIFTBRUSH_BACKEND ?? 'wasm');
  tmp = await mkdtemp(join(tmpdir(), 'unet-forward-'));
  io = parseSafetensors(new Uint8Array(readFileSync(join(FIXTURE, 'io.safetensors')))).tensors;
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** Writes an inputs file from the fixture's tensors, with overrides (null drops a key). */
async function inputs(name: string, over: Record<string, { shape: number[]; data: TypedArray } | null> = {}): Promise<string> {
  const t: Record<string, { shape: number[]; data: TypedArray }> = {};
  for (const k of ['sample', 'timestep', 'encoder_hidden_states']) t[k] = io.get(k)!;
  for (const [k, v] of Object.entries(over)) {
    if (v === null) delete t[k];
    else t[k] = v;
  }
  const path = join(tmp, name);
  await writeSafetensors(path, t);
  return path;
}

/** Rows b of an NCHW tensor. */
function rows(t: { shape: number[]; data: TypedArray }, b: number[]): { shape: number[]; data: Float32Array } {
  const per = t.shape.slice(1).reduce((a, c) => a * c, 1);
  const out = new Float32Array(b.length * per);
  b.forEach((r, i) => out.set((t.data as Float32Array).subarray(r * per, (r + 1) * per), i * per));
  return { shape: [b.length, ...t.shape.slice(1)], data: out };
}

describe('unet-forward', () => {
  it('matches the diffusers fixture `out` within 1e-4 (command function, the fixture io file as --inputs)', async () => {
    const out = join(tmp, 'out.safetensors');
    const r = await unetForwardFile({ unet: FIXTURE, inputs: join(FIXTURE, 'io.safetensors'), out });
    expect(r.shape).toEqual([2, 4, 16, 16]);
    const got = (await readSafetensors(out)).tensors.get('out')!;
    expect(got.dtype).toBe('F32');
    expect(got.shape).toEqual([2, 4, 16, 16]);
    expect(maxAbsDiff(got.data as Float32Array, io.get('out')!.data as Float32Array)).toBeLessThanOrEqual(1e-4);
    // chunked batches give the same numbers
    const out2 = join(tmp, 'out2.safetensors');
    await unetForwardFile({ unet: FIXTURE, inputs: join(FIXTURE, 'io.safetensors'), out: out2, batchSize: 1 });
    expect(maxAbsDiff((await readSafetensors(out2)).tensors.get('out')!.data as Float32Array, got.data as Float32Array)).toBeLessThanOrEqual(1e-5);
  });

  it('broadcasts a scalar or [1] timestep of any numeric dtype to the batch, as diffusers does', async () => {
    // Both fixture rows at t = 999: the first output row must equal the fixture's row 0.
    const want = rows(io.get('out')!, [0]).data;
    for (const [name, ts] of [
      ['scalar-f32', { shape: [], data: Float32Array.of(999) }],
      ['one-i64', { shape: [1], data: BigInt64Array.of(999n) }],
      ['one-i32', { shape: [1], data: Int32Array.of(999) }],
      ['two-f64', { shape: [2], data: Float64Array.of(999, 999) }],
    ] as [string, { shape: number[]; data: TypedArray }][]) {
      const out = join(tmp, `${name}.safetensors`);
      await unetForwardFile({ unet: FIXTURE, inputs: await inputs(`${name}-in.safetensors`, { timestep: ts }), out });
      const got = (await readSafetensors(out)).tensors.get('out')!;
      expect(got.shape, name).toEqual([2, 4, 16, 16]);
      expect(maxAbsDiff(rows(got, [0]).data, want), name).toBeLessThanOrEqual(1e-4);
    }
  });

  it('refuses missing keys and bad shapes with messages naming them', async () => {
    const out = join(tmp, 'bad.safetensors');
    const cases: [Record<string, { shape: number[]; data: TypedArray } | null>, RegExp][] = [
      [{ encoder_hidden_states: null }, /missing tensor\(s\) 'encoder_hidden_states'/],
      [{ sample: null, timestep: null }, /missing tensor\(s\) 'sample', 'timestep'/],
      [{ sample: { shape: [2, 4, 256], data: io.get('sample')!.data } }, /'sample' must be NCHW \[B,C,H,W\], got shape \[2,4,256\]/],
      [{ sample: { shape: [2, 16, 16, 4], data: io.get('sample')!.data } }, /'sample' has 16 channels .* in_channels is 4/],
      [{ timestep: { shape: [3], data: Float32Array.of(1, 2, 3) } }, /'timestep' has 3 values .* batch of 2/],
      [{ timestep: { shape: [2, 1], data: Float32Array.of(1, 2) } }, /'timestep' must be a scalar or \[B\]/],
      [{ encoder_hidden_states: rows(io.get('encoder_hidden_states')!, [0]) }, /'encoder_hidden_states' batch 1 .* 'sample' batch 2/],
      [{ encoder_hidden_states: { shape: [2, 16, 16], data: io.get('encoder_hidden_states')!.data } }, /D = 16 .* cross_attention_dim is 32/],
    ];
    for (const [i, [over, re]] of cases.entries()) {
      await expect(unetForwardFile({ unet: FIXTURE, inputs: await inputs(`bad-${i}.safetensors`, over), out }), String(re)).rejects.toThrow(re);
    }
    await expect(unetForwardFile({ unet: join(tmp, 'nowhere'), inputs: join(FIXTURE, 'io.safetensors'), out })).rejects.toThrow(/config\.json/);
  });

  it('the real CLI: writes `out` (exit 0), and exits 1 with the error on stderr', async () => {
    const out = join(tmp, 'cli.safetensors');
    const env = { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'warn' };
    const ok = await run(process.execPath, ['bin/swiftbrush.mjs', 'unet-forward', '--unet', FIXTURE, '--inputs', join(FIXTURE, 'io.safetensors'), '--out', out, '--backend', 'wasm'], { env });
    expect(ok.stdout).toMatch(/out \[2, 4, 16, 16\] float32/);
    expect(maxAbsDiff((await readSafetensors(out)).tensors.get('out')!.data as Float32Array, io.get('out')!.data as Float32Array)).toBeLessThanOrEqual(1e-4);
    const bad = await inputs('cli-bad.safetensors', { timestep: null });
    const err = await run(process.execPath, ['bin/swiftbrush.mjs', 'unet-forward', '--unet', FIXTURE, '--inputs', bad, '--out', out, '--backend', 'wasm'], { env }).catch((e: { code: number; stderr: string }) => e);
    expect((err as { code: number }).code).toBe(1);
    expect((err as { stderr: string }).stderr).toMatch(/swiftbrush: error: .*missing tensor\(s\) 'timestep'/);
  });
});
