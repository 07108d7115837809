/**
 * diffusers pipeline folders: which subfolders hold the UNet, the scheduler and the VAE, and the
 * student's pipeline folder on export (its own unet/ beside copies of the teacher's other
 * components and a model_index.json that diffusers' `from_pretrained` reads).
 */
import { existsSync } from 'node:fs';
import { cp, readdir, readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { writeJsonAtomic } from '../util/fs.ts';
import { CONFIG_NAME } from './unet_2d_condition.ts';

export const SCHEDULER_CONFIG = 'scheduler_config.json';
export const MODEL_INDEX = 'model_index.json';

export interface PipelineDirs {
  /** The pipeline folder whose other components travel with an exported student (null for a lone UNet folder). */
  root: string | null;
  unet: string;
  /** The scheduler folder (holding scheduler_config.json), null when there is none. */
  scheduler: string | null;
  /** The VAE folder of a latent model, null for a pixel-space one. */
  vae: string | null;
}

/** The two folder layouts a teacher (or a student to sample) may have, for error messages. */
export function pipelineLayouts(dir: string): string {
  return `a diffusers pipeline folder (${join(dir, 'unet', CONFIG_NAME)}, ${join(dir, 'scheduler', SCHEDULER_CONFIG)}, and vae/ for a latent model; model_index.json optional) or a UNet folder inside one (${join(dir, CONFIG_NAME)} with ../scheduler/${SCHEDULER_CONFIG} beside it)`;
}

/** Finds the components of `dir`: a pipeline folder (unet/, scheduler/, vae/) or a UNet folder inside one (siblings ../scheduler, ../vae). */
export function resolvePipelineDirs(dir: string): PipelineDirs {
  const component = (root: string, name: string, file: string) => (existsSync(join(root, name, file)) ? join(root, name) : null);
  if (existsSync(join(dir, 'unet', CONFIG_NAME))) {
    return { root: dir, unet: join(dir, 'unet'), scheduler: component(dir, 'scheduler', SCHEDULER_CONFIG), vae: component(dir, 'vae', CONFIG_NAME) };
  }
  if (existsSync(join(dir, CONFIG_NAME))) {
    const parent = dirname(resolve(dir));
    const scheduler = component(parent, 'scheduler', SCHEDULER_CONFIG);
    const vae = component(parent, 'vae', CONFIG_NAME);
    const root = scheduler || vae || existsSync(join(parent, MODEL_INDEX)) ? parent : null;
    return { root, unet: dir, scheduler, vae };
  }
  throw new Error(`${dir}: no diffusers UNet here; expected ${pipelineLayouts(dir)}`);
}

/** The [library, class] a pipeline index lists for a component folder, from its config, or null when none says. */
async function componentClass(dir: string): Promise<[string, string] | null> {
  const read = async (file: string) => (existsSync(join(dir, file)) ? (JSON.parse(await readFile(join(dir, file), 'utf8')) as Record<string, unknown>) : null);
  const config = (await read(CONFIG_NAME)) ?? (await read(SCHEDULER_CONFIG));
  if (typeof config?._class_name === 'string') return ['diffusers', config._class_name];
  if (Array.isArray(config?.architectures) && typeof config.architectures[0] === 'string') return ['transformers', config.architectures[0]];
  const tokenizer = await read('tokenizer_config.json');
  if (typeof tokenizer?.tokenizer_class === 'string') return ['transformers', tokenizer.tokenizer_class.replace(/Fast$/, '')];
  const processor = await read('preprocessor_config.json');
  const processorClass = processor?.image_processor_type ?? processor?.feature_extractor_type;
  if (typeof processorClass === 'string') return ['transformers', processorClass];
  return null;
}

/**
 * Completes the student's pipeline folder `out` (whose unet/ is already written): copies every
 * other component of the teacher's pipeline (a subfolder listed in its model_index.json, or, without
 * one, any subfolder holding a config: scheduler, vae, text_encoder, tokenizer, …) and writes
 * model_index.json: the teacher's own when it has one; else, for a latent teacher (with a VAE), a
 * StableDiffusionPipeline index whose text encoder, tokenizer, safety checker and feature extractor
 * are absent (pass them as None to from_pretrained). A pixel-space teacher without an index gets
 * none: no diffusers pipeline decodes its UNet's output. Returns the copied component names.
 */
export async function completeStudentPipeline(teacher: PipelineDirs, out: string): Promise<string[]> {
  const copied: string[] = [];
  if (!teacher.root) {
    // A lone UNet folder: the scheduler found elsewhere still belongs with the student.
    if (teacher.scheduler) {
      await cp(teacher.scheduler, join(out, 'scheduler'), { recursive: true });
      copied.push('scheduler');
    }
    return copied;
  }
  const indexPath = join(teacher.root, MODEL_INDEX);
  const index = existsSync(indexPath) ? (JSON.parse(await readFile(indexPath, 'utf8')) as Record<string, unknown>) : null;
  const entries = await readdir(teacher.root, { withFileTypes: true });
  const isComponent = (name: string) =>
    index ? Array.isArray(index[name]) : ['config.json', SCHEDULER_CONFIG, 'tokenizer_config.json', 'preprocessor_config.json'].some((f) => existsSync(join(teacher.root!, name, f)));
  for (const e of entries) {
    if (!e.isDirectory() || e.name === 'unet' || !isComponent(e.name)) continue;
    if (resolve(teacher.root, e.name) === resolve(teacher.unet)) continue;
    await cp(join(teacher.root, e.name), join(out, e.name), { recursive: true });
    copied.push(e.name);
  }
  if (index) {
    await writeJsonAtomic(join(out, MODEL_INDEX), { ...index, unet: ['diffusers', 'UNet2DConditionModel'] });
  } else if (teacher.vae) {
    const generated: Record<string, unknown> = { _class_name: 'StableDiffusionPipeline', _diffusers_version: '0.30.3' };
    for (const name of ['feature_extractor', 'image_encoder', 'safety_checker', 'scheduler', 'text_encoder', 'tokenizer', 'unet', 'vae']) {
      generated[name] = name === 'unet' ? ['diffusers', 'UNet2DConditionModel'] : copied.includes(name) ? ((await componentClass(join(out, name))) ?? [null, null]) : [null, null];
    }
    generated.requires_safety_checker = false;
    await writeJsonAtomic(join(out, MODEL_INDEX), generated);
  }
  return copied;
}
