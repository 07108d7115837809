// Entry of a replica thread (src/parallel/replica_pool.ts). Plain JS so that it starts the same way
// from the built package (dist/, where replica.js sits beside it) and from the sources (bin script,
// tsx, vitest), where it registers the TypeScript loader before importing replica.ts.
import { existsSync } from 'node:fs';

const built = new URL('./replica.js', import.meta.url);
if (existsSync(built)) {
  await import(built.href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('./replica.ts');
}
