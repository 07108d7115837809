/**
 * Checkpoint folders in accelerate's style: `OUT/checkpoint-<step>/`. Each is written into a
 * hidden temp folder and renamed into place only when complete; a folder to be deleted (pruned, or
 * replaced by a new save of its step) is first renamed to a hidden name and only then removed. So a
 * kill at any moment leaves every `checkpoint-<step>` folder complete, never half-written nor
 * half-deleted; the hidden leftovers of a killed run are removed by the next save or resume. Only the newest
 * `keep` are kept.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

const PATTERN = /^checkpoint-(\d+)$/;
/** Hidden folders being written (`.tmp-<pid>`) or deleted (`.old-<pid>`). */
const HIDDEN = /^\.checkpoint-\d+\.(tmp|old)-\d+$/;

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

/** Removes a checkpoint folder by renaming it to a hidden name first, so no kill leaves a part of it under its own name. */
async function discard(outDir: string, name: string): Promise<void> {
  const trash = join(outDir, `.${name}.old-${process.pid}`);
  await rm(trash, { recursive: true, force: true });
  await rename(join(outDir, name), trash);
  await rm(trash, { recursive: true, force: true });
}

/** Writes checkpoint-<step> through `write(tmpDir)`, renames it into place, prunes to `keep`. */
export async function saveCheckpoint(outDir: string, step: number, write: (dir: string) => Promise<void>, keep = Infinity): Promise<string> {
  await mkdir(outDir, { recursive: true });
  const name = `checkpoint-${step}`;
  const final = join(outDir, name);
  const tmp = join(outDir, `.${name}.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    await write(tmp);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  if (existsSync(final)) await discard(outDir, name);
  await rename(tmp, final);
  const all = await listCheckpoints(outDir);
  for (const old of all.slice(0, Math.max(0, all.length - keep))) await discard(outDir, `checkpoint-${old.step}`);
  await removeLeftovers(outDir); // this save's own hidden folders are gone by now
  return final;
}

/** Removes the hidden folders a killed run left mid-write or mid-delete (call when no save is under way). */
export async function removeLeftovers(outDir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(outDir);
  } catch {
    return;
  }
  for (const name of names) if (HIDDEN.test(name)) await rm(join(outDir, name), { recursive: true, force: true });
}
