/**
 * SIGKILL at random moments, `--resume` after each, until the run finishes: the final files are
 * byte for byte those of a run never killed. The kills are seeded (SWIFTBRUSH_KILL_SEED picks
 * another plan); their moments and outcomes are printed when the test fails.
 *
 * Kinds of kill, each timed off the run's own files (so they land on the same events on a fast or
 * a slow machine): `write` — when a checkpoint's temp folder appears, after a random 0–40 ms, i.e.
 * while the checkpoint is being written; `step` — after the child's first new checkpoint, a random
 * fraction of one step's time (measured on the straight run beside it), i.e. inside the next step;
 * `export` — as soon as the last step's checkpoint is in place, while the student is exported.
 */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, watch } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mulberry32 } from '../../src/util/rng.ts';
import { listCheckpoints } from '../../src/training/checkpoint.ts';
import { BIN, EMBEDDINGS, bytewiseDifferences, filesUnder, fixtureTeacher, metricsByStep } from './helpers.ts';

const SEED = Number(process.env.SWIFTBRUSH_KILL_SEED ?? 1);
const STEPS = 6;
/** Longest any one child may run before the test gives up on it (a slow, shared CI machine). */
const CHILD_DEADLINE_MS = 240_000;
const CHECKPOINT_FILES = ['state.json', 'optimizer.safetensors', 'optimizer_lora.safetensors', 'unet/config.json', 'unet/diffusion_pytorch_model.safetensors', 'unet_ema/diffusion_pytorch_model.safetensors', 'unet_lora/adapter_model.safetensors', 'unet_lora/adapter_config.json'];

function distillArgs(teacher: string, out: string): string[] {
  return [BIN, 'distill', '--backend', 'wasm', '--teacher', teacher, '--embeddings', EMBEDDINGS, '--out', out, '--steps', String(STEPS), '--batch-size', '1', '--seed', '5', '--checkpoint-every', '1', '--validation-every', '3', '--validation-prompts', '2', '--lora-rank', '2', '--lora-alpha', '4', '--student-lr', '1e-3', '--ema-decay', '0.9', '--resume'];
}

interface Child {
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
  kill: () => void;
}

function startChild(argv: string[]): Child {
  const child = spawn(process.execPath, argv, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'warn' } });
  let stderr = '';
  child.stderr!.on('data', (chunk) => (stderr += chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) => child.once('close', (code, signal) => resolve({ code, signal, stderr })));
  return { exited, kill: () => child.kill('SIGKILL') };
}

type Kind = 'write' | 'step' | 'export';

/** Calls `onEntry(name)` for every entry created in `dir` (inotify: no polling gaps). */
function watchEntries(dir: string, onEntry: (name: string) => void): () => void {
  const watcher = watch(dir, (event, name) => {
    if (event === 'rename' && name && existsSync(join(dir, name))) onEntry(name);
  });
  return () => watcher.close();
}

/**
 * Times the straight run's steps from its files: from one checkpoint being in place to the next
 * one's temp folder appearing (the compute of a step, without its write). Median; undefined until known.
 */
function stepClock(dir: string): { stepMs: () => number | undefined; stop: () => void } {
  const placed = new Map<number, number>();
  const gaps: number[] = [];
  const stop = watchEntries(dir, (name) => {
    const done = /^checkpoint-(\d+)$/.exec(name);
    const tmp = /^\.checkpoint-(\d+)\.tmp-/.exec(name);
    if (done) placed.set(Number(done[1]), Date.now());
    const previous = tmp ? placed.get(Number(tmp[1]) - 1) : undefined;
    if (previous !== undefined) gaps.push(Date.now() - previous);
  });
  return { stepMs: () => (gaps.length ? [...gaps].sort((a, b) => a - b)[Math.floor(gaps.length / 2)] : undefined), stop };
}

/** Runs one child in `out` and SIGKILLs it at the moment `kind` (with `delayMs`) names; resolves with what happened. */
async function killOnce(argv: string[], out: string, kind: Kind, delayMs: number): Promise<Record<string, unknown>> {
  const before = (await listCheckpoints(out)).at(-1)?.step ?? 0;
  const t0 = Date.now();
  const child = startChild(argv);
  let killedAt: number | null = null;
  let killedWhile: string | null = null;
  const killAfter = (ms: number, what: string) => {
    if (killedWhile !== null) return;
    killedWhile = what;
    setTimeout(() => {
      killedAt = Date.now() - t0;
      child.kill();
    }, ms);
  };
  const stop = watchEntries(out, (name) => {
    const tmp = /^\.checkpoint-(\d+)\.tmp-/.exec(name);
    const done = /^checkpoint-(\d+)$/.exec(name);
    if (kind === 'write' && tmp) killAfter(delayMs, `writing checkpoint-${tmp[1]}`);
    if (kind === 'step' && done && Number(done[1]) > before) killAfter(delayMs, `after checkpoint-${done[1]}`);
    if (kind === 'export' && done && Number(done[1]) === STEPS) killAfter(0, `checkpoint-${STEPS} in place`);
    if (kind === 'export' && before === STEPS && name === 'student') killAfter(0, 'exporting');
  });
  const deadline = setTimeout(() => killAfter(0, 'deadline'), CHILD_DEADLINE_MS);
  const result = await child.exited;
  clearTimeout(deadline);
  stop();
  const leftTmp = readdirSync(out).filter((n) => n.startsWith('.checkpoint-'));
  return { kind, delayMs, killedWhile, killedAtMs: killedAt, exit: result.signal ?? result.code, resumedFrom: before, latestAfter: (await listCheckpoints(out)).at(-1)?.step ?? 0, tempFoldersLeft: leftTmp, ...(result.signal ? {} : { stderr: result.stderr.slice(-2000) }) };
}

