import { describe, expect, it } from 'vitest';
import { initBackend } from '../../src/backend.ts';
import { bootstrapMedianCi, runBench } from '../../bench/step.ts';
import { EMBEDDINGS, makeTinyTeacher } from '../operators/helpers.ts';

describe('swiftbrush bench (library)', () => {
  it('reports stream and fused step times, operator shares, UNet times, RSS, a zero tensor drift, and the data-parallel step', async () => {
    await initBackend('wasm');
    const teacher = await makeTinyTeacher();
    const r = await runBench({ unet: teacher, batchSize: 2, steps: 2, warmup: 1, round: 1, unetReps: 1, embeddings: EMBEDDINGS, config: { loraRank: 2, loraAlpha: 4 }, replicas: 2 });
    expect(r.backend).toBe('wasm');
    for (const key of ['step_s', 'fused_step_s', 'forward_ms', 'forward_backward_ms', 'peak_rss_mib'] as const) expect(r[key]).toBeGreaterThan(0);
    expect(Object.keys(r.operator_ms)).toEqual(['studentForward', 'noiseAtT', 'teacherCFG', 'vsdUpdate', 'noiseAtTPrime', 'loraUpdate', 'emaUpdate']);
    expect(Object.values(r.operator_share).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    expect(r.tensor_drift).toBe(0);
    // Overhead: the median of the per-pair ratios, inside its own bootstrap interval.
    expect(r.stream_overhead_ci95[0]).toBeLessThanOrEqual(r.stream_overhead);
    expect(r.stream_overhead_ci95[1]).toBeGreaterThanOrEqual(r.stream_overhead);
    // --replicas 2: the same step as 2 micro-batches of 1 over two threads, timed alongside.
    expect(r.data_parallel).toMatchObject({ replicas: 2, micro_batch: 1 });
    expect(r.data_parallel!.step_s).toBeGreaterThan(0);
    expect(r.data_parallel!.speedup).toBeCloseTo(r.step_s / r.data_parallel!.step_s, 9);
  }, 240_000);

  it('bootstraps the median: a constant sample has a point interval, a wide one a wide interval', () => {
    expect(bootstrapMedianCi([0.02, 0.02, 0.02, 0.02])).toEqual([0.02, 0.02]);
    const spread = Array.from({ length: 21 }, (_, i) => (i - 10) / 100); // -0.10 … 0.10, median 0
    const [lo, hi] = bootstrapMedianCi(spread);
    expect(lo).toBeLessThan(0);
    expect(hi).toBeGreaterThan(0);
    expect(lo).toBeGreaterThanOrEqual(-0.1);
    expect(hi).toBeLessThanOrEqual(0.1);
  });
});
