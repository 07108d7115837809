/**
 * Data-parallel distillation over MPI (`mpirun -np 2 swiftbrush distill …`), on the fixture UNet:
 * two processes at --grad-accum 1 reach the weights of one process at --grad-accum 2 (≤ 1e-6),
 * a run resumes with another number of processes, --replicas work inside each process, SIGTERM on
 * one rank stops every rank at the same step after rank 0's checkpoint, and a rank that dies ends
 * the others with an error instead of leaving them waiting.
 *
 * Needs OpenMPI's mpirun (Debian: apt-get install openmpi-bin libopenmpi-dev; .ci/run installs it);
 * without it the suite is skipped and says so.
 */
import { describe, expect, it, beforeAll } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN, EMBEDDINGS, exportedWeights, runCli, worstWeightDiff } from '../operators/helpers.ts';
import { SCHEDULER_FIXTURE_DIR, UNET_FIXTURE_DIR } from '../fixtures.ts';
import { readSafetensors } from '../../src/models/safetensors.ts';
import { detectLauncher } from '../../src/parallel/mpi.ts';

const MPIRUN = ['--allow-run-as-root', '--oversubscribe', '--bind-to', 'none', '--mca', 'mpi_yield_when_idle', '1'];
const hasMpirun = spawnSync('mpirun', ['--version'], { encoding: 'utf8' }).status === 0;
if (!hasMpirun) console.warn('test/parallel/mpi.test.ts: mpirun not found, the MPI tests are SKIPPED (install OpenMPI: apt-get install openmpi-bin libopenmpi-dev)');

function distillArgs(teacher: string, out: string, extra: string[]): string[] {
  return [BIN, 'distill', '--backend', 'wasm', '--teacher', teacher, '--embeddings', EMBEDDINGS, '--out', out, '--batch-size', '2', '--validation-every', '0', '--lora-rank', '2', '--lora-alpha', '4', '--student-lr', '1e-3', '--lora-lr', '1e-2', '--ema-decay', '0.9', '--seed', '7', '--checkpoint-every', '1', ...extra];
}

function mpirun(np: number, argv: string[]) {
  return spawnSync('mpirun', [...MPIRUN, '-np', String(np), process.execPath, ...argv], { encoding: 'utf8', env: { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'warn' }, timeout: 300_000 });
}

/** Student and LoRA weights of a checkpoint folder. */
async function checkpointWeights(dir: string): Promise<Map<string, Float32Array>> {
  const student = (await readSafetensors(join(dir, 'unet', 'diffusion_pytorch_model.safetensors'))).tensors;
  const lora = (await readSafetensors(join(dir, 'unet_lora', 'adapter_model.safetensors'))).tensors;
  return new Map([...[...student].map(([k, v]) => [`student/${k}`, v.data as Float32Array] as const), ...[...lora].map(([k, v]) => [`lora/${k}`, v.data as Float32Array] as const)]);
}

const metricsOf = (dir: string) =>
  readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => {
    const r = JSON.parse(l);
    return { step: r.step, loss_vsd: r.loss_vsd, loss_lora: r.loss_lora, grad_norm_student: r.grad_norm_student, grad_norm_lora: r.grad_norm_lora };
  });

/** The pids of mpirun's node processes by rank (read from their environment). */
function ranksOf(mpirunPid: number): Map<number, number> {
  const out = new Map<number, number>();
  const children = spawnSync('pgrep', ['-P', String(mpirunPid)], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean).map(Number);
  for (const pid of children) {
    try {
      const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
      const rank = env.find((e) => e.startsWith('OMPI_COMM_WORLD_RANK='));
      if (rank) out.set(Number(rank.split('=')[1]), pid);
    } catch {
      /* exited */
    }
  }
  return out;
}

