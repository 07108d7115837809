/** `swiftbrush sample` and `swiftbrush eval` on a tiny 28x28 UNet (fast; not a quality check). */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src/tf.ts';
import type { Tensor3D, Tensor4D } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { UNet2DConditionModel } from '../../src/models/unet_2d_condition.ts';
import { NoiseSchedule } from '../../src/models/schedule.ts';
import { readSafetensors } from '../../src/models/safetensors.ts';
import { TEACHER_SCHEDULER_CONFIG } from '../../src/mnist/teacher.ts';
import { DEFAULT_CLASSIFIER_DIR } from '../../src/mnist/classifier.ts';
import { Scorer } from '../../src/mnist/score.ts';
import { sampleToDir } from '../../src/cli/sample.ts';
import { generate, loadPipeline, readPromptEmbeddings, sampleNoise } from '../../src/eval/sampling.ts';
import { evaluateModels, markdownTable, MODEL_KEYS } from '../../src/eval/evaluate.ts';

const EMBEDDINGS = 'data/embeddings.parquet';
const TINY = {
  sample_size: 28, in_channels: 1, out_channels: 1, block_out_channels: [4, 8],
  down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D'], up_block_types: ['CrossAttnUpBlock2D', 'UpBlock2D'],
  layers_per_block: 1, attention_head_dim: 2, cross_attention_dim: 32, norm_num_groups: 4,
};

