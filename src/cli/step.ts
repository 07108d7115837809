/**
 * `swiftbrush step --teacher DIR --lora DIR --draws FILE --out FILE`: ONE SwiftBrush micro-step of
 * the distillation stream's own operators, from given draws, with every intermediate and every
 * gradient written out in PyTorch layouts, so that the step can be compared with another
 * implementation (the official `train_swiftbrush.py` in PyTorch) tensor for tensor.
 *
 * The student starts as a copy of the teacher, the LoRA teacher is the teacher with the PEFT
 * adapter of `--lora`, and every random draw comes from `--draws` (`DRAW_KEYS`: latents,
 * prompt_embeds, null_embeds, timesteps, noise, lora_timesteps, lora_noise, lora_null,
 * guidance_scale). The other hyper-parameters are the official ones (OFFICIAL_DEFAULTS).
 *
 * How it sees inside the step without a second copy of the math: the micro-step runs through
 * `swiftbrushStep` (the operators `distill` composes) as the first micro-batch of a window that does
 * not close, so its gradients stay in the state's accumulators (summed, before clipping) and no
 * optimiser steps; the state's observer copies the intermediates as the operators compute them.
 *
 * Writes (float32, NCHW): x0, noisy, teacher_pred, lora_pred, score_gradient, loss_vsd [1],
 * lora_noisy, lora_eps, loss_lora [1], grad_student.<diffusers key>, grad_lora.<module>.lora_A.weight /
 * .lora_B.weight. Nothing else is written.
 */
import { join } from 'node:path';
import type { Command } from 'commander';
import { Subject } from 'rxjs';
import { tf } from '../tf.ts';
import type { Tensor } from '../tf.ts';
import { initBackend } from '../backend.ts';
import { log } from '../log.ts';
import { ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, LoraAdapter } from '../models/lora.ts';
import { tfToTorch, type ParamStore } from '../models/params.ts';
import type { NamedGrads } from '../models/optim.ts';
import { readSafetensors, writeSafetensors } from '../models/safetensors.ts';
import { GivenDraws } from '../swiftbrush/draws.ts';
import type { ObservedTensor } from '../swiftbrush/observer.ts';
import { createStepContext, type StepContext } from '../operators/context.ts';
import { swiftbrushStep } from '../operators/pipeline.ts';
import { createDistillState, disposeDistillState, OFFICIAL_DEFAULTS, type DistillConfig } from '../operators/state.ts';
import { backendOption } from './options.ts';

export interface StepOptions {
  /** A diffusers pipeline folder (unet/ + scheduler/); the student starts as a copy of its UNet. */
  teacher: string;
  /** A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors). */
  lora: string;
  /** The draws file (safetensors, PyTorch layouts). */
  draws: string;
  out: string;
}

type HostTensor = { shape: number[]; data: Float32Array };

/** The output key of each observed intermediate (the reference's names). */
const OUTPUT_KEY: Record<ObservedTensor, string> = {
  x0: 'x0',
  noisyX0: 'noisy',
  epsTeacher: 'teacher_pred',
  epsLora: 'lora_pred',
  scoreGradient: 'score_gradient',
  loraNoisyX0: 'lora_noisy',
  loraPrediction: 'lora_eps',
};

/** A host copy of an NHWC tensor in NCHW. */
function nchw(t: Tensor): HostTensor {
  const moved = tf.tidy(() => tf.transpose(t, [0, 3, 1, 2]));
  try {
    return { shape: moved.shape, data: moved.dataSync() as Float32Array };
  } finally {
    moved.dispose();
  }
}

/** Host copies of named gradients in the PyTorch layout of their parameters; disposes `grads`. */
function torchGrads(grads: NamedGrads, store: ParamStore, prefix: string): Record<string, HostTensor> {
  const out: Record<string, HostTensor> = {};
  try {
    for (const [name, g] of grads) {
      const p = store.params.get(name)!;
      const t = tfToTorch(p.kind, g);
      out[`${prefix}${name}`] = { shape: p.torchShape, data: t.dataSync() as Float32Array };
      t.dispose();
    }
  } finally {
    tf.dispose([...grads.values()]);
  }
  return out;
}

async function readLoraConfig(dir: string) {
  try {
    return await LoraAdapter.readConfig(dir);
  } catch (err) {
    throw new Error(`${join(dir, ADAPTER_CONFIG_NAME)}: cannot read the LoRA's PEFT config (${(err as Error).message})`);
  }
}

