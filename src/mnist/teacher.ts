/**
 * The embedded default's teacher: a small diffusers UNet2DConditionModel trained on the MNIST train
 * split with epsilon prediction on an SD-style scaled_linear schedule, 10% prompt dropout (for
 * classifier-free guidance), Adam, grad clipping, an EMA of the weights (exported), and resumable
 * checkpoints (accelerate-style `checkpoint-<step>/`).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tf } from '../tf.ts';
import type { Tensor, Tensor3D, Tensor4D } from '../tf.ts';
import { UNet2DConditionModel } from '../models/unet_2d_condition.ts';
import { NoiseSchedule } from '../models/schedule.ts';
import { Adam, EmaWeights, clipGradNorm } from '../models/optim.ts';
import { readSafetensors, writeSafetensors } from '../models/safetensors.ts';
import { writeJsonAtomic } from '../util/fs.ts';
import { latestCheckpoint, saveCheckpoint } from '../training/checkpoint.ts';
import { StepRng, STREAMS } from '../util/rng.ts';
import { loadMnist, IMAGE_PIXELS } from './dataset.ts';
import { PROMPTS, promptIndexOfImages } from './prompts.ts';
import { createPromptEncoder, EMBED_DIM, EMBED_LENGTH } from './text_encoder.ts';
import { log } from '../log.ts';

/** The teacher's UNet: 28x28x1, three levels (28, 14, 7). Cross-attention at 14 and 7; at 14 the
 * blocks attend only to the text (only_cross_attention) because 196-token self-attention costs
 * more than the rest of the UNet on a CPU. */
export const TEACHER_UNET_CONFIG = {
  sample_size: 28,
  in_channels: 1,
  out_channels: 1,
  block_out_channels: [32, 64, 64],
  down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
  up_block_types: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
  mid_block_type: 'UNetMidBlock2DCrossAttn',
  layers_per_block: 1,
  attention_head_dim: 4,
  cross_attention_dim: EMBED_DIM,
  norm_num_groups: 8,
  only_cross_attention: [false, true, false],
};

/** Stable Diffusion 2.1-base's scheduler, as diffusers writes it. */
export const TEACHER_SCHEDULER_CONFIG = {
  _class_name: 'DDIMScheduler',
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  prediction_type: 'epsilon',
  clip_sample: false,
  set_alpha_to_one: false,
  steps_offset: 1,
  timestep_spacing: 'leading',
};

export interface TeacherTrainOptions {
  out: string;
  steps: number;
  batchSize: number;
  lr: number;
  seed: number;
  condDropout: number;
  emaDecay: number;
  maxGradNorm: number;
  checkpointEvery: number;
  checkpointsTotalLimit: number;
  resume: boolean;
  onStep?: (info: { step: number; loss: number; gradNorm: number; secondsPerStep: number }) => void;
  shouldStop?: () => boolean;
}

interface TrainingData {
  images: Float32Array;
  promptIndex: Int32Array;
  /** [90 + 1, L, D]: the prompts, then the null prompt at index 90. */
  embeddings: Float32Array;
}

function prepareData(): TrainingData {
  const { train } = loadMnist();
  const promptIndex = promptIndexOfImages(train);
  const encoder = createPromptEncoder();
  const texts = [...PROMPTS.map((p) => p.text), ''];
  return { images: train.images, promptIndex, embeddings: encoder.encode(texts) };
}

const NULL_INDEX = PROMPTS.length;

function gatherBatch(data: TrainingData, indices: number[], dropped: boolean[]): { x0: Tensor4D; context: Tensor3D } {
  const ctxSize = EMBED_LENGTH * EMBED_DIM;
  const x = new Float32Array(indices.length * IMAGE_PIXELS);
  const c = new Float32Array(indices.length * ctxSize);
  indices.forEach((img, i) => {
    x.set(data.images.subarray(img * IMAGE_PIXELS, (img + 1) * IMAGE_PIXELS), i * IMAGE_PIXELS);
    const p = dropped[i] ? NULL_INDEX : data.promptIndex[img]!;
    c.set(data.embeddings.subarray(p * ctxSize, (p + 1) * ctxSize), i * ctxSize);
  });
  return { x0: tf.tensor4d(x, [indices.length, 28, 28, 1]), context: tf.tensor3d(c, [indices.length, EMBED_LENGTH, EMBED_DIM]) };
}

/** Writes the teacher in diffusers pipeline layout: `dir/unet/` (EMA weights) and `dir/scheduler/`. */
export async function exportTeacher(dir: string, unet: UNet2DConditionModel, ema: EmaWeights | null): Promise<void> {
  await unet.savePretrained(join(dir, 'unet'), ema?.shadow);
  await writeJsonAtomic(join(dir, 'scheduler', 'scheduler_config.json'), { ...TEACHER_SCHEDULER_CONFIG, _diffusers_version: '0.30.3' });
}

