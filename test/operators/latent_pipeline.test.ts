/**
 * A latent teacher as a diffusers pipeline folder (unet/, scheduler/, vae/): distillation writes
 * validation grids decoded through the VAE, exports the student as a pipeline folder (its unet/,
 * the teacher's other components, model_index.json), and `sample` decodes through the exported VAE.
 * A teacher folder without a scheduler is refused, naming the layouts that work.
 */
import { existsSync, readFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { decode } from 'fast-png';
import { imageGrid } from '../../src/util/png.ts';
import { tf } from '../../src/tf.ts';
import type { Tensor4D } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { UNet2DConditionModel } from '../../src/models/unet_2d_condition.ts';
import { AutoencoderKL } from '../../src/models/autoencoder_kl.ts';
import { readSafetensors } from '../../src/models/safetensors.ts';
import { completeStudentPipeline, resolvePipelineDirs } from '../../src/models/pipeline_folder.ts';
import { runDistillation } from '../../src/operators/run.ts';
import { resolveTeacherDirs } from '../../src/operators/state.ts';
import { sampleToDir } from '../../src/cli/sample.ts';
import { evaluateModels } from '../../src/eval/evaluate.ts';
import { nchwToNhwc } from '../models/scheduler-fixture.ts';
import { EMBEDDINGS, TINY_SCHEDULER, TINY_UNET, maxAbsDiff } from './helpers.ts';
import { VAE_FIXTURE_DIR } from '../fixtures.ts';

/** tiny UNet on 4 × 8 × 8 latents + the diffusers-tiny-vae (×2: 16 × 16 RGB images) + a DDIM scheduler. */
async function makeLatentTeacher(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sb-latent-teacher-'));
  const unet = UNet2DConditionModel.fromConfig({ ...TINY_UNET, in_channels: 4, out_channels: 4 }, { seed: 4 });
  await unet.savePretrained(join(dir, 'unet'));
  unet.dispose();
  await mkdir(join(dir, 'scheduler'));
  await writeFile(join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify(TINY_SCHEDULER));
  await mkdir(join(dir, 'vae'));
  for (const f of ['config.json', 'diffusion_pytorch_model.safetensors']) await cp(join(VAE_FIXTURE_DIR, f), join(dir, 'vae', f));
  return dir;
}

beforeAll(async () => {
  await initBackend('wasm');
});

describe('latent teacher pipeline folder', () => {
  it('distils with validation grids decoded through the VAE and exports a pipeline folder that `sample` decodes', { timeout: 300_000 }, async () => {
    const teacher = await makeLatentTeacher();
    const out = await mkdtemp(join(tmpdir(), 'sb-latent-run-'));
    const r = await runDistillation({ teacher, embeddings: EMBEDDINGS, out, steps: 2, validationEvery: 2, validationPrompts: 2, config: { batchSize: 1, loraRank: 2, loraAlpha: 4, seed: 3 } });
    expect(r.step).toBe(2);

    // Grid: 2 prompts × 4 samples of decoded 16 × 16 RGB images, not 8 × 8 × 4 latents (same labels and padding).
    const png = decode(readFileSync(join(out, 'samples', 'step-000002.png')));
    const labels = { cols: 4, rowLabels: ['a', 'b'], columnLabels: [{ text: 'student, 1 step, at step 2', from: 0, to: 4 }] };
    const decodedLayout = imageGrid(new Float32Array(8 * 16 * 16 * 3), [8, 16, 16, 3], labels);
    // (the width also holds the prompts' labels, so it is the height that tells the tile size; latents have 4 channels)
    expect([png.height, png.channels]).toEqual([decodedLayout.height, 3]);

    // Export: the student's unet/ beside the teacher's scheduler/ and vae/, and a StableDiffusionPipeline index.
    const student = r.studentDir;
    for (const f of ['unet/config.json', 'unet/diffusion_pytorch_model.safetensors', 'scheduler/scheduler_config.json', 'vae/config.json', 'vae/diffusion_pytorch_model.safetensors']) expect(existsSync(join(student, f)), f).toBe(true);
    expect(readFileSync(join(student, 'vae', 'diffusion_pytorch_model.safetensors')).equals(readFileSync(join(VAE_FIXTURE_DIR, 'diffusion_pytorch_model.safetensors')))).toBe(true);
    const index = JSON.parse(await readFile(join(student, 'model_index.json'), 'utf8'));
    expect(index).toMatchObject({ _class_name: 'StableDiffusionPipeline', unet: ['diffusers', 'UNet2DConditionModel'], vae: ['diffusers', 'AutoencoderKL'], scheduler: ['diffusers', TINY_SCHEDULER._class_name], text_encoder: [null, null], tokenizer: [null, null], safety_checker: [null, null], feature_extractor: [null, null], requires_safety_checker: false });

    // sample: images decoded through the exported VAE from the latents it also writes.
    const s = await sampleToDir({ unet: student, embeddings: EMBEDDINGS, out: join(out, 'sampled'), limit: 2, seed: 1 });
    const t = (await readSafetensors(s.files.images)).tensors;
    expect(t.get('images')!.shape).toEqual([2, 3, 16, 16]);
    expect(t.get('latents')!.shape).toEqual([2, 4, 8, 8]);
    expect(t.get('noise')!.shape).toEqual([2, 4, 8, 8]);
    const vae = await AutoencoderKL.fromPretrained(join(student, 'vae'));
    const latents = nchwToNhwc(t.get('latents')!.data as Float32Array, t.get('latents')!.shape);
    const decoded = tf.tidy(() => tf.transpose(vae.decodeToImages(tf.tensor4d(latents.data, latents.shape) as Tensor4D), [0, 3, 1, 2]).dataSync() as Float32Array);
    expect(maxAbsDiff(decoded, t.get('images')!.data as Float32Array)).toBeLessThanOrEqual(1e-5);
    vae.dispose();

    // eval decodes through the VAE too, and says so when the decoded images are not the MNIST scorer's [28, 28, 1].
    await expect(evaluateModels({ teacher, student, n: 2, only: 'student' })).rejects.toThrow(/eval: student_1step gives \[16,16,3\] images \(decoded through its VAE\); the MNIST scorer reads \[28, 28, 1\]/);
  });

  it('a teacher folder without scheduler/ is refused with the two layouts that work', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sb-no-scheduler-'));
    const unet = UNet2DConditionModel.fromConfig(TINY_UNET);
    await unet.savePretrained(join(dir, 'unet'));
    unet.dispose();
    const layouts = /no scheduler \(scheduler_config\.json\); a teacher is a diffusers pipeline folder \(.*unet\/config\.json, .*scheduler\/scheduler_config\.json, and vae\/ for a latent model; model_index\.json optional\) or a UNet folder inside one \(.*config\.json with \.\.\/scheduler\/scheduler_config\.json beside it\)/;
    await expect(resolveTeacherDirs(dir)).rejects.toThrow(layouts);
    await expect(resolveTeacherDirs(join(dir, 'unet'))).rejects.toThrow(layouts);
    await expect(runDistillation({ teacher: dir, embeddings: EMBEDDINGS, out: join(dir, 'out'), steps: 1 })).rejects.toThrow(layouts);
    await expect(resolveTeacherDirs(join(dir, 'nothing'))).rejects.toThrow(/nothing: no diffusers UNet here; expected a diffusers pipeline folder/);
  });
});