/** The command as a function: one micro-step from given draws; returns the two losses and the keys written. */
export async function swiftbrushStepFile(o: StepOptions): Promise<{ lossVsd: number; lossLora: number; keys: string[] }> {
  const draws = await GivenDraws.read(o.draws);
  const loraConfig = await readLoraConfig(o.lora);
  const config: DistillConfig = {
    ...OFFICIAL_DEFAULTS,
    batchSize: draws.batch,
    gradAccum: 1,
    loraRank: loraConfig.rank,
    loraAlpha: loraConfig.alpha,
    loraTargets: loraConfig.targetModules,
    emaDecay: 0,
    replicas: 1,
    studentUpdateEvery: 1,
  };
  const observed: Record<string, HostTensor> = {};
  const state = await createDistillState({
    teacherDir: o.teacher,
    nullEmbeds: draws.nullEmbeds.data,
    embedShape: draws.nullEmbeds.shape,
    config,
    draws,
    observe: (name, t) => (observed[OUTPUT_KEY[name]] = nchw(t)),
  });
  try {
    const crossDims = [state.student.config.cross_attention_dim].flat();
    const D = draws.promptEmbeds.shape[2];
    if (crossDims.some((d) => d !== D)) throw new Error(`${o.draws}: 'prompt_embeds' has D = ${D} (shape [${draws.promptEmbeds.shape}]) but the UNet's cross_attention_dim is ${JSON.stringify(state.student.config.cross_attention_dim)}`);
    const loraPath = join(o.lora, ADAPTER_WEIGHTS_NAME);
    state.lora.loadStateDict((await readSafetensors(loraPath)).tensors, loraPath);

    // The first micro-batch of a window that does not close: gradients accumulate, nothing steps.
    const ctx = createStepContext({
      microStep: draws.microStep,
      step: 0,
      windowIndex: 0,
      closesWindow: false,
      prompts: [],
      position: { epoch: 0, batchIndex: draws.microStep },
      promptEmbeds: tf.tensor3d(draws.promptEmbeds.data, draws.promptEmbeds.shape),
    });
    const input = new Subject<StepContext>();
    let finished: StepContext | null = null;
    let failure: unknown = null;
    // Never completed: completion would flush (step) the optimisers on what the window accumulated.
    const subscription = input.pipe(swiftbrushStep(state)).subscribe({ next: (c) => (finished = c), error: (err) => (failure = err) });
    input.next(ctx);
    subscription.unsubscribe();
    if (failure) throw failure;
    if (!finished) throw new Error('the step produced no result');
    const { lossVsd, lossLora } = (finished as StepContext).metrics;
    if (lossVsd === undefined || lossLora === undefined) throw new Error('the step reported no loss (did it update the student and the LoRA teacher?)');
    if (state.studentOptimizer.step !== 0 || state.loraOptimizer.step !== 0) throw new Error('an optimiser stepped during `swiftbrush step`');

    const tensors: Record<string, HostTensor> = {
      ...observed,
      loss_vsd: { shape: [1], data: Float32Array.of(lossVsd) },
      loss_lora: { shape: [1], data: Float32Array.of(lossLora) },
      ...torchGrads(state.studentGrads.take(), state.student.store, 'grad_student.'),
      ...torchGrads(state.loraGrads.take(), state.lora.store, 'grad_lora.'),
    };
    await writeSafetensors(o.out, tensors, { format: 'pt' });
    return { lossVsd, lossLora, keys: Object.keys(tensors).sort() };
  } finally {
    disposeDistillState(state);
  }
}

export function register(program: Command): void {
  program
    .command('step')
    .description('run ONE micro-step of the distillation operators from given draws (no optimiser step) and write every intermediate and gradient, PyTorch layouts, to compare with a reference')
    .requiredOption('--teacher <dir>', 'diffusers pipeline folder (unet/ + scheduler/); the student starts as a copy of its UNet')
    .requiredOption('--lora <dir>', 'PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) for the LoRA teacher')
    .requiredOption('--draws <file>', 'safetensors: latents, prompt_embeds, null_embeds, timesteps, noise, lora_timesteps, lora_noise, lora_null, guidance_scale (NCHW)')
    .requiredOption('--out <file>', 'output safetensors (float32, NCHW): x0, noisy, teacher_pred, lora_pred, score_gradient, loss_vsd, lora_noisy, lora_eps, loss_lora, grad_student.*, grad_lora.*')
    .addOption(backendOption())
    .action(async (opts: StepOptions & { backend?: string }) => {
      const backend = await initBackend(opts.backend);
      const r = await swiftbrushStepFile(opts);
      log.info({ backend: backend.backend, loss_vsd: r.lossVsd, loss_lora: r.lossLora }, 'step');
      process.stdout.write(`${opts.out}: ${r.keys.length} tensors (loss_vsd ${r.lossVsd.toPrecision(6)}, loss_lora ${r.lossLora.toPrecision(6)})\n`);
    });
}
