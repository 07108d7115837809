/**
 * Data-parallel replicas (--replicas): the window's micro-batches computed on worker threads give
 * the weights of the same window computed sequentially (up to float summation order), the export
 * and checkpoints look the same, and bad settings are refused by name.
 */
import { describe, expect, it, beforeAll } from 'vitest';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTinyTeacher, exportedWeights, worstWeightDiff, runCli, tinyDistillArgs } from '../operators/helpers.ts';

function distill(teacher: string, out: string, extra: string[]) {
  return runCli(tinyDistillArgs(teacher, out, ['--steps', '3', '--seed', '7', '--checkpoint-every', '2', '--lora-lr', '1e-2', ...extra]));
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
    const wa = await exportedWeights(sequential);
    const wb = await exportedWeights(parallel);
    expect(worstWeightDiff(wa, wb)).toBeLessThanOrEqual(1e-6);
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