describe('completeStudentPipeline', () => {
  async function teacherWith(files: Record<string, string>): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'sb-components-'));
    for (const [path, text] of Object.entries(files)) {
      await mkdir(join(dir, path, '..'), { recursive: true });
      await writeFile(join(dir, path), text);
    }
    return dir;
  }
  const unet = JSON.stringify({ _class_name: 'UNet2DConditionModel' });

  it('without model_index.json: copies every component folder (not other folders) and writes a StableDiffusionPipeline index naming their classes', async () => {
    const teacher = await teacherWith({
      'unet/config.json': unet,
      'scheduler/scheduler_config.json': JSON.stringify({ _class_name: 'DDIMScheduler' }),
      'vae/config.json': JSON.stringify({ _class_name: 'AutoencoderKL' }),
      'text_encoder/config.json': JSON.stringify({ architectures: ['CLIPTextModel'] }),
      'tokenizer/tokenizer_config.json': JSON.stringify({ tokenizer_class: 'CLIPTokenizer' }),
      'tokenizer/vocab.json': '{}',
      'samples/grid.png': 'not a component',
    });
    const out = await mkdtemp(join(tmpdir(), 'sb-student-'));
    const copied = await completeStudentPipeline(resolvePipelineDirs(teacher), out);
    expect(copied.sort()).toEqual(['scheduler', 'text_encoder', 'tokenizer', 'vae']);
    expect(existsSync(join(out, 'tokenizer', 'vocab.json'))).toBe(true);
    expect(existsSync(join(out, 'samples'))).toBe(false);
    const index = JSON.parse(await readFile(join(out, 'model_index.json'), 'utf8'));
    expect(index).toMatchObject({ scheduler: ['diffusers', 'DDIMScheduler'], vae: ['diffusers', 'AutoencoderKL'], text_encoder: ['transformers', 'CLIPTextModel'], tokenizer: ['transformers', 'CLIPTokenizer'], unet: ['diffusers', 'UNet2DConditionModel'] });
  });

  it("with model_index.json: copies the components it lists and keeps the teacher's index", async () => {
    const teacherIndex = { _class_name: 'StableDiffusionPipeline', _diffusers_version: '0.21.0', unet: ['diffusers', 'UNet2DConditionModel'], scheduler: ['diffusers', 'PNDMScheduler'], vae: ['diffusers', 'AutoencoderKL'], safety_checker: [null, null] };
    const teacher = await teacherWith({ 'model_index.json': JSON.stringify(teacherIndex), 'unet/config.json': unet, 'scheduler/scheduler_config.json': '{}', 'vae/config.json': '{}', 'extra/config.json': '{}' });
    const out = await mkdtemp(join(tmpdir(), 'sb-student-'));
    expect((await completeStudentPipeline(resolvePipelineDirs(teacher), out)).sort()).toEqual(['scheduler', 'vae']);
    expect(JSON.parse(await readFile(join(out, 'model_index.json'), 'utf8'))).toEqual(teacherIndex);
  });

  it('a pixel-space teacher without an index gets its scheduler copied and no model_index.json; a UNet folder inside a pipeline takes its siblings', async () => {
    const teacher = await teacherWith({ 'unet/config.json': unet, 'scheduler/scheduler_config.json': JSON.stringify({ _class_name: 'DDPMScheduler' }) });
    const out = await mkdtemp(join(tmpdir(), 'sb-student-'));
    expect(await completeStudentPipeline(resolvePipelineDirs(teacher), out)).toEqual(['scheduler']);
    expect(existsSync(join(out, 'model_index.json'))).toBe(false);
    const fromUnetFolder = await mkdtemp(join(tmpdir(), 'sb-student-'));
    expect(await completeStudentPipeline(resolvePipelineDirs(join(teacher, 'unet')), fromUnetFolder)).toEqual(['scheduler']);
  });
});
