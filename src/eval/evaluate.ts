/**
 * The embedded default's evaluation: N samples stratified over the 90 MNIST prompts
 * (`stratifiedPromptIndex`; sample i has noise seeded by (seed, i)) from
 *   teacher_ddim25: the teacher, DDIM `teacherSteps` (25) steps with CFG `guidanceScale`,
 *   teacher_1step:  the teacher, one step x0 = (z − √(1−ᾱ_999) ε(z, 999, y)) / √ᾱ_999, no guidance,
 *   student_1step:  the student, the same one-step formula, no guidance (w = 1: guidance is distilled in),
 * each scored with src/mnist/score.ts (FD vs the held-out digits, digit / thickness / slant accuracy)
 * and timed (samples/s = N / wall seconds of sampling, same batch size for all three).
 *
 * The teacher's figures change only when the teacher does: `DIR/eval.json` beside the teacher (as
 * `swiftbrush eval --teacher DIR --only teacher --out DIR/eval.json` writes it) is reused when its n
 * equals the requested n, unless `recomputeTeacher`.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { log } from '../log.ts';
import { NUM_PROMPTS, PROMPTS, parsePrompt, promptIndexOf } from '../mnist/prompts.ts';
import { Scorer } from '../mnist/score.ts';
import { writeImageGrid } from '../util/png.ts';
import { readSafetensors, writeSafetensors } from '../models/safetensors.ts';
import { generate, loadPipeline, readNullPrompt, readPromptEmbeddings, unetWidth, type Pipeline, PIXEL_RANGE } from './sampling.ts';
import { NoiseSchedule } from '../models/schedule.ts';
import { resolveTeacherDirs } from '../operators/state.ts';
import { DEFAULT_EMBEDDINGS } from '../default_data.ts';

export { DEFAULT_EMBEDDINGS } from '../default_data.ts';
/** CFG scale of the teacher's 25-step baseline when none is given. */
export const DEFAULT_TEACHER_GUIDANCE = 3;
/** Teacher DDIM samples of the grid, cached beside the teacher's eval.json. */
export const TEACHER_SAMPLES_NAME = 'eval_samples.safetensors';
export const MODEL_KEYS = ['teacher_ddim25', 'teacher_1step', 'student_1step'] as const;
export type ModelKey = (typeof MODEL_KEYS)[number];

export interface ModelFigures {
  fd: number;
  digit_acc: number;
  thickness_acc: number;
  slant_acc: number;
  samples_per_s: number;
  n: number;
}

export type EvalReport = Partial<Record<ModelKey, ModelFigures>>;

export interface EvaluateOptions {
  teacher: string;
  /** Student pipeline or UNet folder (its scheduler falls back to the teacher's). Required unless only = 'teacher'. */
  student?: string;
  /** Samples per model (default 1000). */
  n?: number;
  guidanceScale?: number;
  /** Teacher DDIM steps (default 25; the key stays `teacher_ddim25`). */
  teacherSteps?: number;
  seed?: number;
  batchSize?: number;
  /** Embedding Parquet holding the 90 prompts and "" (default data/embeddings.parquet). */
  embeddings?: string;
  only?: 'teacher' | 'student';
  recomputeTeacher?: boolean;
  /** Comparison grid path (rows: prompts; columns: teacher DDIM | student 1 step); none if unset. */
  gridPath?: string;
  /** Samples per prompt and model in the grid (default 3). */
  gridCols?: number;
  /** Write the teacher's DDIM grid samples here when they are computed (the cache beside eval.json). */
  teacherSamplesOut?: string;
  scorer?: Scorer;
  classifierDir?: string;
  onProgress?: (info: { model: ModelKey; done: number; total: number }) => void;
}

export interface EvaluateResult {
  report: EvalReport;
  /** Keys taken from the teacher's eval.json. */
  reused: ModelKey[];
  grid?: string;
}

export interface Conditions {
  embeds: Float32Array;
  shape: [number, number];
  nullEmbed: Float32Array;
}

/**
 * The 90 prompts' embeddings in PROMPTS order (rows matched by text) and the null prompt. `model`:
 * the UNet's width, checked against the file (and D of a file without shape metadata).
 */
