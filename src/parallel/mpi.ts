/**
 * The MPI world: the processes of one data-parallel run started by `mpirun` or `srun`, and the few
 * collectives the run needs (sum all-reduce of float32 gradients and float64 scalars, max of
 * float64, barrier, abort). Every byte between processes goes through the system's MPI library,
 * called through koffi (FFI): nothing here opens a socket.
 *
 * Without a launcher nothing changes: `detectLauncher` reads only the environment, and koffi and
 * libmpi are imported only when a world is opened.
 *
 * Handles: OpenMPI (4.x, libmpi.so.40) exports its predefined handles as globals
 * (MPI_COMM_WORLD = &ompi_mpi_comm_world, MPI_FLOAT = &ompi_mpi_float, MPI_SUM = &ompi_mpi_op_sum),
 * so they are the addresses of those symbols; MPI_IN_PLACE is (void *) 1. MPICH and its derivatives
 * (Intel MPI, MVAPICH) use integer handles instead; they are refused by name.
 */
import { createRequire } from 'node:module';

/** Which launcher started this process, read from the environment it sets. */
export interface Launcher {
  name: 'openmpi' | 'pmi' | 'slurm';
  rank: number;
  size: number;
}

/** The launcher's rank and size variables, or null when the process was started alone. */
export function detectLauncher(env: NodeJS.ProcessEnv = process.env): Launcher | null {
  const read = (name: Launcher['name'], rank: string | undefined, size: string | undefined): Launcher | null => {
    if (size === undefined || rank === undefined) return null;
    const r = Number(rank);
    const s = Number(size);
    if (!Number.isInteger(r) || !Number.isInteger(s) || s < 1 || r < 0 || r >= s) return null;
    return { name, rank: r, size: s };
  };
  return (
    read('openmpi', env.OMPI_COMM_WORLD_RANK, env.OMPI_COMM_WORLD_SIZE) ??
    read('pmi', env.PMI_RANK, env.PMI_SIZE) ??
    // srun sets SLURM_PROCID / SLURM_NTASKS for every task of the step (sbatch alone sets no SLURM_PROCID).
    read('slurm', env.SLURM_PROCID, env.SLURM_STEP_NUM_TASKS ?? env.SLURM_NTASKS)
  );
}

/** Traffic and time spent in collectives since the world was opened (what `bench --mpi` reports). */
export interface CollectiveStats {
  calls: number;
  /** Payload bytes handed to MPI (each process's own buffer; not what the algorithm moves on the wire). */
  bytes: number;
  seconds: number;
}

export interface World {
  readonly rank: number;
  readonly size: number;
  /** Library identification (MPI_Get_library_version's first line). */
  readonly library: string;
  readonly stats: CollectiveStats;
  /** Sums `buffer` over every process, in place (one MPI_Allreduce, split only past 2³¹−1 floats). */
  allreduceSum(buffer: Float32Array): void;
  /** Sums float64 values over every process, in place. */
  allreduceSum64(values: Float64Array): void;
  /** Element-wise maximum of float64 values over every process, in place. */
  allreduceMax64(values: Float64Array): void;
  barrier(): void;
  /** Ends every process of the job (MPI_Abort): for an error on one rank, so the others do not wait forever. */
  abort(code: number): never;
  finalize(): void;
}

export const INSTALL_HINT = 'install OpenMPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev; RHEL: dnf install openmpi openmpi-devel) and launch with mpirun or srun';

/** The largest count one MPI call takes (its count argument is a C int). */
const MAX_COUNT = 2 ** 31 - 1;

let opened: World | null = null;

/**
 * Initialises MPI (once per process) and returns the world. Throws a message that says how to
 * install OpenMPI when libmpi cannot be loaded, and refuses MPICH-style libraries by name.
 */
