/**
 * A scratch folder for one test file: made in beforeAll, removed with everything in it in afterAll.
 * `path` is valid inside the file's tests.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';

export function useTempDir(prefix: string): { readonly path: string } {
  let path: string | undefined;
  beforeAll(async () => {
    path = await mkdtemp(join(tmpdir(), prefix));
  });
  afterAll(async () => {
    if (path) await rm(path, { recursive: true, force: true });
  });
  return {
    get path(): string {
      if (!path) throw new Error('useTempDir: the folder exists only inside the tests (after beforeAll)');
      return path;
    },
  };
}