export async function mnistConditions(file: string, model?: { width: number; model: string }): Promise<Conditions> {
  const { prompts, embeds, shape } = await readPromptEmbeddings(file, Infinity, model);
  const per = shape[0] * shape[1];
  const out = new Float32Array(NUM_PROMPTS * per);
  const seen = new Set<number>();
  prompts.forEach((p, row) => {
    const spec = parsePrompt(p);
    if (!spec || seen.has(spec.index)) return;
    seen.add(spec.index);
    out.set(embeds.subarray(row * per, (row + 1) * per), spec.index * per);
  });
  const missing = PROMPTS.filter((p) => !seen.has(p.index));
  if (missing.length) throw new Error(`${file}: ${missing.length} of the ${NUM_PROMPTS} MNIST prompts are missing (e.g. "${missing[0]!.text}")`);
  return { embeds: out, shape, nullEmbed: await readNullPrompt(file, model?.width) };
}

/** Below this many samples an FD is biased upwards enough that runs are not comparable (FID practice: ≥ 500, best 10k). */
export const MIN_FD_SAMPLES = 500;

/** (thickness, slant) bins in an order whose every prefix of 3 holds each bin once (a Latin square's rows). */
const STYLE_ORDER: [number, number][] = [[0, 0], [1, 1], [2, 2], [0, 1], [1, 2], [2, 0], [0, 2], [1, 0], [2, 1]];

/**
 * The prompt of each of n evaluation samples, stratified by prompt. n ≥ 90: round robin, sample i
 * has prompt i mod 90 (every prompt ⌊n/90⌋ or ⌈n/90⌉ times; the teacher's cached figures use this
 * order). n < 90: n distinct prompts spread over the set, digits first, then thickness and slant
 * (n = 30: every digit three times, each with every thickness and every slant once).
 */
export function stratifiedPromptIndex(n: number): Int32Array {
  if (n >= NUM_PROMPTS) return Int32Array.from({ length: n }, (_, i) => i % NUM_PROMPTS);
  return Int32Array.from({ length: n }, (_, j) => {
    const [thickness, slant] = STYLE_ORDER[Math.floor(j / 10)]!;
    return promptIndexOf(j % 10, thickness, slant);
  });
}

/** Reads cached teacher figures, or undefined when absent / unusable. */
export async function readTeacherCache(teacherDir: string, n: number): Promise<EvalReport | undefined> {
  const path = join(teacherDir, 'eval.json');
  if (!existsSync(path)) return undefined;
  let cached: EvalReport;
  try {
    cached = JSON.parse(await readFile(path, 'utf8')) as EvalReport;
  } catch (err) {
    log.warn({ path, err: (err as Error).message }, 'unreadable teacher eval.json: recomputing');
    return undefined;
  }
  const a = cached.teacher_ddim25;
  const b = cached.teacher_1step;
  if (!a || !b || a.n !== n || b.n !== n) {
    log.warn({ path, cachedN: a?.n, n }, 'teacher eval.json does not hold both teacher figures at this n: recomputing');
    return undefined;
  }
  return { teacher_ddim25: a, teacher_1step: b };
}

/** The cached teacher DDIM samples (eval_samples.safetensors beside the teacher) if they cover the grid at this seed. */
export async function readTeacherSamples(teacherDir: string, count: number, seed: number): Promise<Float32Array | undefined> {
  const path = join(teacherDir, TEACHER_SAMPLES_NAME);
  if (!existsSync(path)) return undefined;
  const f = await readSafetensors(path);
  const images = f.tensors.get('images');
  if (!images || f.metadata.seed !== String(seed) || images.shape[0]! < count) {
    log.warn({ path, seed, count }, 'cached teacher samples do not cover the grid at this seed: sampling the teacher for the grid');
    return undefined;
  }
  return (images.data as Float32Array).slice(0, count * 784);
}

function figures(scorer: Scorer, images: Float32Array, promptIndex: Int32Array, seconds: number): ModelFigures {
  const s = scorer.score(images, promptIndex);
  return { fd: s.fd, digit_acc: s.digit_acc, thickness_acc: s.thickness_acc, slant_acc: s.slant_acc, samples_per_s: promptIndex.length / seconds, n: s.n };
}

