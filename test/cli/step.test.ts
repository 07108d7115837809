/**
 * `swiftbrush step`: one micro-step of the stream's operators, from given draws, against the same
 * micro-step computed by the official SwiftBrush algorithm in PyTorch + diffusers (float64): every
 * intermediate, both losses and every gradient before clipping. Two UNets: the diffusers fixture
 * (2 levels, conv projection) and a second one (3 levels, linear projection, 3 channels, per-block
 * heads and transformer depths, cross-attention width 20).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../src/backend.ts';
import { swiftbrushStepFile } from '../../src/cli/step.ts';
import { readSafetensors, writeSafetensors, type StoredTensor, type TypedArray } from '../../src/models/safetensors.ts';
import { FIXTURES } from '../fixtures.ts';
import { useTempDir } from '../temp_dir.ts';

const run = promisify(execFile);

/** Per tensor: max |got − want| ≤ REL · max |want| + ABS; all student gradients together: relative L2 ≤ L2. */
const REL = 1e-3;
const ABS = 1e-7;
const L2 = 1e-3;

interface KeyError {
  key: string;
  maxDiff: number;
  tolerance: number;
}

/** Compares every expected key; returns the per-key errors (worst first), missing / extra keys and the student gradients' relative L2 error. */
export function compareStep(got: Map<string, StoredTensor>, want: Map<string, StoredTensor>) {
  const missing = [...want.keys()].filter((k) => !got.has(k));
  const extra = [...got.keys()].filter((k) => !want.has(k));
  const errors: KeyError[] = [];
  let diff2 = 0;
  let norm2 = 0;
  for (const [key, w] of want) {
    const g = got.get(key);
    if (!g) continue;
    if (g.shape.join(',') !== w.shape.join(',')) {
      errors.push({ key: `${key} (shape [${g.shape}], expected [${w.shape}])`, maxDiff: Infinity, tolerance: 0 });
      continue;
    }
    const a = g.data as Float32Array;
    const b = w.data as Float32Array;
    let maxDiff = 0;
    let maxAbs = 0;
    for (let i = 0; i < b.length; i++) {
      const d = Math.abs(a[i]! - b[i]!);
      maxDiff = d > maxDiff || Number.isNaN(d) ? d : maxDiff;
      maxAbs = Math.max(maxAbs, Math.abs(b[i]!));
      if (key.startsWith('grad_student.')) {
        diff2 += (a[i]! - b[i]!) ** 2;
        norm2 += b[i]! ** 2;
      }
    }
    errors.push({ key, maxDiff, tolerance: REL * maxAbs + ABS });
  }
  const badness = (e: KeyError) => (Number.isNaN(e.maxDiff) ? Infinity : e.maxDiff / e.tolerance);
  errors.sort((x, y) => badness(y) - badness(x));
  return { missing, extra, errors, studentRelL2: Math.sqrt(diff2 / norm2) };
}

/** Fails with the worst keys listed. */
function expectMatch(report: ReturnType<typeof compareStep>, name: string): void {
  const failing = report.errors.filter((e) => !(e.maxDiff <= e.tolerance));
  const worst = report.errors.slice(0, 8).map((e) => `  ${e.key}: max diff ${e.maxDiff.toExponential(2)} (tolerance ${e.tolerance.toExponential(2)}, ratio ${(e.maxDiff / e.tolerance).toFixed(3)})`).join('\n');
  const summary = `${name}: ${failing.length} of ${report.errors.length} keys out of tolerance; student gradients' relative L2 ${report.studentRelL2.toExponential(2)} (≤ ${L2}); worst keys:\n${worst}`;
  expect(report.missing, `${name}: keys missing from the output`).toEqual([]);
  expect(report.extra, `${name}: keys the reference does not have`).toEqual([]);
  expect(failing.map((e) => e.key), summary).toEqual([]);
  expect(report.studentRelL2, summary).toBeLessThanOrEqual(L2);
}

const tmp = useTempDir('sb-step-');
beforeAll(async () => {
  await initBackend(process.env.SWIFTBRUSH_BACKEND ?? 'wasm');
});

const fixture = (name: string) => {
  const dir = join(FIXTURES, name);
  return { teacher: join(dir, 'teacher'), lora: join(dir, 'lora'), draws: join(dir, 'draws.safetensors'), expected: join(dir, 'expected.safetensors') };
};