let tmp: string;
let pipe: string;
beforeAll(async () => {
  await initBackend(process.env.SWIFTBRUSH_BACKEND ?? 'wasm');
  tmp = await mkdtemp(join(tmpdir(), 'sample-eval-'));
  pipe = join(tmp, 'teacher');
  const unet = UNet2DConditionModel.fromConfig(TINY, { seed: 1 });
  await unet.savePretrained(join(pipe, 'unet'));
  unet.dispose();
  await mkdir(join(pipe, 'scheduler'), { recursive: true });
  await writeFile(join(pipe, 'scheduler', 'scheduler_config.json'), JSON.stringify(TEACHER_SCHEDULER_CONFIG));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('sample', () => {
  it('writes images [N,C,H,W] in [-1,1], prompt_index, prompts.txt and grid.png; deterministic across batch sizes', async () => {
    const out = join(tmp, 's1');
    const r = await sampleToDir({ unet: pipe, embeddings: EMBEDDINGS, out, limit: 3, n: 5, batchSize: 2, seed: 7 });
    expect(r).toMatchObject({ n: 5, prompts: 3, steps: 1, guidanceScale: 1 });
    const f = await readSafetensors(r.files.images);
    const images = f.tensors.get('images')!;
    expect(images.shape).toEqual([5, 1, 28, 28]);
    expect(images.dtype).toBe('F32');
    expect(Array.from(f.tensors.get('prompt_index')!.data as Int32Array)).toEqual([0, 1, 2, 0, 1]);
    expect(f.tensors.get('prompt_index')!.dtype).toBe('I32');
    expect((images.data as Float32Array).every((v) => v >= -1 && v <= 1)).toBe(true);
    const { prompts } = await readPromptEmbeddings(EMBEDDINGS, 3);
    expect(await readFile(r.files.prompts, 'utf8')).toBe(prompts.join('\n') + '\n');
    expect(existsSync(r.files.grid)).toBe(true);
    const again = await sampleToDir({ unet: join(pipe, 'unet'), embeddings: EMBEDDINGS, out: join(tmp, 's2'), limit: 3, n: 5, batchSize: 5, seed: 7 });
    expect((await readSafetensors(again.files.images)).tensors.get('images')!.data).toEqual(images.data);
  });

  it('one step is x0 = (z − √(1−ᾱ_999) ε(z, 999, y)) / √ᾱ_999 (clamped); DDIM with CFG runs from the null prompt', async () => {
    const { unet, schedule } = await loadPipeline(pipe);
    const { embeds, shape } = await readPromptEmbeddings(EMBEDDINGS, 2);
    const g = generate({ unet, schedule, embeds, embedShape: shape, promptIndex: Int32Array.of(1), steps: 1, guidanceScale: 1, seed: 3 });
    const a = schedule.alphaBar(999);
    expect(a).toBeCloseTo(0.0046601, 6);
    const want = tf.tidy(() => {
      const z = tf.tensor4d(sampleNoise(3, 0, [28, 28, 1]), [1, 28, 28, 1]);
      const eps = unet.forward(z as Tensor4D, [999], tf.tensor3d(embeds.subarray(shape[0] * shape[1]), [1, ...shape]) as Tensor3D);
      return tf.clipByValue(tf.div(tf.sub(z, tf.mul(eps, Math.sqrt(1 - a))), Math.sqrt(a)), -1, 1).dataSync() as Float32Array;
    });
    let d = 0;
    want.forEach((v, i) => (d = Math.max(d, Math.abs(v - g.images[i]!))));
    expect(d).toBeLessThan(1e-4);
    const before = tf.memory().numTensors;
    const ddim = generate({ unet, schedule, embeds, embedShape: shape, promptIndex: Int32Array.of(0, 1, 0), steps: 2, guidanceScale: 2, seed: 3, nullEmbed: new Float32Array(shape[0] * shape[1]) });
    expect(tf.memory().numTensors).toBe(before);
    expect(ddim.shape).toEqual([3, 28, 28, 1]);
    expect(ddim.images.every((v) => Number.isFinite(v) && v >= -1 && v <= 1)).toBe(true);
    expect(() => generate({ unet, schedule, embeds, embedShape: shape, promptIndex: Int32Array.of(0), steps: 2, guidanceScale: 2, seed: 3 })).toThrow(/null-prompt/);
    unet.dispose();
  });

  it('a UNet folder without ../scheduler is refused clearly; so is a folder that is not a model', async () => {
    const lone = join(tmp, 'lone', 'unet_only');
    const unet = UNet2DConditionModel.fromConfig(TINY);
    await unet.savePretrained(lone);
    unet.dispose();
    await expect(loadPipeline(lone)).rejects.toThrow(/no scheduler config; looked for .*scheduler\/scheduler_config\.json/);
    await expect(loadPipeline(tmp)).rejects.toThrow(/no diffusers UNet here; expected a diffusers pipeline folder .* or a UNet folder inside one/);
    const s = await loadPipeline(lone, { fallbackSchedule: NoiseSchedule.fromConfig(TEACHER_SCHEDULER_CONFIG) });
    expect(s.schedulerSource).toBe('fallback');
    s.unet.dispose();
  });

  it('the real CLI writes the files', async () => {
    const out = join(tmp, 'cli');
    const r = await promisify(execFile)(process.execPath, ['bin/swiftbrush.mjs', 'sample', '--unet', pipe, '--embeddings', EMBEDDINGS, '--out', out, '--limit', '2', '--steps', '2', '--backend', 'wasm'], { env: { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'warn' } });
    expect(r.stdout).toMatch(/2 images \(2 prompts, 2 steps, guidance 3/);
    expect((await readSafetensors(join(out, 'images.safetensors'))).tensors.get('images')!.shape).toEqual([2, 1, 28, 28]);
  });
});

const shipped = existsSync(join(DEFAULT_CLASSIFIER_DIR, 'model.safetensors'));

describe.skipIf(!shipped)('eval', () => {
  it('reports the three models with M keys, writes the comparison grid, and reuses the teacher cache', async () => {
    const scorer = await Scorer.create();
    try {
      const common = { teacher: pipe, student: join(pipe, 'unet'), n: 12, teacherSteps: 2, guidanceScale: 2, batchSize: 12, scorer };
      const grid = join(tmp, 'eval', 'grid.png');
      const r = await evaluateModels({ ...common, gridPath: grid, gridCols: 1 });
      expect(Object.keys(r.report)).toEqual([...MODEL_KEYS]);
      for (const k of MODEL_KEYS) {
        expect(Object.keys(r.report[k]!).sort()).toEqual(['digit_acc', 'fd', 'n', 'samples_per_s', 'slant_acc', 'thickness_acc']);
        expect(r.report[k]!.n).toBe(12);
        expect(r.report[k]!.samples_per_s).toBeGreaterThan(0);
      }
      // the student IS the teacher here, and both one-step rows use the same noise: same figures
      expect(r.report.student_1step!.fd).toBeCloseTo(r.report.teacher_1step!.fd, 6);
      expect(r.grid).toBe(grid);
      expect(existsSync(grid)).toBe(true);
      expect(markdownTable(r.report)).toMatch(/\| teacher_ddim25 \|/);
      expect(markdownTable(r.report)).toMatch(/student sampling [\d.]+x the teacher's/);

      // cache: --only teacher --out DIR/eval.json (+ eval_samples.safetensors), then reuse
      const t = await evaluateModels({ ...common, only: 'teacher', teacherSamplesOut: join(pipe, 'eval_samples.safetensors') });
      expect(Object.keys(t.report)).toEqual(['teacher_ddim25', 'teacher_1step']);
      expect(t.report.teacher_ddim25).toEqual({ ...r.report.teacher_ddim25, samples_per_s: t.report.teacher_ddim25!.samples_per_s });
      await writeFile(join(pipe, 'eval.json'), JSON.stringify({ ...t.report, teacher_ddim25: { ...t.report.teacher_ddim25, fd: 123.5 } }));
      const reused = await evaluateModels({ ...common, gridPath: join(tmp, 'eval', 'grid2.png'), gridCols: 1 });
      expect(reused.reused).toEqual(['teacher_ddim25', 'teacher_1step']);
      expect(reused.report.teacher_ddim25!.fd).toBe(123.5);
      // cached samples/s may come from another backend: no speed ratio is drawn against it
      expect(markdownTable(reused.report, reused.reused)).toMatch(/speeds not compared/);
      expect(markdownTable(reused.report, reused.reused)).not.toMatch(/student sampling/);
      expect(reused.report.student_1step!.fd).toBeCloseTo(r.report.student_1step!.fd, 6);
      expect(await readFile(join(tmp, 'eval', 'grid2.png'))).toEqual(await readFile(grid));
      const recomputed = await evaluateModels({ ...common, only: 'teacher', recomputeTeacher: true });
      expect(recomputed.reused).toEqual([]);
      // a cache at another n is not used
      const other = await evaluateModels({ ...common, n: 10, only: 'teacher' });
      expect(other.reused).toEqual([]);
    } finally {
      scorer.dispose();
    }
  });
});
