/**
 * Data-parallel replicas (--replicas): the window's micro-batches computed on worker threads give
 * the weights of the same window computed sequentially (up to float summation order), the export
 * and checkpoints look the same, and bad settings are refused by name.
 */
import { describe, expect, it, beforeAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors } from '../../src/models/safetensors.ts';
import { EMBEDDINGS, makeTinyTeacher, maxAbsDiff } from '../operators/helpers.ts';

const BIN = fileURLToPath(new URL('../../bin/swiftbrush.mjs', import.meta.url));

function distill(teacher: string, out: string, extra: string[]) {
  const argv = [BIN, 'distill', '--backend', 'wasm', '--teacher', teacher, '--embeddings', EMBEDDINGS, '--out', out, '--steps', '3', '--batch-size', '2', '--seed', '7', '--checkpoint-every', '2', '--validation-every', '0', '--lora-rank', '2', '--lora-alpha', '4', '--student-lr', '1e-3', '--lora-lr', '1e-2', '--ema-decay', '0.9', ...extra];
  return spawnSync(process.execPath, argv, { encoding: 'utf8', env: { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'warn' } });
}

async function weights(dir: string) {
  const student = (await readSafetensors(join(dir, 'student', 'unet', 'diffusion_pytorch_model.safetensors'))).tensors;
  const lora = (await readSafetensors(join(dir, 'lora', 'adapter_model.safetensors'))).tensors;
  return new Map([...[...student].map(([k, v]) => [`student/${k}`, v.data as Float32Array] as const), ...[...lora].map(([k, v]) => [`lora/${k}`, v.data as Float32Array] as const)]);
}

describe('--replicas (data-parallel worker threads)', () => {
  let teacher: string;
  beforeAll(async () => {
    teacher = await makeTinyTeacher(4);
  });

  it('3 replicas over windows of 3 micro-batches reach the sequential run\'s weights (≤ 1e-6; also on LoRA-only steps), and the weights moved', { timeout: 600_000 }, async () => {
    const sequential = await mkdtemp(join(tmpdir(), 'sb-seq-'));
    const parallel = await mkdtemp(join(tmpdir(), 'sb-par-'));
    // --student-update-every 2: step 1 updates both models, steps 0 and 2 only the LoRA teacher.
    const a = distill(teacher, sequential, ['--grad-accum', '3', '--student-update-every', '2']);
    expect(a.status, a.stderr).toBe(0);
    const b = distill(teacher, parallel, ['--grad-accum', '3', '--student-update-every', '2', '--replicas', '3']);
    expect(b.status, b.stderr).toBe(0);
    const wa = await weights(sequential);
    const wb = await weights(parallel);
    expect([...wb.keys()].sort()).toEqual([...wa.keys()].sort());
    let worst = 0;
    for (const [k, v] of wa) worst = Math.max(worst, maxAbsDiff(v, wb.get(k)!));
    expect(worst).toBeLessThanOrEqual(1e-6);
    // Not trivially equal: training moved the LoRA away from zero.
    const loraB = [...wa].filter(([k]) => k.startsWith('lora/') && k.includes('lora_B'));
    expect(loraB.some(([, v]) => v.some((x) => x !== 0))).toBe(true);
    // Same metrics count and optimiser-step numbering as the sequential run.
    const lines = async (dir: string) => (await readFile(join(dir, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l).step);
    expect(await lines(parallel)).toEqual(await lines(sequential));
  });

  it('refuses more replicas than micro-batches per window, by option name', async () => {
    const out = await mkdtemp(join(tmpdir(), 'sb-bad-'));
    const r = distill(teacher, out, ['--grad-accum', '1', '--replicas', '2']);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/replicas \(2\) needs gradAccum ≥ replicas/);
  });
});