async function waitFor(condition: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('launcher detection (no MPI needed)', () => {
  it('reads OpenMPI, PMI and srun environments, and nothing else', () => {
    expect(detectLauncher({ OMPI_COMM_WORLD_RANK: '1', OMPI_COMM_WORLD_SIZE: '4' })).toEqual({ name: 'openmpi', rank: 1, size: 4 });
    expect(detectLauncher({ PMI_RANK: '0', PMI_SIZE: '2' })).toEqual({ name: 'pmi', rank: 0, size: 2 });
    expect(detectLauncher({ SLURM_PROCID: '3', SLURM_NTASKS: '8' })).toEqual({ name: 'slurm', rank: 3, size: 8 });
    expect(detectLauncher({ SLURM_NTASKS: '8' })).toBeNull(); // sbatch's shell, not an srun task
    expect(detectLauncher({})).toBeNull();
    expect(detectLauncher({ OMPI_COMM_WORLD_RANK: '4', OMPI_COMM_WORLD_SIZE: '4' })).toBeNull();
  });

  it('a run started alone never loads MPI (koffi is not even imported)', async () => {
    const { createRequire } = await import('node:module');
    const { runDistillation } = await import('../../src/operators/run.ts');
    expect(typeof runDistillation).toBe('function');
    const cache = createRequire(import.meta.url).cache;
    expect(Object.keys(cache).some((k) => k.includes(`${join('node_modules', 'koffi')}`))).toBe(false);
  });
});

describe.skipIf(!hasMpirun)('mpirun -np 2 swiftbrush distill', () => {
  let teacher: string;
  let single: string;
  beforeAll(async () => {
    teacher = await mkdtemp(join(tmpdir(), 'sb-mpi-teacher-'));
    await symlink(UNET_FIXTURE_DIR, join(teacher, 'unet'));
    await symlink(SCHEDULER_FIXTURE_DIR, join(teacher, 'scheduler'));
    // The reference: one process, windows of 2 micro-batches.
    single = await mkdtemp(join(tmpdir(), 'sb-mpi-single-'));
    const r = runCli(distillArgs(teacher, single, ['--steps', '3', '--grad-accum', '2']));
    expect(r.status, r.stderr).toBe(0);
  }, 600_000);

  it('2 processes at --grad-accum 1 reach one process\'s weights at --grad-accum 2 (≤ 1e-6), and resume on 1 process', { timeout: 600_000 }, async () => {
    const out = await mkdtemp(join(tmpdir(), 'sb-mpi-two-'));
    const r = mpirun(2, distillArgs(teacher, out, ['--steps', '1', '--grad-accum', '1']));
    expect(r.status, r.stderr + r.stdout).toBe(0);
    expect(JSON.parse(r.stdout.trim())).toMatchObject({ step: 1, rank: 0 }); // one result line: rank 0's
    const a = await checkpointWeights(join(single, 'checkpoint-1'));
    const b = await checkpointWeights(join(out, 'checkpoint-1'));
    expect(worstWeightDiff(a, b)).toBeLessThanOrEqual(1e-6);
    expect([...a].filter(([k]) => k.includes('lora_B')).some(([, v]) => v.some((x) => x !== 0))).toBe(true); // the weights moved
    expect(JSON.parse(readFileSync(join(out, 'checkpoint-1', 'state.json'), 'utf8')).microStep).toBe(2); // global micro-batches
    expect(metricsOf(out)).toEqual(metricsOf(single).slice(0, 1)); // losses over both processes' micro-batches

    // The same run continued by one process at --grad-accum 2 (another world size).
    const resumed = runCli(distillArgs(teacher, out, ['--steps', '3', '--grad-accum', '2', '--resume']));
    expect(resumed.status, resumed.stderr).toBe(0);
    expect(worstWeightDiff(await exportedWeights(single), await exportedWeights(out))).toBeLessThanOrEqual(1e-6);
  });

  it('a one-process checkpoint resumes on 2 processes, with 2 replica threads in each (--grad-accum 2 --replicas 2 = one process at --grad-accum 4)', { timeout: 600_000 }, async () => {
    // 1 → 2 processes: one process's run as it stood at checkpoint-1 (its run.json, config.json and
    // that checkpoint: a folder with a checkpoint alone is not a run to resume), continued by two at --grad-accum 1.
    const out = await mkdtemp(join(tmpdir(), 'sb-mpi-resume-'));
    for (const name of ['run.json', 'config.json', 'checkpoint-1']) cpSync(join(single, name), join(out, name), { recursive: true });
    const r = mpirun(2, distillArgs(teacher, out, ['--steps', '2', '--grad-accum', '1', '--resume']));
    expect(r.status, r.stderr + r.stdout).toBe(0);
    expect(worstWeightDiff(await checkpointWeights(join(single, 'checkpoint-2')), await checkpointWeights(join(out, 'checkpoint-2')))).toBeLessThanOrEqual(1e-6);

    // Replicas inside each process: 2 × (--grad-accum 2 --replicas 2) against one process at --grad-accum 4.
    const four = await mkdtemp(join(tmpdir(), 'sb-mpi-four-'));
    const withReplicas = await mkdtemp(join(tmpdir(), 'sb-mpi-replicas-'));
    const s = runCli(distillArgs(teacher, four, ['--steps', '1', '--grad-accum', '4']));
    expect(s.status, s.stderr).toBe(0);
    const p = mpirun(2, distillArgs(teacher, withReplicas, ['--steps', '1', '--grad-accum', '2', '--replicas', '2']));
    expect(p.status, p.stderr + p.stdout).toBe(0);
    expect(worstWeightDiff(await exportedWeights(four), await exportedWeights(withReplicas))).toBeLessThanOrEqual(1e-6);
  });

  it('SIGTERM on rank 1 alone stops both ranks at the same step, after rank 0\'s checkpoint', { timeout: 600_000 }, async () => {
    const out = await mkdtemp(join(tmpdir(), 'sb-mpi-term-'));
    const child = spawn('mpirun', [...MPIRUN, '-np', '2', process.execPath, ...distillArgs(teacher, out, ['--steps', '200', '--grad-accum', '1'])], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'warn' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    await waitFor(() => existsSync(join(out, 'checkpoint-1')), 300_000);
    const rank1 = ranksOf(child.pid!).get(1);
    expect(rank1).toBeDefined();
    process.kill(rank1!, 'SIGTERM');
    const code = await exited;
    expect(code, stderr).toBe(0);
    const result = JSON.parse(stdout.trim());
    expect(result.stoppedEarly).toBe(true);
    expect(result.step).toBeLessThan(200);
    // Rank 0 checkpointed the step everybody stopped at, and exported it.
    expect(existsSync(join(out, `checkpoint-${result.step}`))).toBe(true);
    expect(existsSync(join(out, 'student'))).toBe(true);
    expect(metricsOf(out).at(-1)!.step).toBe(result.step);
  });

  it('bench --mpi reports the step time, the all-reduce\'s share and the gradient bytes handed to MPI per step', { timeout: 600_000 }, () => {
    const r = mpirun(2, [BIN, 'bench', '--mpi', '--backend', 'wasm', '--unet', UNET_FIXTURE_DIR, '--scheduler', SCHEDULER_FIXTURE_DIR, '--embeddings', EMBEDDINGS, '--batch-size', '2', '--steps', '2', '--warmup', '1', '--json']);
    expect(r.status, r.stderr + r.stdout).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(1); // rank 0 reports
    const b = JSON.parse(lines[0]!);
    expect(b.processes).toBe(2);
    expect(b.step_s).toBeGreaterThan(0);
    expect(b.allreduce_share).toBeGreaterThan(0);
    expect(b.allreduce_share).toBeLessThanOrEqual(1);
    // Every trained float32 gradient once per step, plus two 8-byte skip agreements.
    expect(b.bytes_per_step).toBe(4 * b.params + 16);
    expect(b.ring_bytes_sent_per_step).toBe(b.bytes_per_step); // 2(N−1)/N = 1 for N = 2
  });

  it('a rank killed with SIGKILL ends the other with an error instead of a hang', { timeout: 600_000 }, async () => {
    const out = await mkdtemp(join(tmpdir(), 'sb-mpi-kill-'));
    const child = spawn('mpirun', [...MPIRUN, '-np', '2', process.execPath, ...distillArgs(teacher, out, ['--steps', '200', '--grad-accum', '1'])], { stdio: 'ignore', env: { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'warn' } });
    let code: number | null | undefined;
    child.once('exit', (c, signal) => (code = c ?? (signal ? -1 : null)));
    await waitFor(() => existsSync(join(out, 'checkpoint-1')), 300_000);
    const ranks = ranksOf(child.pid!);
    process.kill(ranks.get(1)!, 'SIGKILL');
    await waitFor(() => code !== undefined, 60_000); // a hang would time out here
    expect(code).not.toBe(0);
    const rank0 = ranks.get(0)!;
    const alive = (pid: number) => existsSync(`/proc/${pid}`) && !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z');
    // mpirun may exit a moment before its children are reaped (seen on a loaded machine): rank 0 must be gone soon after, not hang.
    await waitFor(() => !alive(rank0), 30_000).catch(() => undefined);
    expect(alive(rank0)).toBe(false); // rank 0 is gone too
    expect(readdirSync(out).includes('student')).toBe(false);
  });
});
