/**
 * What a user meets around a run, through the real CLI (child processes, tiny teacher, wasm):
 * --out never deletes foreign files, --resume keeps the run's settings, a width mismatch is refused
 * before any work, and SIGINT stops a run within one step (a second one at once).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN, EMBEDDINGS, exportedWeights, makeTinyTeacher, runCli, tinyDistillArgs, worstWeightDiff } from '../operators/helpers.ts';
import { makeRows, writeLayout } from '../streams/helpers.ts';

const tmp = (prefix: string) => mkdtemp(join(tmpdir(), prefix));
const lines = (path: string) => (existsSync(path) ? readFileSync(path, 'utf8').split('\n').filter(Boolean).length : 0);
const checkpoints = (dir: string) => readdirSync(dir).filter((n) => /^checkpoint-\d+$/.test(n)).map((n) => Number(n.slice(11))).sort((a, b) => a - b);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A seeded generator (mulberry32), so the signal moments are the same on every run. */
function random(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function start(argv: string[]) {
  const child = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'warn' } });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
  return { child, exit, stderr: () => stderr };
}

async function waitFor(predicate: () => boolean, what: string, ms = 120_000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

let teacher: string;
beforeAll(async () => {
  teacher = await makeTinyTeacher(9);
});

describe('--out', () => {
  it('default --out DIR refuses a folder holding a file it did not write, and leaves it alone', async () => {
    const out = await tmp('sb-out-');
    await writeFile(join(out, 'important.txt'), 'keep me');
    const r = runCli([BIN, 'default', '--out', out, '--steps', '1', '--n', '10']);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`--out ${out} holds important.txt, which a \`default\` run does not write`);
    expect(readdirSync(out)).toEqual(['important.txt']);
    expect(await readFile(join(out, 'important.txt'), 'utf8')).toBe('keep me');
  });
});

describe('--resume keeps the run\'s settings', () => {
  it('restores what the checkpoint was made with, prints the changes, refuses a LoRA rank change by name', { timeout: 300_000 }, async () => {
    const out = join(await tmp('sb-resume-'), 'run');
    const configFile = join(out, '..', 'my.json');
    await writeFile(configFile, JSON.stringify({ batchSize: 2, guidanceScale: 2.5, emaDecay: 0.9, loraRank: 2, loraAlpha: 4, seed: 3, validationEvery: 0 }));
    const first = runCli([BIN, 'distill', '--backend', 'wasm', '--config', configFile, '--teacher', teacher, '--embeddings', EMBEDDINGS, '--out', out, '--steps', '2', '--checkpoint-every', '1']);
    expect(first.status, first.stderr).toBe(0);
    const written = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));

    const resumed = runCli([BIN, 'distill', '--backend', 'wasm', '--out', out, '--resume', '--steps', '3', '--guidance-scale', '3']);
    expect(resumed.status, resumed.stderr).toBe(0);
    expect(resumed.stderr).toContain('resuming with changed settings: steps 2 → 3, guidanceScale 2.5 → 3');
    const after = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(after).toEqual({ ...written, steps: 3, guidanceScale: 3 });
    expect(after).toMatchObject({ batchSize: 2, emaDecay: 0.9, loraRank: 2, loraAlpha: 4, seed: 3, checkpointEvery: 1 });
    expect(JSON.parse(await readFile(join(out, 'checkpoint-3', 'state.json'), 'utf8')).settings).toEqual(after);

    const refused = runCli([BIN, 'distill', '--backend', 'wasm', '--out', out, '--resume', '--steps', '4', '--lora-rank', '4']);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/--resume: loraRank cannot change \(--lora-rank\): .*checkpoint-3 was trained with 2, asked for 4/);

    // The config.json a run writes is accepted back by --config.
    const again = runCli([BIN, 'distill', '--backend', 'wasm', '--config', join(out, 'config.json'), '--out', `${out}-again`, '--steps', '1']);
    expect(again.status, again.stderr).toBe(0);
    expect(JSON.parse(await readFile(join(`${out}-again`, 'config.json'), 'utf8'))).toEqual({ ...after, steps: 1 });
  });
});