describe('swiftbrush step matches the official algorithm (PyTorch + diffusers, float64) gradient for gradient', () => {
  for (const name of ['swiftbrush-golden-step', 'swiftbrush-golden-step-3level']) {
    it(`${name}: every intermediate, both losses, every student and LoRA gradient before clipping`, async () => {
      const f = fixture(name);
      const out = join(tmp.path, `${name}.safetensors`);
      const r = await swiftbrushStepFile({ teacher: f.teacher, lora: f.lora, draws: f.draws, out });
      const got = (await readSafetensors(out)).tensors;
      const want = (await readSafetensors(f.expected)).tensors;
      expect([...got.values()].every((t) => t.dtype === 'F32')).toBe(true);
      expect(r.keys).toEqual([...got.keys()].sort());
      const report = compareStep(got, want);
      expectMatch(report, name);
      expect([...want.keys()].filter((k) => k.startsWith('grad_lora.')).length).toBeGreaterThan(0);
      expect(report.errors.length).toBe(want.size);
    });
  }

  it('the comparison catches a wrong step: a flipped score gradient fails it', async () => {
    const f = fixture('swiftbrush-golden-step');
    const want = (await readSafetensors(f.expected)).tensors;
    const flipped = new Map(want);
    const g = want.get('score_gradient')!;
    flipped.set('score_gradient', { ...g, data: (g.data as Float32Array).map((v) => -v) });
    for (const [k, t] of want) if (k.startsWith('grad_student.')) flipped.set(k, { ...t, data: (t.data as Float32Array).map((v) => -v) });
    const report = compareStep(flipped, want);
    expect(report.errors[0]!.maxDiff).toBeGreaterThan(report.errors[0]!.tolerance);
    expect(report.studentRelL2).toBeCloseTo(2, 5);
  });
});

describe('swiftbrush step: bad draws files', () => {
  const f = fixture('swiftbrush-golden-step');
  /** A draws file from the fixture's, with overrides (null drops a key). */
  async function draws(file: string, over: Record<string, { shape: number[]; data: TypedArray } | null>): Promise<string> {
    const base = (await readSafetensors(f.draws)).tensors;
    const t: Record<string, { shape: number[]; data: TypedArray }> = {};
    for (const [k, v] of base) t[k] = { shape: v.shape, data: v.data };
    for (const [k, v] of Object.entries(over)) {
      if (v === null) delete t[k];
      else t[k] = v;
    }
    const path = join(tmp.path, file);
    await writeSafetensors(path, t);
    return path;
  }

  it('refuses missing keys, bad shapes and out-of-range timesteps, naming the file and the key', async () => {
    const out = join(tmp.path, 'bad.safetensors');
    const cases: [Record<string, { shape: number[]; data: TypedArray } | null>, RegExp][] = [
      [{ lora_noise: null }, /missing draw\(s\) 'lora_noise'/],
      [{ latents: { shape: [2, 4, 8, 8], data: new Float32Array(2 * 4 * 64) } }, /'latents' has shape \[2,4,8,8\] \(NCHW\), but the step needs \[2,4,16,16\]/],
      [{ noise: { shape: [2, 16, 16, 4], data: new Float32Array(2 * 4 * 256) } }, /'noise' has shape \[2,16,16,4\] \(NCHW\), but the step needs \[2,4,16,16\]/],
      [{ timesteps: { shape: [3], data: BigInt64Array.of(1n, 2n, 3n) } }, /'timesteps' has 3 values for a batch of 2/],
      [{ lora_timesteps: { shape: [2], data: BigInt64Array.of(5n, 1000n) } }, /'lora_timesteps' holds 1000, expected integers in \[0, 999\]/],
      [{ timesteps: { shape: [2], data: Float32Array.of(37.5, 850) } }, /'timesteps' holds 37.5, expected integers in \[20, 980\]/],
      [{ lora_null: { shape: [1], data: BigInt64Array.of(2n) } }, /'lora_null' must be 0 or 1, got 2/],
      [{ guidance_scale: { shape: [2], data: Float32Array.of(4.5, 4.5) } }, /'guidance_scale' must hold one value/],
      [{ null_embeds: { shape: [8, 16], data: new Float32Array(128) } }, /'null_embeds' has shape \[8,16\], expected \[L, D\] = \[8,32\]/],
      [{ prompt_embeds: { shape: [2, 8, 16], data: new Float32Array(256) }, null_embeds: { shape: [8, 16], data: new Float32Array(128) } }, /'prompt_embeds' has D = 16 .* cross_attention_dim is 32/],
    ];
    for (const [i, [over, re]] of cases.entries()) {
      const path = await draws(`bad-${i}.safetensors`, over);
      const err = await swiftbrushStepFile({ teacher: f.teacher, lora: f.lora, draws: path, out }).then(() => null, (e: Error) => e);
      expect(err?.message, String(re)).toMatch(re);
      expect(err!.message, String(re)).toContain(path);
    }
    await expect(swiftbrushStepFile({ teacher: f.teacher, lora: join(tmp.path, 'no-lora'), draws: f.draws, out })).rejects.toThrow(/no-lora\/adapter_config\.json: cannot read the LoRA's PEFT config/);
  });

  it('the real CLI: writes the tensors (exit 0) and nothing but --out', async () => {
    const env = { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'warn' };
    const dir = await mkdtemp(join(tmp.path, 'cli-'));
    const out = join(dir, 'cli.safetensors');
    const bin = join(import.meta.dirname, '..', '..', 'bin', 'swiftbrush.mjs');
    const ok = await run(process.execPath, [bin, 'step', '--backend', 'wasm', '--teacher', f.teacher, '--lora', f.lora, '--draws', f.draws, '--out', out], { env, cwd: dir });
    expect(ok.stdout).toMatch(/cli\.safetensors: \d+ tensors \(loss_vsd [\d.e-]+, loss_lora [\d.e-]+\)/);
    expect((await readSafetensors(out)).tensors.size).toBe((await readSafetensors(f.expected)).tensors.size);
    expect(await readdir(dir)).toEqual(['cli.safetensors']);
  });
});
