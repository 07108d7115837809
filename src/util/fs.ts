/** File helpers: atomic writes, so that no reader ever sees a half-written file. */
import { mkdir, rename, writeFile, rm } from 'node:fs/promises';
import { dirname, join, basename } from 'node:path';

/** Writes to a temp file beside the target, then renames it over the target (atomic on POSIX). */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Date.now()}`);
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(value, null, 2) + '\n');
}