/** Runs the evaluation (call `initBackend` first). */
export async function evaluateModels(o: EvaluateOptions): Promise<EvaluateResult> {
  const n = o.n ?? 1000;
  const seed = o.seed ?? 0;
  const w = o.guidanceScale ?? DEFAULT_TEACHER_GUIDANCE;
  const teacherSteps = o.teacherSteps ?? 25;
  const batchSize = o.batchSize ?? 32;
  const doTeacher = o.only !== 'student';
  const doStudent = o.only !== 'teacher';
  if (doStudent && !o.student) throw new Error('evaluate: a student folder is required (or only: "teacher")');
  if (n < 2) throw new Error(`evaluate: n must be at least 2, got ${n}`);
  // Shapes before any work: the embeddings against the teacher's (and the student's) width.
  const teacherModel = await unetWidth(o.teacher);
  if (doStudent) {
    const studentModel = await unetWidth(o.student!);
    if (studentModel.width !== teacherModel.width) throw new Error(`the student ${studentModel.model} has cross_attention_dim ${studentModel.width} but the teacher ${teacherModel.model} has ${teacherModel.width}: they take different text embeddings`);
  }
  const cond = await mnistConditions(o.embeddings ?? DEFAULT_EMBEDDINGS, teacherModel);
  const promptIndex = stratifiedPromptIndex(n);
  const scorer = o.scorer ?? (await Scorer.create({ classifierDir: o.classifierDir }));
  const report: EvalReport = {};
  const reused: ModelKey[] = [];
  const gridCols = o.gridCols ?? 3;
  // grid samples: the first gridCols samples of each prompt = indices 0 … 90·gridCols − 1
  const gridN = Math.min(n, NUM_PROMPTS * gridCols);
  let teacherGrid: Float32Array | undefined;
  let studentGrid: Float32Array | undefined;
  let teacher: Pipeline | undefined;
  const progress = (model: ModelKey) => (done: number, total: number) => o.onProgress?.({ model, done, total });
  const run = (p: Pipeline, model: ModelKey, steps: number, guidanceScale: number, count = n) => {
    log.info({ model, n: count, steps, guidanceScale }, 'eval: sampling');
    return generate({ unet: p.unet, schedule: p.schedule, embeds: cond.embeds, embedShape: cond.shape, promptIndex: promptIndex.subarray(0, count), nullEmbed: cond.nullEmbed, steps, guidanceScale, seed, batchSize, warmup: true, onBatch: progress(model) });
  };
  try {
    if (doTeacher || (doStudent && o.gridPath)) teacher = await loadPipeline(o.teacher);
    if (doTeacher) {
      const cached = o.recomputeTeacher ? undefined : await readTeacherCache(o.teacher, n);
      if (cached) {
        Object.assign(report, cached);
        reused.push('teacher_ddim25', 'teacher_1step');
        log.info({ path: join(o.teacher, 'eval.json') }, 'eval: reusing the teacher figures (recomputeTeacher to recompute)');
        if (o.gridPath) teacherGrid = (await readTeacherSamples(o.teacher, gridN, seed)) ?? run(teacher!, 'teacher_ddim25', teacherSteps, w, gridN).images;
      } else {
        const ddim = run(teacher!, 'teacher_ddim25', teacherSteps, w);
        report.teacher_ddim25 = figures(scorer, ddim.images, promptIndex, ddim.seconds);
        teacherGrid = ddim.images.slice(0, gridN * 784);
        if (o.teacherSamplesOut) {
          await writeSafetensors(o.teacherSamplesOut, { images: { shape: [gridN, 1, 28, 28], data: teacherGrid }, prompt_index: { shape: [gridN], data: promptIndex.slice(0, gridN) } }, { format: 'pt', seed: String(seed), steps: String(teacherSteps), guidance_scale: String(w) });
        }
        const one = run(teacher!, 'teacher_1step', 1, 1);
        report.teacher_1step = figures(scorer, one.images, promptIndex, one.seconds);
        if (o.only === 'teacher') studentGrid = one.images.slice(0, gridN * 784);
      }
    } else if (o.gridPath) {
      teacherGrid = (await readTeacherSamples(o.teacher, gridN, seed)) ?? run(teacher!, 'teacher_ddim25', teacherSteps, w, gridN).images;
    }
    if (doStudent) {
      // A bare student UNet folder (e.g. checkpoint-N/unet) takes the teacher's scheduler, loaded or not.
      const teacherSchedule = teacher?.schedule ?? (await resolveTeacherDirs(o.teacher).then((d) => NoiseSchedule.load(join(d.scheduler, 'scheduler_config.json'))).catch(() => undefined));
      const student = await loadPipeline(o.student!, { fallbackSchedule: teacherSchedule });
      try {
        const one = run(student, 'student_1step', 1, 1);
        report.student_1step = figures(scorer, one.images, promptIndex, one.seconds);
        studentGrid = one.images.slice(0, gridN * 784);
      } finally {
        student.unet.dispose();
      }
    }
  } finally {
    teacher?.unet.dispose();
    if (!o.scorer) scorer.dispose();
  }
  let grid: string | undefined;
  if (o.gridPath && teacherGrid && studentGrid) {
    grid = o.gridPath;
    const right = o.only === 'teacher' ? 'teacher, 1 step' : 'student, 1 step';
    await writeComparisonGrid(grid, teacherGrid, studentGrid, promptIndex.subarray(0, gridN), gridCols, { prompts: PROMPTS.map((p) => p.text), left: `teacher, DDIM ${teacherSteps} steps`, right });
  }
  return { report, reused, grid };
}