export function openWorld(options: { library?: string } = {}): World {
  if (opened) return opened;
  const require = createRequire(import.meta.url);
  let koffi: typeof import('koffi');
  try {
    koffi = require('koffi');
  } catch (err) {
    throw new Error(`MPI: the koffi package (FFI) is not installed: run npm ci (${(err as Error).message})`);
  }
  const candidates = options.library ? [options.library] : ['libmpi.so.40', 'libmpi.so', 'libmpi.dylib'];
  let lib: ReturnType<typeof koffi.load> | null = null;
  const failures: string[] = [];
  for (const name of candidates) {
    try {
      lib = koffi.load(name);
      break;
    } catch (err) {
      failures.push(`${name}: ${(err as Error).message}`);
    }
  }
  if (!lib) throw new Error(`MPI: no MPI library could be loaded (${failures.join('; ')}): ${INSTALL_HINT}`);
  const symbol = (name: string): bigint | null => {
    try {
      return lib!.symbol(name) as bigint;
    } catch {
      return null;
    }
  };
  if (symbol('ompi_mpi_comm_world') === null) {
    const mpich = symbol('MPIR_Process') !== null || symbol('MPIR_Err_return_comm') !== null;
    throw new Error(
      `MPI: ${mpich ? 'this is an MPICH-family library (MPICH, Intel MPI, MVAPICH), whose integer handles are not supported' : 'the loaded MPI library is not OpenMPI'}; ` +
        `swiftbrush needs OpenMPI 4 or later (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev) and its mpirun`,
    );
  }
  // OpenMPI installs backtrace handlers for SIGSEGV/SIGBUS/SIGFPE/SIGABRT at MPI_Init unless told
  // not to; V8 relies on its own SIGSEGV handler (WebAssembly bounds checks), so keep MPI off them.
  process.env.OMPI_MCA_opal_signal ??= '';
  const handle = (name: string) => symbol(name) ?? (() => { throw new Error(`MPI: ${name} is missing from the OpenMPI library`); })();
  const COMM_WORLD = handle('ompi_mpi_comm_world');
  const FLOAT = handle('ompi_mpi_float');
  const DOUBLE = handle('ompi_mpi_double');
  const SUM = handle('ompi_mpi_op_sum');
  const MAX = handle('ompi_mpi_op_max');
  const IN_PLACE = 1n;

  const Initialized = lib.func('int MPI_Initialized(_Out_ int *flag)');
  const Init = lib.func('int MPI_Init(void *argc, void *argv)');
  const CommRank = lib.func('int MPI_Comm_rank(void *comm, _Out_ int *rank)');
  const CommSize = lib.func('int MPI_Comm_size(void *comm, _Out_ int *size)');
  const Allreduce = lib.func('int MPI_Allreduce(void *sendbuf, void *recvbuf, int count, void *datatype, void *op, void *comm)');
  const Barrier = lib.func('int MPI_Barrier(void *comm)');
  const Abort = lib.func('int MPI_Abort(void *comm, int errorcode)');
  const Finalize = lib.func('int MPI_Finalize()');
  const Finalized = lib.func('int MPI_Finalized(_Out_ int *flag)');
  const LibraryVersion = lib.func('int MPI_Get_library_version(_Out_ char *version, _Out_ int *resultlen)');

  const check = (what: string, rc: number) => {
    // MPI_ERRORS_ARE_FATAL is the default handler: a failing call aborts the job before returning.
    if (rc !== 0) throw new Error(`MPI: ${what} failed with error code ${rc}`);
  };
  const flag = [0];
  check('MPI_Initialized', Initialized(flag));
  if (!flag[0]) check('MPI_Init', Init(null, null));
  const rankOut = [0];
  const sizeOut = [0];
  check('MPI_Comm_rank', CommRank(COMM_WORLD, rankOut));
  check('MPI_Comm_size', CommSize(COMM_WORLD, sizeOut));
  const versionBuf = Buffer.alloc(8192);
  const versionLen = [0];
  LibraryVersion(versionBuf, versionLen);
  const library = versionBuf.subarray(0, versionLen[0]).toString('utf8').split(/[\n,]/)[0]!.trim();

  const stats: CollectiveStats = { calls: 0, bytes: 0, seconds: 0 };
  const allreduce = (what: string, view: Float32Array | Float64Array, datatype: bigint, op: bigint) => {
    const t0 = performance.now();
    for (let offset = 0; offset < view.length; offset += MAX_COUNT) {
      const part = view.subarray(offset, Math.min(view.length, offset + MAX_COUNT));
      check(what, Allreduce(IN_PLACE, part, part.length, datatype, op, COMM_WORLD));
      stats.calls += 1;
    }
    stats.bytes += view.byteLength;
    stats.seconds += (performance.now() - t0) / 1000;
  };
  opened = {
    rank: rankOut[0]!,
    size: sizeOut[0]!,
    library,
    stats,
    allreduceSum: (buffer) => allreduce('MPI_Allreduce(MPI_FLOAT, MPI_SUM)', buffer, FLOAT, SUM),
    allreduceSum64: (values) => allreduce('MPI_Allreduce(MPI_DOUBLE, MPI_SUM)', values, DOUBLE, SUM),
    allreduceMax64: (values) => allreduce('MPI_Allreduce(MPI_DOUBLE, MPI_MAX)', values, DOUBLE, MAX),
    barrier: () => check('MPI_Barrier', Barrier(COMM_WORLD)),
    abort: (code) => {
      Abort(COMM_WORLD, code);
      process.exit(code); // not reached: MPI_Abort ends the process
    },
    finalize: () => {
      const done = [0];
      Finalized(done);
      if (!done[0]) check('MPI_Finalize', Finalize());
    },
  };
  // A process that ends cleanly finalises (waiting there for the others); one that ends with an
  // error aborts the whole job, so that no other process waits forever in a collective.
  process.once('exit', (code) => {
    if (code === 0) opened!.finalize();
    else Abort(COMM_WORLD, code);
  });
  return opened;
}

/**
 * The world for a run: opened when a launcher started this process or when `requested` (--mpi),
 * otherwise undefined (and MPI is not loaded). A world of size 1 is returned as such (a run under
 * `mpirun -np 1` behaves as a single process).
 */
export function worldForRun(requested = false, env: NodeJS.ProcessEnv = process.env): World | undefined {
  const launcher = detectLauncher(env);
  if (!launcher && !requested) return undefined;
  const world = openWorld();
  if (launcher && (launcher.rank !== world.rank || launcher.size !== world.size)) {
    throw new Error(`MPI: the launcher says rank ${launcher.rank} of ${launcher.size} (${launcher.name}) but MPI says rank ${world.rank} of ${world.size}: was this started by another MPI's launcher?`);
  }
  return world;
}
