/**
 * keepBestStudent: a distillation operator (plugged in after the SwiftBrush step, as a user's own
 * operator would be) that scores the one-step student every `every` optimiser steps on the MNIST
 * default — FD to the held-out digits in classifier-feature space and digit accuracy, over `n`
 * samples drawn with a validation seed unlike the evaluation's — and saves the best one so far
 * (lowest FD) as a diffusers UNet folder, `out/unet`, with `out/best.json`.
 *
 * Why: VSD's two-player dynamics swing on this problem (the student's FD moves by several times
 * between evaluations a few dozen steps apart; a PyTorch run of the official script showed the same), so the default
 * keeps its best validated student, as a training script that keeps its best checkpoint would.
 * Appends one line per validation to `out/validation.jsonl`. Runs on the main thread between steps.
 */
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { concatMap, from, map, of, type OperatorFunction } from 'rxjs';
import type { StepContext } from '../operators/context.ts';
import type { DistillState } from '../operators/state.ts';
import { NUM_PROMPTS } from '../mnist/prompts.ts';
import type { Scorer } from '../mnist/score.ts';
import { writeJsonAtomic } from '../util/fs.ts';
import { log } from '../log.ts';
import type { Conditions } from './evaluate.ts';
import { generate } from './sampling.ts';

export interface KeepBestStudentOptions {
  /** Folder of the best student (`unet/`, `best.json`, `validation.jsonl`). */
  out: string;
  every: number;
  /** Validation samples, round-robin over the 90 prompts. */
  n: number;
  /** Noise seed of the validation samples (the evaluation uses 0). */
  seed: number;
  conditions: Conditions;
  scorer: Scorer;
}

export interface Validated {
  step: number;
  fd: number;
  digit_acc: number;
  thickness_acc: number;
  slant_acc: number;
  n: number;
  best: boolean;
}

export function keepBestStudent(state: DistillState, o: KeepBestStudentOptions): OperatorFunction<StepContext, StepContext> {
  // A resumed run keeps competing with the best student saved before it stopped.
  let bestFd: number | undefined;
  const readBest = async () => {
    try {
      return (JSON.parse(await readFile(join(o.out, 'best.json'), 'utf8')) as Validated).fd;
    } catch {
      return Infinity;
    }
  };
  const promptIndex = Int32Array.from({ length: o.n }, (_, i) => i % NUM_PROMPTS);
  const validate = async (step: number): Promise<void> => {
    bestFd ??= await readBest();
    const { images } = generate({ unet: state.student, schedule: state.schedule, embeds: o.conditions.embeds, embedShape: o.conditions.shape, promptIndex, steps: 1, guidanceScale: 1, seed: o.seed, batchSize: 32 });
    const s = o.scorer.score(images, promptIndex);
    const record: Validated = { step, fd: s.fd, digit_acc: s.digit_acc, thickness_acc: s.thickness_acc, slant_acc: s.slant_acc, n: s.n, best: s.fd < bestFd };
    await mkdir(o.out, { recursive: true });
    if (record.best) {
      bestFd = s.fd;
      await state.student.savePretrained(join(o.out, 'unet'));
      await writeJsonAtomic(join(o.out, 'best.json'), record);
    }
    await appendFile(join(o.out, 'validation.jsonl'), JSON.stringify(record) + '\n');
    log.info({ step, fd: +s.fd.toFixed(1), digit_acc: s.digit_acc, best: record.best }, 'validation: one-step student');
  };
  return concatMap((ctx: StepContext) => {
    if (!ctx.closesWindow || ctx.step % o.every !== 0) return of(ctx);
    return from(validate(ctx.step)).pipe(map(() => ctx));
  });
}