/**
 * One row per prompt, labelled with the prompt: `cols` teacher samples, a white separator column,
 * `cols` student samples (the same noise column by column), each half titled. Images are
 * [N, 28, 28, 1] in [-1, 1]; `labels.prompts[p]` is the text of prompt index p.
 */
export async function writeComparisonGrid(path: string, left: Float32Array, right: Float32Array, promptIndex: Int32Array, cols: number, labels: { prompts: readonly string[]; left: string; right: string }): Promise<void> {
  const pix = 784;
  const rows = [...new Set(promptIndex)];
  const width = 2 * cols + 1;
  const out = new Float32Array(rows.length * width * pix).fill(PIXEL_RANGE[0]);
  rows.forEach((p, r) => {
    let c = 0;
    for (let i = 0; i < promptIndex.length && c < cols; i++) {
      if (promptIndex[i] !== p) continue;
      out.set(left.subarray(i * pix, (i + 1) * pix), (r * width + c) * pix);
      out.set(right.subarray(i * pix, (i + 1) * pix), (r * width + cols + 1 + c) * pix);
      c++;
    }
    out.fill(PIXEL_RANGE[1], (r * width + cols) * pix, (r * width + cols + 1) * pix);
  });
  await writeImageGrid(path, out, [rows.length * width, 28, 28, 1], {
    rows: rows.length,
    cols: width,
    rowLabels: rows.map((p) => labels.prompts[p] ?? `prompt ${p}`),
    columnLabels: [{ text: labels.left, from: 0, to: cols }, { text: labels.right, from: cols + 1, to: width }],
  });
}

/**
 * The report as a Markdown table (models as rows, in MODEL_KEYS order), with the FD ratio and, when
 * both were timed in this run, the sampling-speed ratio. `reused` lists the models whose figures came
 * from the teacher's cached eval.json: their samples/s were measured where that file was made (maybe
 * on another backend or machine), so no speed ratio is drawn against them.
 */
export function markdownTable(report: EvalReport, reused: readonly ModelKey[] = []): string {
  const f = (x: number, d: number) => (Number.isFinite(x) ? x.toFixed(d) : String(x));
  const lines = ['| model | FD ↓ | digit acc | thickness acc | slant acc | samples/s | n |', '| --- | ---: | ---: | ---: | ---: | ---: | ---: |'];
  for (const k of MODEL_KEYS) {
    const m = report[k];
    if (m) lines.push(`| ${k} | ${f(m.fd, 2)}${m.n < MIN_FD_SAMPLES ? '*' : ''} | ${f(m.digit_acc, 3)} | ${f(m.thickness_acc, 3)} | ${f(m.slant_acc, 3)} | ${f(m.samples_per_s, 2)} | ${m.n} |`);
  }
  const small = MODEL_KEYS.map((k) => report[k]?.n).filter((n): n is number => n !== undefined && n < MIN_FD_SAMPLES);
  if (small.length) lines.push('', `* FD over n = ${Math.min(...small)} samples: biased upwards at small n and not comparable with FDs at another n; use n ≥ ${MIN_FD_SAMPLES} (the same n) to compare models`);
  const t = report.teacher_ddim25;
  const s = report.student_1step;
  if (t && s) {
    const speed = reused.includes('teacher_ddim25')
      ? "sampling speeds not compared: the teacher's samples/s is cached from its eval.json"
      : `student sampling ${f(s.samples_per_s / t.samples_per_s, 1)}x the teacher's 25-step samples/s`;
    const ratioNote = Math.min(s.n, t.n) < MIN_FD_SAMPLES ? ` (n = ${Math.min(s.n, t.n)} < ${MIN_FD_SAMPLES}: not meaningful)` : '';
    lines.push('', `student/teacher FD ratio ${f(s.fd / t.fd, 2)}${ratioNote}; ${speed}`);
  }
  return lines.join('\n') + '\n';
}
