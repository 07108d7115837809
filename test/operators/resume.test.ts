/**
 * Kill -9 during a run, then --resume: the run continues from the last checkpoint and reaches the
 * same weights as a run never killed; no checkpoint folder is ever half-written.
 */
import { describe, expect, it, beforeAll } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { from, lastValueFrom } from 'rxjs';
import { makeTinyTeacher, exportedWeights, worstWeightDiff, runCli, tinyDistillArgs, makeState, testConfig, fakeBatch, maxAbsDiff } from './helpers.ts';
import { swiftbrushStep, toStepContext } from '../../src/operators/pipeline.ts';
import { disposeDistillState, readTrainingState, snapshotTrainingState, writeTrainingSnapshot } from '../../src/operators/state.ts';

function args(teacher: string, out: string, extra: string[] = []) {
  return tinyDistillArgs(teacher, out, ['--steps', '6', '--grad-accum', '2', '--seed', '5', '--checkpoint-every', '1', ...extra]);
}

function runToEnd(argv: string[]) {
  const r = runCli(argv);
  if (r.status !== 0) throw new Error(`distill failed (${r.status}): ${r.stderr}`);
}


describe('kill -9 and --resume', () => {
  let teacher: string;
  beforeAll(async () => {
    teacher = await makeTinyTeacher(9);
  });

  it('continues from the last checkpoint and reaches the uninterrupted run\'s weights (≤ 1e-6)', { timeout: 600_000 }, async () => {
    const straight = await mkdtemp(join(tmpdir(), 'sb-straight-'));
    const killed = await mkdtemp(join(tmpdir(), 'sb-killed-'));
    runToEnd(args(teacher, straight));

    // Start the same run, kill it hard as soon as a checkpoint exists.
    const child = spawn(process.execPath, args(teacher, killed), { stdio: 'ignore', env: { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'warn' } });
    const deadline = Date.now() + 120_000;
    while (!existsSync(join(killed, 'checkpoint-2')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    expect(existsSync(join(killed, 'student'))).toBe(false); // it really died before finishing

    // Whatever moment the kill hit, every checkpoint folder in place is complete.
    for (const name of readdirSync(killed).filter((n) => /^checkpoint-\d+$/.test(n))) {
      for (const file of ['state.json', 'optimizer.safetensors', 'optimizer_lora.safetensors', 'unet/diffusion_pytorch_model.safetensors', 'unet_ema/diffusion_pytorch_model.safetensors', 'unet_lora/adapter_model.safetensors']) {
        expect(existsSync(join(killed, name, file)), `${name}/${file}`).toBe(true);
      }
    }

    runToEnd(args(teacher, killed, ['--resume']));
    const a = await exportedWeights(straight);
    const b = await exportedWeights(killed);
    expect(worstWeightDiff(a, b)).toBeLessThanOrEqual(1e-6);
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
