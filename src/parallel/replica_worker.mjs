// Entry of a replica thread (src/parallel/replica_pool.ts). Plain JS so a worker started from the
// bin script, tsx or vitest alike can register the TypeScript loader before importing the replica.
import { register } from 'tsx/esm/api';

register();
await import('./replica.ts');