export async function trainTeacher(o: TeacherTrainOptions): Promise<{ step: number }> {
  const schedule = NoiseSchedule.fromConfig(TEACHER_SCHEDULER_CONFIG);
  const data = prepareData();
  const unet = UNet2DConditionModel.fromConfig(TEACHER_UNET_CONFIG, { seed: o.seed });
  const params = unet.store.named();
  const optimizer = new Adam(params, { lr: o.lr });
  const ema = new EmaWeights(params, o.emaDecay);
  const rng = new StepRng(o.seed);
  let step = 0;

  const resumeFrom = o.resume ? await latestCheckpoint(o.out) : undefined;
  if (resumeFrom) {
    const state = JSON.parse(await readFile(join(resumeFrom.path, 'state.json'), 'utf8')) as { step: number };
    unet.loadStateDict((await readSafetensors(join(resumeFrom.path, 'unet', 'diffusion_pytorch_model.safetensors'))).tensors);
    ema.load((await readSafetensors(join(resumeFrom.path, 'ema.safetensors'))).tensors);
    optimizer.loadState(state.step, (await readSafetensors(join(resumeFrom.path, 'optimizer.safetensors'))).tensors);
    step = state.step;
    log.info({ checkpoint: resumeFrom.path, step }, 'resumed teacher training');
  }
  log.info({ params: unet.store.numParameters(), steps: o.steps, batchSize: o.batchSize, lr: o.lr }, 'training teacher');

  const checkpoint = async () => {
    await saveCheckpoint(o.out, step, async (dir) => {
      await unet.savePretrained(join(dir, 'unet'));
      await writeSafetensors(join(dir, 'ema.safetensors'), Object.fromEntries([...ema.shadow].map(([k, v]) => [k, { shape: v.shape, data: v.dataSync() as Float32Array }])));
      await writeSafetensors(join(dir, 'optimizer.safetensors'), optimizer.stateTensors());
      await writeJsonAtomic(join(dir, 'state.json'), { step, seed: o.seed, batch_size: o.batchSize, lr: o.lr });
    }, o.checkpointsTotalLimit);
    await exportTeacher(join(o.out, 'teacher'), unet, ema);
    log.info({ step }, 'checkpoint saved');
  };

  const n = data.promptIndex.length;
  while (step < o.steps && !o.shouldStop?.()) {
    const t0 = performance.now();
    const indices = rng.ints(step, STREAMS.batch, o.batchSize, 0, n - 1);
    const timesteps = rng.ints(step, STREAMS.timestep, o.batchSize, 0, schedule.numTrainTimesteps - 1);
    const drop = rng.uniform(step, STREAMS.dropout);
    const dropped = indices.map(() => drop() < o.condDropout);
    const { x0, context } = gatherBatch(data, indices, dropped);
    const noise = rng.normal(step, STREAMS.noise, x0.shape);
    const xt = schedule.addNoise(x0, noise, timesteps) as Tensor4D;
    const { value, grads } = tf.variableGrads(() => tf.losses.meanSquaredError(noise, unet.forward(xt, timesteps, context)) as tf.Scalar, [...params.values()]);
    const byName = new Map<string, Tensor>([...params].map(([name, v]) => [name, grads[v.name]!]));
    const clipped = clipGradNorm(byName, o.maxGradNorm);
    const loss = value.dataSync()[0]!;
    if (Number.isFinite(loss) && Number.isFinite(clipped.norm)) {
      optimizer.apply(clipped.grads);
      ema.update(ema.decayAt(optimizer.step)); // diffusers' EMAModel warm-up: a young EMA follows the weights
    } else {
      log.warn({ step, loss, gradNorm: clipped.norm }, 'non-finite loss or gradient: step skipped');
    }
    tf.dispose([x0, context, noise, xt, value, ...Object.values(grads), ...clipped.grads.values()]);
    step += 1;
    o.onStep?.({ step, loss, gradNorm: clipped.norm, secondsPerStep: (performance.now() - t0) / 1000 });
    if (step % o.checkpointEvery === 0 || step === o.steps) await checkpoint();
    // Yield to the event loop so signals (SIGINT/SIGTERM → checkpoint and stop) are handled.
    await new Promise((resolve) => setImmediate(resolve));
  }
  if (step % o.checkpointEvery !== 0 && step !== o.steps) await checkpoint(); // stopped by a signal
  unet.dispose();
  optimizer.dispose();
  ema.dispose();
  return { step };
}