describe('SIGKILL at random moments, --resume after each', () => {
  it(`ends with the straight run's files, byte for byte (seed ${SEED})`, { timeout: 900_000 }, async () => {
    const teacher = await fixtureTeacher();
    const straight = await mkdtemp(join(tmpdir(), 'sb-straight-'));
    const killed = await mkdtemp(join(tmpdir(), 'sb-killed-'));
    // The straight run goes on beside the killed one (the machine has two cores) and times its steps.
    const clock = stepClock(straight);
    const straightRun = startChild(distillArgs(teacher, straight)).exited;

    const rand = mulberry32(SEED);
    // A write kill and a step kill in a seeded order, another random one, then a kill once the last
    // checkpoint is in place (the resume then only exports).
    const kinds: Kind[] = rand() < 0.5 ? ['write', 'step'] : ['step', 'write'];
    kinds.push(rand() < 0.5 ? 'write' : 'step', 'export');
    const log: Record<string, unknown>[] = [];
    const report = () => `seed ${SEED} (SWIFTBRUSH_KILL_SEED), kills:\n${log.map((l) => JSON.stringify(l)).join('\n')}`;
    let first = true;
    for (const kind of kinds) {
      // The first write kill comes at once (inside the write for sure); later ones anywhere in it.
      const delayMs = kind === 'write' ? (first ? 0 : Math.round(rand() * 40)) : kind === 'step' ? Math.round(rand() * (clock.stepMs() ?? 1000)) : 0;
      if (kind === 'write') first = false;
      const outcome = await killOnce(distillArgs(teacher, killed), killed, kind, delayMs);
      log.push(outcome);
      expect(outcome.exit, report()).toBe('SIGKILL');
      // Whatever the kill hit, every checkpoint folder in place is complete.
      for (const { path } of await listCheckpoints(killed)) {
        for (const file of CHECKPOINT_FILES) expect(existsSync(join(path, file)), `${path}/${file}\n${report()}`).toBe(true);
        JSON.parse(readFileSync(join(path, 'state.json'), 'utf8'));
      }
    }
    expect(log.some((l) => l.killedWhile?.toString().startsWith('writing') && (l.tempFoldersLeft as string[]).length > 0), `no kill landed inside a checkpoint write\n${report()}`).toBe(true);

    const last = await startChild(distillArgs(teacher, killed)).exited;
    expect(last.code, `${last.stderr}\n${report()}`).toBe(0);
    const ref = await straightRun;
    clock.stop();
    expect(ref.code, ref.stderr).toBe(0);

    const checkpoints = (dir: string) => listCheckpoints(dir).then((list) => list.map((c) => `checkpoint-${c.step}`));
    // A kill between a checkpoint's rename and the pruning may leave one old checkpoint more: the straight run's are all there.
    expect(await checkpoints(killed), report()).toEqual(expect.arrayContaining(await checkpoints(straight)));
    expect((await checkpoints(straight)).at(-1)).toBe(`checkpoint-${STEPS}`);
    expect((await checkpoints(killed)).at(-1)).toBe(`checkpoint-${STEPS}`);
    expect(readFileSync(join(killed, 'config.json'), 'utf8')).toBe(readFileSync(join(straight, 'config.json'), 'utf8'));
    for (const dir of ['student', 'lora', 'samples', ...(await checkpoints(straight))]) {
      expect((await filesUnder(join(straight, dir))).length).toBeGreaterThan(0);
      expect(await bytewiseDifferences(join(straight, dir), join(killed, dir)), `${dir}\n${report()}`).toEqual([]);
    }
    expect(await bytewiseDifferences(join(straight, 'student', 'unet'), join(straight, `checkpoint-${STEPS}`, 'unet_ema'))).toEqual([]);
    expect(readdirSync(killed).filter((n) => n.startsWith('.checkpoint-')), `temp folders of killed writes are removed\n${report()}`).toEqual([]);
    const metrics = metricsByStep(straight);
    expect([...metrics.keys()]).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1));
    expect(metricsByStep(killed), report()).toEqual(metrics);
    for (const dir of [teacher, straight, killed]) await rm(dir, { recursive: true, force: true }); // kept when the test fails
  });
});
