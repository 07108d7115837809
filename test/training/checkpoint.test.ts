/**
 * Training checkpoints. Folders: written whole under a hidden name, pruned through a hidden name,
 * leftovers of killed runs ignored and removed. Snapshots: clones that keep their step's values
 * while training goes on, written tensor by tensor, freed once written, read back whole.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { from, lastValueFrom, tap } from 'rxjs';
import { tf } from '../../src/tf.ts';
import { readSafetensors } from '../../src/models/safetensors.ts';
import { disposeContext } from '../../src/operators/context.ts';
import { swiftbrushStep, toStepContext } from '../../src/operators/pipeline.ts';
import { disposeDistillState } from '../../src/operators/state.ts';
import { disposeTrainingSnapshot, latestCheckpoint, listCheckpoints, readTrainingState, saveCheckpoint, snapshotTrainingState, writeTrainingSnapshot } from '../../src/training/checkpoint.ts';
import { fakeBatch, makeState, makeTinyTeacher, maxAbsDiff, testConfig } from '../operators/helpers.ts';

const writeState = (step: number) => async (dir: string) => {
  // While it is written, the folder is hidden: no reader sees checkpoint-<step> yet.
  expect(dir.split('/').at(-1)).toMatch(/^\.checkpoint-\d+\.tmp-\d+$/);
  expect(existsSync(join(dir, '..', `checkpoint-${step}`))).toBe(false);
  await writeFile(join(dir, 'state.json'), JSON.stringify({ step }));
};

describe('saveCheckpoint', () => {
  it('renames a complete folder into place and keeps the newest `keep`', async () => {
    const out = await mkdtemp(join(tmpdir(), 'sb-ckpt-'));
    for (const step of [1, 2, 3]) await saveCheckpoint(out, step, writeState(step), 2);
    expect((await listCheckpoints(out)).map((c) => c.step)).toEqual([2, 3]);
    expect(readdirSync(out).sort()).toEqual(['checkpoint-2', 'checkpoint-3']);
    expect(existsSync(join(out, 'checkpoint-3', 'state.json'))).toBe(true);
  });

  it('a failing write leaves neither the checkpoint nor its temp folder', async () => {
    const out = await mkdtemp(join(tmpdir(), 'sb-ckpt-'));
    await saveCheckpoint(out, 1, writeState(1));
    await expect(saveCheckpoint(out, 2, () => Promise.reject(new Error('disk full')))).rejects.toThrow('disk full');
    expect(readdirSync(out)).toEqual(['checkpoint-1']);
    expect((await latestCheckpoint(out))?.step).toBe(1);
  });

  it('what a killed run left mid-write or mid-delete is never listed, and the next save removes it', async () => {
    const out = await mkdtemp(join(tmpdir(), 'sb-ckpt-'));
    await saveCheckpoint(out, 1, writeState(1));
    // A write killed before its rename, and a prune killed inside its rm, in another process.
    await mkdir(join(out, '.checkpoint-3.tmp-999999', 'unet'), { recursive: true });
    await mkdir(join(out, '.checkpoint-0.old-999999', 'unet'), { recursive: true });
    expect((await listCheckpoints(out)).map((c) => c.step)).toEqual([1]);
    await saveCheckpoint(out, 2, writeState(2));
    expect(readdirSync(out).sort()).toEqual(['checkpoint-1', 'checkpoint-2']);
  });

  it('saving a step again replaces its folder whole', async () => {
    const out = await mkdtemp(join(tmpdir(), 'sb-ckpt-'));
    await saveCheckpoint(out, 1, async (dir) => writeFile(join(dir, 'old.json'), '{}'));
    await saveCheckpoint(out, 1, async (dir) => writeFile(join(dir, 'state.json'), '{}'));
    expect(readdirSync(join(out, 'checkpoint-1'))).toEqual(['state.json']);
    expect(readdirSync(out)).toEqual(['checkpoint-1']);
  });
});

describe('training snapshots', () => {
  it('a snapshot taken at step N and written after later steps holds step N, frees its tensors, and reads back', { timeout: 120_000 }, async () => {
    const teacher = await makeTinyTeacher(5);
    const state = await makeState(teacher, testConfig());
    const fresh = await makeState(teacher, testConfig());
    const dir = await mkdtemp(join(tmpdir(), 'sb-snapshot-'));
    try {
      const step = (i: number) => lastValueFrom(from([fakeBatch(i)]).pipe(toStepContext(1, i), swiftbrushStep(state), tap(disposeContext)));
      await step(0);
      await step(1);
      // Host copies of step 2, taken the slow way, as reference.
      const expected = {
        unet: state.student.stateDict(),
        unet_ema: state.student.store.torchStateDict(state.ema!.shadow),
        unet_lora: state.lora.stateDict(),
        optimizer: state.studentOptimizer.stateTensors(),
        optimizer_lora: state.loraOptimizer.stateTensors(),
      };
      const steps = { student: state.studentOptimizer.step, lora: state.loraOptimizer.step };
      const before = tf.memory().numTensors;
      const snapshot = snapshotTrainingState(state, { step: 2, microStep: 2, counters: state.counters });
      await step(2); // every Variable is assigned anew while the snapshot waits
      const anyParam = Object.keys(expected.unet)[0]!;
      expect(maxAbsDiff(state.student.store.torchValue(anyParam), expected.unet[anyParam]!.data)).toBeGreaterThan(0);
      await writeTrainingSnapshot(state, snapshot, join(dir, 'checkpoint-2'));
      expect(tf.memory().numTensors).toBe(before);

      const files: Record<keyof typeof expected, string> = {
        unet: 'unet/diffusion_pytorch_model.safetensors',
        unet_ema: 'unet_ema/diffusion_pytorch_model.safetensors',
        unet_lora: 'unet_lora/adapter_model.safetensors',
        optimizer: 'optimizer.safetensors',
        optimizer_lora: 'optimizer_lora.safetensors',
      };
      for (const [part, file] of Object.entries(files) as [keyof typeof expected, string][]) {
        const { tensors } = await readSafetensors(join(dir, 'checkpoint-2', file));
        expect([...tensors.keys()].sort(), file).toEqual(Object.keys(expected[part]).sort());
        for (const [name, t] of tensors) {
          expect(t.shape, `${file} ${name}`).toEqual(expected[part][name]!.shape);
          expect(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).equals(Buffer.from(expected[part][name]!.data.buffer, expected[part][name]!.data.byteOffset, expected[part][name]!.data.byteLength)), `${file} ${name}`).toBe(true);
        }
      }
      const json = JSON.parse(await readFile(join(dir, 'checkpoint-2', 'state.json'), 'utf8'));
      expect([json.step, json.microStep, json.student_optimizer_step, json.lora_optimizer_step]).toEqual([2, 2, steps.student, steps.lora]);

      // Read back (positioned reads) into a state that never trained: step 2's values.
      const progress = await readTrainingState(fresh, join(dir, 'checkpoint-2'));
      expect(progress.step).toBe(2);
      expect(fresh.studentOptimizer.step).toBe(steps.student);
      const restored = { unet: fresh.student.stateDict(), unet_ema: fresh.student.store.torchStateDict(fresh.ema!.shadow), unet_lora: fresh.lora.stateDict(), optimizer: fresh.studentOptimizer.stateTensors(), optimizer_lora: fresh.loraOptimizer.stateTensors() };
      for (const part of Object.keys(expected) as (keyof typeof expected)[]) {
        for (const [name, t] of Object.entries(expected[part])) expect(maxAbsDiff(restored[part][name]!.data, t.data), `${part} ${name}`).toBe(0);
      }
    } finally {
      disposeDistillState(state);
      disposeDistillState(fresh);
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a snapshot that is never written is freed by disposeTrainingSnapshot', { timeout: 60_000 }, async () => {
    const state = await makeState(await makeTinyTeacher(6), testConfig());
    try {
      const before = tf.memory().numTensors;
      const snapshot = snapshotTrainingState(state, { step: 0, microStep: 0, counters: state.counters });
      expect(tf.memory().numTensors).toBeGreaterThan(before);
      disposeTrainingSnapshot(snapshot);
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      disposeDistillState(state);
    }
  });
});
