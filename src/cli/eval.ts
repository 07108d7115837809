/**
 * `swiftbrush eval --teacher DIR --student DIR [--n 1000 (stratified by prompt)] [--guidance-scale W] [--json] [--out FILE]
 * [--only teacher|student] [--recompute-teacher]`: teacher DDIM 25 + CFG, teacher 1 step and student
 * 1 step over the 90 MNIST prompts, scored (FD, digit / thickness / slant accuracy, samples/s).
 * Prints the JSON object `{ teacher_ddim25, teacher_1step, student_1step }` on stdout (one line with
 * --json, indented otherwise) and a Markdown table on stderr; --out writes the JSON, and the
 * comparison grid goes beside it (`grid.png`, or --grid PATH).
 *
 * The teacher's figures are computed once and shipped: `--only teacher --out DIR/eval.json` writes
 * them (and DIR/eval_samples.safetensors, the grid's teacher samples); later runs reuse them unless
 * --recompute-teacher (see src/eval/evaluate.ts).
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import { dirname, join } from 'node:path';
import { initBackend } from '../backend.ts';
import { log } from '../log.ts';
import { writeJsonAtomic } from '../util/fs.ts';
import { DEFAULT_EMBEDDINGS, DEFAULT_TEACHER_GUIDANCE, MIN_FD_SAMPLES, TEACHER_SAMPLES_NAME, evaluateModels, markdownTable } from '../eval/evaluate.ts';
import { backendOption, float, int } from './options.ts';

interface EvalCliOptions {
  teacher: string;
  student?: string;
  n: number;
  guidanceScale: number;
  teacherSteps: number;
  seed: number;
  batchSize: number;
  embeddings: string;
  json?: boolean;
  out?: string;
  grid?: string | false;
  only?: 'teacher' | 'student';
  recomputeTeacher?: boolean;
  backend?: string;
}

export function register(program: Command): void {
  program
    .command('eval')
    .description('score teacher DDIM-25 + CFG, teacher 1 step and student 1 step on the MNIST prompts (FD, accuracies, samples/s)')
    .requiredOption('--teacher <dir>', 'teacher pipeline folder (unet/ + scheduler/) (required)')
    .option('--student <dir>', 'student pipeline or UNet folder (scheduler falls back to the teacher\'s)')
    .option('--n <n>', `samples per model, stratified over the 90 prompts (FD needs n ≥ ${MIN_FD_SAMPLES} to compare models)`, int(2), 1000)
    .option('--guidance-scale <w>', 'CFG scale of the teacher\'s DDIM baseline', float, DEFAULT_TEACHER_GUIDANCE)
    .option('--teacher-steps <n>', 'DDIM steps of the teacher baseline', int(2), 25)
    .option('--seed <n>', 'noise seed (sample i uses (seed, i); all models share it)', int(0), 0)
    .option('--batch-size <n>', 'samples per UNet call', int(1), 32)
    .addOption(new Option('--embeddings <file>', 'embedding Parquet with the 90 prompts and ""').default(DEFAULT_EMBEDDINGS, 'the shipped data/embeddings.parquet'))
    .option('--json', 'print the JSON object on one line')
    .option('--out <file>', 'write the JSON object here (the grid goes beside it as grid.png)')
    .option('--grid <file>', 'comparison grid path (default: grid.png beside --out)')
    .option('--no-grid', 'write no grid')
    .addOption(new Option('--only <which>', 'evaluate only the teacher (both teacher rows) or only the student').choices(['teacher', 'student']))
    .option('--recompute-teacher', 'ignore the teacher\'s cached eval.json')
    .addOption(backendOption())
    .action(async (o: EvalCliOptions) => {
      const backend = await initBackend(o.backend);
      if (o.only !== 'teacher' && !o.student) throw new Error('--student is required (or --only teacher)');
      const gridPath = o.grid === false ? undefined : (o.grid ?? (o.out ? join(dirname(o.out), 'grid.png') : undefined));
      let last = 0;
      const r = await evaluateModels({
        teacher: o.teacher, student: o.student, n: o.n, guidanceScale: o.guidanceScale, teacherSteps: o.teacherSteps, seed: o.seed,
        batchSize: o.batchSize, embeddings: o.embeddings, only: o.only, recomputeTeacher: o.recomputeTeacher, gridPath,
        teacherSamplesOut: o.only === 'teacher' && o.out ? join(dirname(o.out), TEACHER_SAMPLES_NAME) : undefined,
        onProgress: ({ model, done, total }) => {
          if (done === total || performance.now() - last > 5000) {
            last = performance.now();
            log.info({ model, done, total }, 'eval');
          }
        },
      });
      if (o.out) await writeJsonAtomic(o.out, r.report);
      process.stderr.write('\n' + markdownTable(r.report, r.reused) + (r.reused.length ? `(teacher figures reused from ${join(o.teacher, 'eval.json')})\n` : '') + (r.grid ? `grid: ${r.grid}\n` : ''));
      log.info({ backend: backend.backend, out: o.out, grid: r.grid }, 'eval done');
      process.stdout.write(JSON.stringify(r.report, null, o.json ? undefined : 2) + '\n');
    });
}