describe('shapes are checked before any work', () => {
  it('embeddings of width 16 against cross_attention_dim 32: distill and sample name the file and both numbers', { timeout: 120_000 }, async () => {
    const dir = await tmp('sb-width-');
    const file = join(dir, 'narrow.parquet');
    const rows = makeRows(6, 8, 16, (r) => (r === 0 ? '' : `prompt ${r}`));
    writeLayout(file, 'list', rows.prompts, rows.embeds, [8, 16]);
    const message = `${file}: embeddings are [8, 16] per row (D = 16, from its swiftbrush.embedding_shape metadata), but the UNet ${join(teacher, 'unet', 'config.json')}`;
    const out = join(dir, 'run');
    const distill = runCli(tinyDistillArgs(teacher, out, ['--embeddings', file, '--steps', '1']));
    expect(distill.status).toBe(1);
    expect(distill.stderr).toContain(message);
    expect(distill.stderr).toMatch(/has cross_attention_dim 32/);
    expect(existsSync(join(out, 'config.json'))).toBe(false);
    const sample = runCli([BIN, 'sample', '--backend', 'wasm', '--unet', teacher, '--embeddings', file, '--out', join(dir, 'samples')]);
    expect(sample.status).toBe(1);
    expect(sample.stderr).toContain(`${file}: embeddings are [8, 16] per row`);
    expect(sample.stderr).toMatch(/cross_attention_dim 32/);
  });
});

describe('signals', () => {
  it('SIGINT at a random moment stops within one step with a checkpoint and exit 130; --resume alone reaches the straight run', { timeout: 600_000 }, async () => {
    const extra = ['--steps', '6', '--seed', '5', '--checkpoint-every', '100', '--validation-every', '2'];
    const base = await tmp('sb-signal-');
    const straight = join(base, 'straight');
    const stopped = join(base, 'stopped');
    const s = runCli(tinyDistillArgs(teacher, straight, extra));
    expect(s.status, s.stderr).toBe(0);

    const seed = Number(process.env.SWIFTBRUSH_SIGNAL_SEED ?? 20261201);
    const rnd = random(seed);
    const afterSteps = 1 + Math.floor(rnd() * 3);
    const delayMs = Math.floor(rnd() * 1500);
    const moment = `seed ${seed}: signal after ${afterSteps} step(s) + ${delayMs} ms`;
    const run = start(tinyDistillArgs(teacher, stopped, extra));
    await waitFor(() => lines(join(stopped, 'metrics.jsonl')) >= afterSteps, `${afterSteps} steps`);
    await sleep(delayMs);
    run.child.kill('SIGINT');
    const seen = lines(join(stopped, 'metrics.jsonl'));
    const { code } = await run.exit;
    expect(code, `${moment}: ${run.stderr()}`).toBe(130);
    expect(run.stderr(), moment).toMatch(/continue with: npx swiftbrush distill --out .*stopped --resume/);
    const [stopStep] = checkpoints(stopped);
    expect(stopStep, moment).toBeGreaterThanOrEqual(afterSteps);
    // At most the step under way when the signal came (or the next, if it came during a checkpoint write).
    expect(stopStep!, `${moment}: ${seen} steps logged at the signal`).toBeLessThanOrEqual(seen + 1);
    expect(stopStep!, moment).toBeLessThan(6);

    const r = runCli([BIN, 'distill', '--backend', 'wasm', '--out', stopped, '--resume']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/changed settings/);
    expect(worstWeightDiff(await exportedWeights(straight), await exportedWeights(stopped)), moment).toBeLessThanOrEqual(1e-6);
  });

  it('a second SIGINT ends the process at once, keeping every complete checkpoint', { timeout: 300_000 }, async () => {
    const out = join(await tmp('sb-signal2-'), 'run');
    // Windows of 4 micro-batches: the first signal, sent as a window starts, is seen after its first
    // micro-batch; the second, sent once the first was seen, lands while 3 micro-batches remain.
    const run = start(tinyDistillArgs(teacher, out, ['--steps', '50', '--grad-accum', '4', '--checkpoint-every', '1']));
    await waitFor(() => existsSync(out) && checkpoints(out).length >= 1, 'a checkpoint');
    run.child.kill('SIGINT');
    await waitFor(() => run.stderr().includes('stopping:'), 'the first signal to be seen');
    run.child.kill('SIGINT');
    const { code, signal } = await run.exit;
    expect({ code, signal }, run.stderr()).toEqual({ code: null, signal: 'SIGINT' });
    expect(existsSync(join(out, 'student'))).toBe(false);
    const kept = checkpoints(out);
    expect(kept.length).toBeGreaterThan(0);
    for (const step of kept) {
      for (const f of ['state.json', 'optimizer.safetensors', 'optimizer_lora.safetensors', 'unet/diffusion_pytorch_model.safetensors', 'unet_ema/diffusion_pytorch_model.safetensors', 'unet_lora/adapter_model.safetensors']) {
        expect(existsSync(join(out, `checkpoint-${step}`, f)), `checkpoint-${step}/${f}`).toBe(true);
      }
    }
    // It resumes from the last one.
    const r = runCli([BIN, 'distill', '--backend', 'wasm', '--out', out, '--resume', '--steps', String(kept.at(-1)! + 1)]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain(`steps 50 → ${kept.at(-1)! + 1}`);
  });
});


