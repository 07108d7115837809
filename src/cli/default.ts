/**
 * `swiftbrush default` (what `npm start` runs): distils the shipped MNIST teacher (data/teacher) on
 * the shipped embeddings (data/embeddings.parquet) with defaults tuned on this problem, evaluates
 * the student against the teacher's cached figures (data/teacher/eval.json), and prints the table
 * and the comparison grid's path. Everything lands in runs/default/ (`npm start` passes --overwrite:
 * a previous default run there is replaced; --resume continues it instead).
 */
import { existsSync } from 'node:fs';
import { cp, readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { initBackend } from '../backend.ts';
import { runDistillation } from '../operators/run.ts';
import type { DistillConfig } from '../operators/state.ts';
import { DEFAULT_TEACHER_GUIDANCE, evaluateModels, markdownTable, mnistConditions, type Conditions } from '../eval/evaluate.ts';
import { generate, loadPipeline } from '../eval/sampling.ts';
import { NUM_PROMPTS } from '../mnist/prompts.ts';
import { keepBestStudent, type Validated } from '../eval/keep_best_student.ts';
import { Scorer } from '../mnist/score.ts';
import { writeJsonAtomic } from '../util/fs.ts';
import { log } from '../log.ts';
import { backendOption, int } from './options.ts';
import { stopOnSignals, reportStop } from './signals.ts';
import { prepareRunFolder } from '../operators/run_folder.ts';
import { DEFAULT_EMBEDDINGS, DEFAULT_TEACHER } from '../default_data.ts';

export { DEFAULT_EMBEDDINGS, DEFAULT_TEACHER } from '../default_data.ts';

/**
 * Hyper-parameters tuned on the MNIST default (see README, "The embedded default"). They differ
 * from the official SD 2.1 values where this small problem needs it:
 * - Adam β1 = 0 for both models (no momentum, as GAN training often does): with the official 0.9
 *   the student and the LoRA teacher chase each other and the student's FD swings between ~100 and
 *   ~900 every few dozen steps (constant, cosine or two-time-scale lrs alike); with β1 = 0 it swings
 *   for ~50 steps, then settles.
 * - w 2.5, 200 steps: with the step-6,625 teacher, w 1.5 for 100 steps left the student's strokes
 *   bold (thickness accuracy 0.34; FD 48.4, ratio 3.2), and w 2.5 reached FD ~35 (N = 300) with
 *   every accuracy at the teacher's by step 180-200; steps past 200 did not lower it (40-45).
 * - Student lr 2e-5 with a 20-step warm-up, a rank-16 LoRA on all four attention projections (on
 *   to_q/to_v alone, or with LoRA on the ResNet convolutions too, the student was worse).
 * - The run validates every `validateEvery` steps and keeps its best student (`keepBestStudent`):
 *   the FD still moves by ~10 between checkpoints 20 steps apart.
 * - One optimiser step = 2 micro-batches of 4 prompts, so that the single-threaded wasm backend
 *   computes them on two threads (`replicas`); the weights are the same with 1.
 */
export const DEFAULT_RUN = {
  steps: 200,
  validateEvery: 20,
  /** Validation samples per check (3 per prompt), noise seed unlike the evaluation's 0. */
  validationN: 270,
  validationSeed: 1000,
  config: {
    batchSize: 4,
    gradAccum: 2,
    guidanceScale: 2.5,
    studentLr: 2e-5,
    lrWarmupSteps: 20,
    loraLr: 1e-3,
    loraRank: 16,
    loraAlpha: 16,
    loraTargets: ['to_q', 'to_k', 'to_v', 'to_out.0'],
    // Off: the best validated student is kept instead (an EMA over a swinging trajectory lagged:
    // FD 324 where the raw weights scored 106).
    emaDecay: 0,
    adamBeta1: 0,
    seed: 0,
  } satisfies Partial<DistillConfig>,
};

/** Data-parallel threads for the default: the wasm and cpu kernels use one core each, tfjs-node all. */
export function defaultReplicas(backend: string, gradAccum: number): number {
  return backend === 'tensorflow' ? 1 : Math.max(1, Math.min(gradAccum, availableParallelism()));
}

const TEACHER_SPEED_SAMPLES = 8;

/** The teacher's 25-step CFG sampling speed on this backend (a few samples), beside the student's. */
async function samplingSpeedHere(backend: string, cond: Conditions, studentSamplesPerS: number | undefined) {
  const teacher = await loadPipeline(DEFAULT_TEACHER);
  try {
    const promptIndex = Int32Array.from({ length: TEACHER_SPEED_SAMPLES }, (_, i) => (i * 11) % NUM_PROMPTS);
    const run = generate({ unet: teacher.unet, schedule: teacher.schedule, embeds: cond.embeds, embedShape: cond.shape, nullEmbed: cond.nullEmbed, promptIndex, steps: 25, guidanceScale: DEFAULT_TEACHER_GUIDANCE, seed: 0, batchSize: TEACHER_SPEED_SAMPLES, warmup: true });
    const teacherRate = TEACHER_SPEED_SAMPLES / run.seconds;
    return { backend, teacher_ddim25_samples_per_s: teacherRate, teacher_samples: TEACHER_SPEED_SAMPLES, student_samples_per_s: studentSamplesPerS ?? null, ratio: studentSamplesPerS ? studentSamplesPerS / teacherRate : null };
  } finally {
    teacher.unet.dispose();
  }
}

export function register(program: Command): void {
  program
    .command('default')
    .description('npm start: distil the shipped MNIST teacher to one step, then evaluate it against the teacher')
    .option('--out <dir>', 'run folder: a new folder, or a previous `default` run (with --resume or --overwrite)', 'runs/default')
    .option('--steps <n>', 'optimiser steps', int(1), DEFAULT_RUN.steps)
    .option('--n <n>', 'evaluation samples (stratified over the 90 prompts; FD needs ≥ 500 to compare runs)', int(1), 1000)
    .option('--max-minutes <m>', 'wall-clock budget of the distillation; past it the run checkpoints and stops early (so npm start stays within 15 minutes on slow machines)', Number, 12)
    .option('--resume', 'continue the run in --out from its newest checkpoint (wins over --overwrite)')
    .option('--overwrite', 'start afresh over a previous `default` run in --out, removing only its files (npm start passes it)')
    .addOption(backendOption())
    .action(async (o: { out: string; steps: number; n: number; maxMinutes: number; resume?: boolean; overwrite?: boolean; backend?: string }, cmd: Command) => {
      if (!existsSync(join(DEFAULT_TEACHER, 'unet', 'config.json'))) {
        throw new Error(`the shipped teacher is missing: ${DEFAULT_TEACHER}/unet/config.json (train one with \`swiftbrush train-teacher\`)`);
      }
      await prepareRunFolder(o.out, { command: 'default', resume: o.resume, overwrite: o.overwrite && !o.resume });
      const backend = await initBackend(o.backend);
      log.info({ backend: backend.backend, provider: backend.provider, skipped: backend.skipped.map((s) => s.candidate) }, 'backend');
      const signals = stopOnSignals('a checkpoint is written at the end of this optimiser step, then the run exits without evaluating');
      const t0 = performance.now();
      const overBudget = () => (performance.now() - t0) / 60_000 > o.maxMinutes;
      const replicas = defaultReplicas(backend.backend, DEFAULT_RUN.config.gradAccum);
      const scorer = await Scorer.create();
      const bestDir = join(o.out, 'best');
      const resumeCommand = `npx swiftbrush default${o.out === 'runs/default' ? '' : ` --out ${o.out}`} --resume`;
      try {
        const conditions = await mnistConditions(DEFAULT_EMBEDDINGS);
        const result = await runDistillation({
          teacher: DEFAULT_TEACHER,
          embeddings: DEFAULT_EMBEDDINGS,
          out: o.out,
          // --steps counts only when given: a resumed run keeps its own otherwise.
          steps: cmd.getOptionValueSource('steps') === 'cli' ? o.steps : undefined,
          config: { replicas },
          defaults: { ...DEFAULT_RUN.config, steps: DEFAULT_RUN.steps, checkpointEvery: 50, checkpointsTotalLimit: 2, validationEvery: 50 },
          resume: Boolean(o.resume),
          stopRequested: () => signals.requested() || overBudget(),
          operators: (state) => [keepBestStudent(state, { out: bestDir, every: DEFAULT_RUN.validateEvery, n: DEFAULT_RUN.validationN, seed: DEFAULT_RUN.validationSeed, conditions, scorer })],
        });
        // From here on a signal ends the process at once: nothing is left to save.
        signals.dispose();
        if (reportStop(signals, result.step, resumeCommand)) return;
        const steps = JSON.parse(await readFile(join(o.out, 'config.json'), 'utf8')).steps as number;
        if (result.stoppedEarly) log.warn({ step: result.step, of: steps, maxMinutes: o.maxMinutes }, `distillation stopped before its last step (time budget); \`${resumeCommand}\` continues it`);
        const distillSeconds = (performance.now() - t0) / 1000;
        // The best validated student (kept beside the last one, `student/`), as a pipeline folder.
        const best = existsSync(join(bestDir, 'unet', 'config.json')) ? JSON.parse(await readFile(join(bestDir, 'best.json'), 'utf8')) as Validated : null;
        if (best) await cp(join(DEFAULT_TEACHER, 'scheduler'), join(bestDir, 'scheduler'), { recursive: true });
        const evaluated = best ? bestDir : result.studentDir;
        log.info({ student: evaluated, step: best?.step ?? result.step, validationFd: best?.fd }, best ? 'evaluating the best validated student' : 'evaluating the last student (no validation ran)');
        const evaluation = await evaluateModels({ teacher: DEFAULT_TEACHER, student: evaluated, n: o.n, embeddings: DEFAULT_EMBEDDINGS, gridPath: join(o.out, 'grid.png'), only: undefined, scorer });
        await writeJsonAtomic(join(o.out, 'eval.json'), evaluation.report);
        // The cached teacher figures may come from another backend: time its 25-step sampling here too.
        const speed = await samplingSpeedHere(backend.backend, conditions, evaluation.report.student_1step?.samples_per_s);
        await writeJsonAtomic(join(o.out, 'sampling_speed.json'), speed);
        const totalSeconds = (performance.now() - t0) / 1000;
        process.stdout.write(`\n${markdownTable(evaluation.report, evaluation.reused)}\n\n`);
        if (speed.ratio !== null) process.stdout.write(`same backend (${speed.backend}): student 1 step ${speed.student_samples_per_s!.toFixed(2)} samples/s, teacher DDIM 25 + CFG ${speed.teacher_ddim25_samples_per_s.toFixed(2)} samples/s (${TEACHER_SPEED_SAMPLES} samples): ${speed.ratio.toFixed(1)}x\n`);
        process.stdout.write(`distillation: ${result.step}/${steps} steps in ${(distillSeconds / 60).toFixed(1)} min; with evaluation ${(totalSeconds / 60).toFixed(1)} min (${backend.backend})\n`);
        const validations = join(bestDir, 'validation.jsonl');
        process.stdout.write(
          `grid: ${evaluation.grid ?? join(o.out, 'grid.png')}\n` +
            (best ? `student (best validated, step ${best.step}): ${evaluated}\nlast student: ${result.studentDir}\n` : `student (last, step ${result.step}; no validation ran): ${evaluated}\n`) +
            (existsSync(validations) ? `validations: ${validations}\n` : '') +
            `metrics: ${join(o.out, 'metrics.jsonl')}\n`,
        );
      } finally {
        signals.dispose();
        scorer.dispose();
      }
    });
}
