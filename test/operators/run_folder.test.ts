/** --out never deletes what the run did not write. */
import { describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prepareRunFolder } from '../../src/operators/run_folder.ts';

async function previousRun(command = 'distill') {
  const out = await mkdtemp(join(tmpdir(), 'sb-out-'));
  await prepareRunFolder(out, { command });
  await writeFile(join(out, 'config.json'), '{}');
  await mkdir(join(out, 'checkpoint-2', 'unet'), { recursive: true });
  await mkdir(join(out, 'samples'));
  await writeFile(join(out, 'metrics.jsonl'), '');
  return out;
}

describe('prepareRunFolder', () => {
  it('refuses a folder holding a file no run writes, naming it, with or without --overwrite, and deletes nothing', async () => {
    const out = await mkdtemp(join(tmpdir(), 'sb-out-'));
    await writeFile(join(out, 'important.txt'), 'keep me');
    for (const overwrite of [false, true]) {
      await expect(prepareRunFolder(out, { command: 'default', overwrite })).rejects.toThrow(`--out ${out} holds important.txt, which a \`default\` run does not write`);
    }
    expect(await readFile(join(out, 'important.txt'), 'utf8')).toBe('keep me');
    expect(await readdir(out)).toEqual(['important.txt']);
  });

  it('refuses a previous run without --resume or --overwrite; --overwrite removes only that run\'s files', async () => {
    const out = await previousRun();
    await expect(prepareRunFolder(out, { command: 'distill' })).rejects.toThrow(/holds a previous `distill` run \(checkpoint-2, config\.json, metrics\.jsonl, samples\): --resume continues it, --overwrite starts afresh/);
    await prepareRunFolder(out, { command: 'distill', resume: true });
    expect(existsSync(join(out, 'checkpoint-2'))).toBe(true);
    await prepareRunFolder(out, { command: 'distill', overwrite: true });
    expect(await readdir(out)).toEqual(['run.json']);
  });

  it('refuses another command\'s run, a file as --out, and --resume with --overwrite', async () => {
    const out = await previousRun('default');
    await expect(prepareRunFolder(out, { command: 'distill', overwrite: true })).rejects.toThrow(/holds a `default` run, not a `distill` one/);
    await expect(prepareRunFolder(join(out, 'config.json'), { command: 'distill' })).rejects.toThrow(/config\.json is a file, not a folder/);
    await expect(prepareRunFolder(out, { command: 'default', resume: true, overwrite: true })).rejects.toThrow(/exclude each other/);
  });

  it('a folder with only names a run writes but no run.json is not treated as a run', async () => {
    const out = await mkdtemp(join(tmpdir(), 'sb-out-'));
    await mkdir(join(out, 'samples'));
    await writeFile(join(out, 'samples', 'mine.png'), 'x');
    await expect(prepareRunFolder(out, { command: 'distill', overwrite: true })).rejects.toThrow(/holds samples but no run\.json: not a run folder/);
    expect(existsSync(join(out, 'samples', 'mine.png'))).toBe(true);
  });

  it('a new or empty folder is taken and marked', async () => {
    const out = join(await mkdtemp(join(tmpdir(), 'sb-out-')), 'new');
    await prepareRunFolder(out, { command: 'distill' });
    expect(JSON.parse(await readFile(join(out, 'run.json'), 'utf8'))).toEqual({ command: 'distill' });
  });
});
