/** Checkpoint folders: written whole under a hidden name, pruned through a hidden name, leftovers of killed runs ignored and removed. */
import { describe, expect, it } from 'vitest';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { latestCheckpoint, listCheckpoints, saveCheckpoint } from '../../src/training/checkpoint.ts';

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
