/**
 * Checkpoint folders in accelerate's style: `OUT/checkpoint-<step>/`. Each is written into a
 * hidden temp folder and renamed into place only when complete, so a kill at any moment leaves
 * either the previous checkpoint or the new one, never a half-written one. Only the newest
 * `keep` are kept.
 */
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

const PATTERN = /^checkpoint-(\d+)$/;

export async function listCheckpoints(outDir: string): Promise<{ step: number; path: string }[]> {
  let names: string[];
  try {
    names = await readdir(outDir);
  } catch {
    return [];
  }
  const found: { step: number; path: string }[] = [];
  for (const name of names) {
    const m = PATTERN.exec(name);
    if (m && (await stat(join(outDir, name))).isDirectory()) found.push({ step: Number(m[1]), path: join(outDir, name) });
  }
  return found.sort((a, b) => a.step - b.step);
}

export async function latestCheckpoint(outDir: string): Promise<{ step: number; path: string } | undefined> {
  return (await listCheckpoints(outDir)).at(-1);
}

/** Writes checkpoint-<step> through `write(tmpDir)`, renames it into place, prunes to `keep`. */
export async function saveCheckpoint(outDir: string, step: number, write: (dir: string) => Promise<void>, keep = Infinity): Promise<string> {
  await mkdir(outDir, { recursive: true });
  const final = join(outDir, `checkpoint-${step}`);
  const tmp = join(outDir, `.checkpoint-${step}.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    await write(tmp);
    await rm(final, { recursive: true, force: true });
    await rename(tmp, final);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  const all = await listCheckpoints(outDir);
  for (const old of all.slice(0, Math.max(0, all.length - keep))) await rm(old.path, { recursive: true, force: true });
  // Temp folders of killed runs are garbage: remove them.
  for (const name of await readdir(outDir)) if (/^\.checkpoint-\d+\.tmp-/.test(name) && !name.endsWith(`.tmp-${process.pid}`)) await rm(join(outDir, name), { recursive: true, force: true });
  return final;
}
