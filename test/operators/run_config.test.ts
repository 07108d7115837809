/**
 * runDistillation refuses a bad option by name before it reads any file (so a typo in --config
 * fails at once, not after the teacher and the Parquet are loaded).
 */
import { describe, expect, it } from 'vitest';
import { runDistillation } from '../../src/operators/run.ts';
import type { DistillConfig } from '../../src/operators/state.ts';

const run = (config: Partial<DistillConfig>) =>
  runDistillation({ teacher: '/nonexistent/teacher', embeddings: '/nonexistent/e.parquet', out: '/nonexistent/out', steps: 1, config });

describe('runDistillation option checks', () => {
  it.each([
    [{ vsdWeighting: 'dnd' as never }, /vsdWeighting must be 'official' or 'dmd', got "dnd"/],
    [{ loraLossWeighting: 'v' as never }, /loraLossWeighting must be 'official' or 'epsilon', got "v"/],
    [{ lrScheduler: 'step' as never }, /lrScheduler must be 'constant', 'linear' or 'cosine', got "step"/],
    [{ sdsWeight: 1.5 }, /sdsWeight must be in \[0, 1\], got 1.5/],
    [{ sdsWeight: Number.NaN }, /sdsWeight must be in \[0, 1\], got NaN/],
    [{ replicas: 3, gradAccum: 2 }, /replicas \(3\) needs gradAccum ≥ replicas/],
  ])('%o is refused with its name', async (config, message) => {
    await expect(run(config)).rejects.toThrow(message);
  });
});
