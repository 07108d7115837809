/**
 * Stop and --resume: a run stopped at a step's end and resumed writes the same files, byte for
 * byte, as one never stopped (the SIGKILL version is kill_resume.test.ts); the exports are the last
 * checkpoint's weights; resuming with settings the checkpoint was not saved with.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { from, lastValueFrom } from 'rxjs';
import { EMBEDDINGS, bytewiseDifferences, filesUnder, fixtureTeacher, metricsByStep, makeTinyTeacher, makeState, testConfig, fakeBatch, maxAbsDiff } from './helpers.ts';
import { swiftbrushStep, toStepContext } from '../../src/operators/pipeline.ts';
import { initBackend } from '../../src/backend.ts';
import { runDistillation, type DistillRunOptions } from '../../src/operators/run.ts';
import { listCheckpoints, readTrainingState, snapshotTrainingState, writeTrainingSnapshot } from '../../src/training/checkpoint.ts';
import { disposeDistillState, type DistillState } from '../../src/operators/state.ts';

/** A short run on the diffusers fixture UNet: 4 steps, the last checkpoint off-cadence (forced), validation grids at steps 2 and 4. */
function runOptions(teacher: string, out: string, extra: Partial<DistillRunOptions> = {}): DistillRunOptions {
  return { teacher, embeddings: EMBEDDINGS, out, steps: 4, config: testConfig(), checkpointEvery: 3, validationEvery: 2, validationPrompts: 2, tty: false, ...extra };
}

async function expectIdentical(a: string, b: string) {
  expect((await filesUnder(a)).length, `${a} holds files`).toBeGreaterThan(0);
  expect(await bytewiseDifferences(a, b), `${a} vs ${b}`).toEqual([]);
}

/** The exported student and LoRA are the last checkpoint's EMA (or raw) student and LoRA, byte for byte. */
async function expectExportsAreLastCheckpoint(out: string, step: number, student: 'unet_ema' | 'unet') {
  const last = join(out, `checkpoint-${step}`);
  await expectIdentical(join(out, 'student', 'unet'), join(last, student));
  await expectIdentical(join(out, 'lora'), join(last, 'unet_lora'));
}

describe('a stopped and resumed run equals a straight one, byte for byte', () => {
  let teacher: string;
  beforeAll(async () => {
    await initBackend('wasm');
    teacher = await fixtureTeacher();
  });
  afterAll(() => rm(teacher, { recursive: true, force: true }));

  it('student/, lora/ and the last checkpoint', { timeout: 600_000 }, async () => {
    const straight = await mkdtemp(join(tmpdir(), 'sb-straight-'));
    const stopped = await mkdtemp(join(tmpdir(), 'sb-stopped-'));
    expect(await runDistillation(runOptions(teacher, straight))).toMatchObject({ step: 4, stoppedEarly: false });

    // Stop at the end of step 2 (a stop request is honoured at the window's end), then resume.
    let state: DistillState | undefined;
    const first = await runDistillation(runOptions(teacher, stopped, { stopRequested: () => state!.loraOptimizer.step >= 2, operators: (s) => ((state = s), []) }));
    expect(first).toMatchObject({ step: 2, stoppedEarly: true });
    expect((await listCheckpoints(stopped)).map((c) => c.step)).toEqual([2]);
    expect(await runDistillation(runOptions(teacher, stopped, { resume: true }))).toMatchObject({ step: 4, stoppedEarly: false });

    expect((await listCheckpoints(straight)).map((c) => c.step)).toEqual([3, 4]);
    for (const dir of ['student', 'lora', 'checkpoint-4', 'samples']) await expectIdentical(join(straight, dir), join(stopped, dir));
    // Everything else alike too (config.json) but metrics.jsonl (timings); the stop wrote its own checkpoint-2.
    const elsewhere = (await bytewiseDifferences(straight, stopped)).filter((d) => !/checkpoint-\d+\//.test(d));
    expect(elsewhere).toEqual(['bytes differ: metrics.jsonl']);
    expect(metricsByStep(stopped)).toEqual(metricsByStep(straight)); // each step's losses, norms and lrs
    expect(metricsByStep(straight).size).toBe(4);
    expect(readdirSync(join(straight, 'samples'))).toEqual(['step-000002.png', 'step-000004.png']);
    await expectExportsAreLastCheckpoint(straight, 4, 'unet_ema');
    await expectExportsAreLastCheckpoint(stopped, 4, 'unet_ema');
    for (const dir of [straight, stopped]) await rm(dir, { recursive: true, force: true }); // kept when the test fails
  });

  it('--raw-weights exports the last checkpoint\'s raw student', { timeout: 600_000 }, async () => {
    const out = await mkdtemp(join(tmpdir(), 'sb-raw-'));
    await runDistillation(runOptions(teacher, out, { steps: 2, exportRawWeights: true }));
    await expectExportsAreLastCheckpoint(out, 2, 'unet');
    await rm(out, { recursive: true, force: true });
  });
});

describe('resume with settings the checkpoint was not saved with', () => {
  it('a checkpoint saved with --ema-decay 0, resumed with EMA on, starts the EMA at its student weights', { timeout: 120_000 }, async () => {
    const teacher = await makeTinyTeacher(9);
    const dir = await mkdtemp(join(tmpdir(), 'sb-noema-'));
    const plain = await makeState(teacher, testConfig({ emaDecay: 0, studentLr: 1e-2 }));
    let saved: Map<string, Float32Array>;
    try {
      // One step so the weights differ from the teacher's (the EMA's would-be start otherwise).
      await lastValueFrom(from([fakeBatch(0)]).pipe(toStepContext(1), swiftbrushStep(plain)));
      await writeTrainingSnapshot(plain, snapshotTrainingState(plain, { step: 1, microStep: 1, counters: plain.counters }), join(dir, 'checkpoint-1'));
      expect(existsSync(join(dir, 'checkpoint-1', 'unet_ema'))).toBe(false);
      saved = new Map([...plain.student.store.named()].map(([k, v]) => [k, v.dataSync() as Float32Array]));
    } finally {
      disposeDistillState(plain);
    }
    const withEma = await makeState(teacher, testConfig({ emaDecay: 0.9 }));
    try {
      await readTrainingState(withEma, join(dir, 'checkpoint-1'));
      let compared = 0;
      for (const [name, v] of saved) {
        expect(maxAbsDiff(withEma.ema!.get(name).dataSync(), v), name).toBe(0);
        compared++;
      }
      expect(compared).toBeGreaterThan(0);
      expect(maxAbsDiff(withEma.student.store.named().get([...saved.keys()][0]!)!.dataSync(), [...saved.values()][0]!)).toBe(0);
    } finally {
      disposeDistillState(withEma);
    }
  });
});
