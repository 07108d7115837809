/** Tiny teachers and states for the operator tests (fast on wasm). */
import { readFileSync } from 'node:fs';
import { copyFile, mkdtemp, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { initBackend } from '../../src/backend.ts';
import { UNet2DConditionModel } from '../../src/models/unet_2d_condition.ts';
import { readNullEmbedding } from '../../src/streams/reader.ts';
import { createDistillState, OFFICIAL_DEFAULTS, type DistillConfig, type DistillState } from '../../src/operators/state.ts';
import { tf } from '../../src/tf.ts';
import { readSafetensors } from '../../src/models/safetensors.ts';
import { TEACHER_SCHEDULER_CONFIG } from '../../src/mnist/teacher.ts';
import { SCHEDULER_FIXTURE_DIR, UNET_FIXTURE_DIR } from '../fixtures.ts';

export const EMBEDDINGS = fileURLToPath(new URL('../../data/embeddings.parquet', import.meta.url));

export const TINY_UNET = {
  sample_size: 8,
  in_channels: 1,
  out_channels: 1,
  block_out_channels: [8, 16],
  down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D'],
  up_block_types: ['CrossAttnUpBlock2D', 'UpBlock2D'],
  layers_per_block: 1,
  attention_head_dim: 2,
  cross_attention_dim: 32,
  norm_num_groups: 4,
};

export const TINY_SCHEDULER = TEACHER_SCHEDULER_CONFIG;

/** A random tiny teacher saved as a diffusers pipeline folder (unet/ + scheduler/). */
export async function makeTinyTeacher(seed = 3): Promise<string> {
  await initBackend('wasm');
  const dir = await mkdtemp(join(tmpdir(), 'sb-teacher-'));
  const unet = UNet2DConditionModel.fromConfig(TINY_UNET, { seed });
  await unet.savePretrained(join(dir, 'unet'));
  unet.dispose();
  await mkdir(join(dir, 'scheduler'), { recursive: true });
  await writeFile(join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify(TINY_SCHEDULER));
  return dir;
}

/** The diffusers fixture UNet (test/fixtures/diffusers-tiny-unet) and scheduler as a pipeline folder (unet/ + scheduler/). */
export async function fixtureTeacher(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sb-fixture-teacher-'));
  await mkdir(join(dir, 'unet'));
  await mkdir(join(dir, 'scheduler'));
  for (const name of ['config.json', 'diffusion_pytorch_model.safetensors']) await copyFile(join(UNET_FIXTURE_DIR, name), join(dir, 'unet', name));
  await copyFile(join(SCHEDULER_FIXTURE_DIR, 'scheduler_config.json'), join(dir, 'scheduler', 'scheduler_config.json'));
  return dir;
}

/** Test config: small LoRA, lrs large enough to move weights visibly. */
export function testConfig(overrides: Partial<DistillConfig> = {}): DistillConfig {
  return { ...OFFICIAL_DEFAULTS, batchSize: 2, loraRank: 2, loraAlpha: 4, studentLr: 1e-3, loraLr: 1e-2, emaDecay: 0.9, seed: 11, ...overrides };
}

export async function makeState(teacherDir: string, config: DistillConfig): Promise<DistillState> {
  await initBackend('wasm');
  await tf.setBackend('wasm');
  const nul = await readNullEmbedding(EMBEDDINGS);
  return createDistillState({ teacherDir, nullEmbeds: nul.embeds, embedShape: nul.shape, config });
}

/** Deterministic fake embedding batches [B, 8, 32]. */
export function fakeBatch(i: number, batchSize = 2) {
  const embeds = new Float32Array(batchSize * 8 * 32);
  for (let j = 0; j < embeds.length; j++) embeds[j] = Math.sin(0.37 * j + 1.3 * i);
  return { embeds, shape: [batchSize, 8, 32] as [number, number, number], prompts: Array.from({ length: batchSize }, (_, k) => `p${i}-${k}`), position: { epoch: 0, batchIndex: i } };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** The exported student (diffusers keys) and LoRA (PEFT keys) weights of a finished run folder. */
export async function exportedWeights(dir: string): Promise<Map<string, Float32Array>> {
  const student = (await readSafetensors(join(dir, 'student', 'unet', 'diffusion_pytorch_model.safetensors'))).tensors;
  const lora = (await readSafetensors(join(dir, 'lora', 'adapter_model.safetensors'))).tensors;
  return new Map([...[...student].map(([k, v]) => [`student/${k}`, v.data as Float32Array] as const), ...[...lora].map(([k, v]) => [`lora/${k}`, v.data as Float32Array] as const)]);
}

export const BIN = fileURLToPath(new URL('../../bin/swiftbrush.mjs', import.meta.url));

/** argv of a small `swiftbrush distill` on wasm (tiny LoRA, large student lr); later flags in `extra` win. */
export function tinyDistillArgs(teacher: string, out: string, extra: string[] = []): string[] {
  return [BIN, 'distill', '--backend', 'wasm', '--teacher', teacher, '--embeddings', EMBEDDINGS, '--out', out, '--batch-size', '2', '--validation-every', '0', '--lora-rank', '2', '--lora-alpha', '4', '--student-lr', '1e-3', '--ema-decay', '0.9', ...extra];
}

/** Runs the CLI in a child process (warnings and errors only on stderr). */
export function runCli(argv: string[]): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, argv, { encoding: 'utf8', env: { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'warn' } });
}

/** Largest element difference between two weight maps with the same keys (throws if the keys differ). */
export function worstWeightDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  const keys = (m: Map<string, Float32Array>) => [...m.keys()].sort().join('\n');
  if (keys(a) !== keys(b)) throw new Error('the two runs exported different weight names');
  let worst = 0;
  for (const [k, v] of a) worst = Math.max(worst, maxAbsDiff(v, b.get(k)!));
  return worst;
}

/** Every file under `dir` (paths relative to it, sorted). */
export async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1))
    .sort();
}

/**
 * Where two folders differ byte for byte: files only one holds, and files whose bytes differ
 * (relative paths, e.g. `unet/diffusion_pytorch_model.safetensors`). Empty when identical.
 */
export async function bytewiseDifferences(a: string, b: string): Promise<string[]> {
  const [fa, fb] = await Promise.all([filesUnder(a), filesUnder(b)]);
  const differences = [...fa.filter((f) => !fb.includes(f)).map((f) => `only in ${a}: ${f}`), ...fb.filter((f) => !fa.includes(f)).map((f) => `only in ${b}: ${f}`)];
  for (const f of fa.filter((f) => fb.includes(f))) {
    const [x, y] = await Promise.all([readFile(join(a, f)), readFile(join(b, f))]);
    if (!x.equals(y)) differences.push(`bytes differ: ${f}`);
  }
  return differences;
}

/** The metrics that must repeat exactly, per step (the last line logged for it; timings and memory differ). */
export function metricsByStep(out: string): Map<number, unknown> {
  const byStep = new Map<number, unknown>();
  for (const line of readFileSync(join(out, 'metrics.jsonl'), 'utf8').split('\n').filter(Boolean)) {
    const r = JSON.parse(line) as Record<string, unknown>;
    byStep.set(r.step as number, [r.micro_step, r.loss_vsd, r.loss_lora, r.grad_norm_student, r.grad_norm_lora, r.skipped, r.skipped_total, r.lr_student, r.lr_lora]);
  }
  return byStep;
}
