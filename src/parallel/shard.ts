/**
 * How the processes of an MPI world share one stream of micro-batches: process r of N takes the
 * global micro-batches r, r + N, r + 2N, … (`batchOffset` r, `batchStride` N of the reader), so N
 * processes at --grad-accum k together compute the windows of one process at --grad-accum N·k, and
 * each micro-batch keeps its global index (the key of its random draws).
 */
import type { World } from './mpi.ts';

export interface Shard {
  rank: number;
  size: number;
}

export function shardOf(world: World | undefined): Shard {
  return world ? { rank: world.rank, size: world.size } : { rank: 0, size: 1 };
}

/**
 * Global micro-batches consumed once the window closed by this process's micro-batch `microStep`
 * is done (what a checkpoint stores as the stream position to resume from): the window's last
 * global micro-batch is that of the last rank, size − 1 − rank after this one.
 */
export function microStepsConsumed(microStep: number, world: World | undefined): number {
  const { rank, size } = shardOf(world);
  return microStep + size - rank;
}
