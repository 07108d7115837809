/**
 * `swiftbrush distill`: SwiftBrush distillation of a diffusers teacher over prompt embeddings.
 * Every hyper-parameter of the official script is a flag or a key of `--config FILE.json`
 * (flags win over the file; the file's keys are the flags' camelCase names, e.g. "guidanceScale").
 */
import { readFile } from 'node:fs/promises';
import { Option, type Command } from 'commander';
import { initBackend } from '../backend.ts';
import { runDistillation } from '../operators/run.ts';
import { OFFICIAL_DEFAULTS, type DistillConfig } from '../operators/state.ts';
import { log } from '../log.ts';
import { backendOption, float, int } from './options.ts';

const d = OFFICIAL_DEFAULTS;

interface DistillFlags {
  teacher?: string;
  embeddings?: string;
  out?: string;
  config?: string;
  steps?: number;
  batchSize?: number;
  gradAccum?: number;
  seed?: number;
  guidanceScale?: number;
  studentLr?: number;
  lrWarmupSteps?: number;
  lrScheduler?: 'constant' | 'linear' | 'cosine';
  lrDecaySteps?: number;
  loraLr?: number;
  loraRank?: number;
  loraAlpha?: number;
  loraTargets?: string;
  maxGradNorm?: number;
  emaDecay?: number;
  tMin?: number;
  tMax?: number;
  loraNullPromptProb?: number;
  loraLossWeighting?: 'official' | 'epsilon';
  vsdWeighting?: 'official' | 'dmd';
  sdsWeight?: number;
  replicas?: number;
  studentUpdateEvery?: number;
  maxNonFiniteSteps?: number;
  adamBeta1?: number;
  adamBeta2?: number;
  adamEps?: number;
  adamWeightDecay?: number;
  checkpointEvery?: number;
  checkpointsTotalLimit?: number;
  validationEvery?: number;
  validationPrompts?: number;
  prefetch?: number;
  resume?: boolean;
  rawWeights?: boolean;
  backend?: string;
  mpi?: boolean;
}

const CONFIG_KEYS = new Set(['teacher', 'embeddings', 'out', 'steps', 'checkpointEvery', 'checkpointsTotalLimit', 'validationEvery', 'validationPrompts', 'prefetch', 'resume', 'rawWeights', 'backend', 'mpi', ...Object.keys(OFFICIAL_DEFAULTS)]);

async function readConfigFile(path: string): Promise<Partial<DistillFlags & DistillConfig>> {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new Error(`--config ${path}: ${(err as Error).message}`);
  }
  const unknown = Object.keys(raw).filter((k) => !CONFIG_KEYS.has(k));
  if (unknown.length) throw new Error(`--config ${path}: unknown key(s) ${unknown.join(', ')} (known: ${[...CONFIG_KEYS].join(', ')})`);
  return raw as Partial<DistillFlags & DistillConfig>;
}

export function register(program: Command): void {
  program
    .command('distill')
    .description('distil a diffusers teacher into a one-step student (SwiftBrush / VSD) over Parquet prompt embeddings')
    .option('--teacher <dir>', 'teacher pipeline folder (unet/ + scheduler/) or unet folder')
    .option('--embeddings <files>', 'embedding Parquet file(s): a path, a glob or a comma list')
    .option('--out <dir>', 'output folder (checkpoints, samples, metrics, student)')
    .option('--config <file>', 'JSON file with any of these options (camelCase keys)')
    .option('--steps <n>', 'optimiser steps', int(1))
    .option('--batch-size <n>', `prompts per micro-batch (official ${d.batchSize})`, int(1))
    .option('--grad-accum <k>', 'micro-batches per optimiser step', int(1))
    .option('--seed <n>', 'seed of every random draw', int(0))
    .option('--guidance-scale <w>', `CFG scale of both teachers (official ${d.guidanceScale})`, float)
    .option('--student-lr <x>', `student Adam lr (official ${d.studentLr})`, float)
    .option('--lr-warmup-steps <n>', 'student lr warm-up steps (linear, as diffusers; official 0)', int(0))
    .addOption(new Option('--lr-scheduler <name>', "student lr after warm-up, as diffusers' get_scheduler: constant (official), linear or cosine decay to 0 at --lr-decay-steps").choices(['constant', 'linear', 'cosine']))
    .option('--lr-decay-steps <n>', 'steps to reach lr 0 with linear/cosine (default: --steps)', int(1))
    .option('--lora-lr <x>', `LoRA teacher Adam lr (official ${d.loraLr})`, float)
    .option('--lora-rank <r>', `LoRA rank (official ${d.loraRank})`, int(1))
    .option('--lora-alpha <a>', `LoRA alpha; scale alpha/rank (official ${d.loraAlpha})`, float)
    .option('--lora-targets <list>', `comma list of LoRA target modules, matched as PEFT's target_modules (Linear or Conv2d names or suffixes: to_q, to_out.0, conv1, time_emb_proj …; official ${d.loraTargets.join(',')})`)
    .option('--max-grad-norm <x>', `gradient clipping per model (official ${d.maxGradNorm})`, float)
    .option('--ema-decay <x>', `student EMA decay, 0 = off (official ${d.emaDecay})`, float)
    .option('--t-min <t>', `smallest VSD timestep (official ${d.tMin})`, int(0))
    .option('--t-max <t>', `largest VSD timestep (official ${d.tMax})`, int(0))
    .addOption(new Option('--lora-loss-weighting <w>', `LoRA teacher loss: official = mse(√ᾱ·ε_φ, √ᾱ·ε′), epsilon = plain mse(ε_φ, ε′) (official ${d.loraLossWeighting})`).choices(['official', 'epsilon']))
    .addOption(new Option('--vsd-weighting <w>', `student score gradient: official = σ_t²(ε_teacher − ε_lora), dmd = (ε_teacher − ε_lora) / mean|ε − ε_teacher| per sample (DMD's normalisation) (official ${d.vsdWeighting})`).choices(['official', 'dmd']))
    .option('--sds-weight <λ>', `mix DreamFusion's SDS into the score gradient: fake score (1 − λ)·ε_lora + λ·ε, λ in [0, 1] (official ${d.sdsWeight}: pure VSD)`, float)
    .option('--lora-null-prompt-prob <p>', `null-prompt probability for the LoRA teacher (official ${d.loraNullPromptProb})`, float)
    .option('--student-update-every <n>', 'the student steps on every n-th optimiser step, the LoRA teacher on every one (DMD2-style two-time-scale update; official 1)', int(1))
    .option('--replicas <n>', 'data-parallel threads (main + n−1 workers), each computing whole micro-batches of a --grad-accum window: use both cores on the single-threaded wasm backend (needs --grad-accum ≥ n; default 1)', int(1))
    .option('--max-non-finite-steps <n>', 'stop after this many non-finite steps in a row', int(1))
    .option('--adam-beta1 <x>', 'Adam beta1', float)
    .option('--adam-beta2 <x>', 'Adam beta2', float)
    .option('--adam-eps <x>', 'Adam epsilon', float)
    .option('--adam-weight-decay <x>', 'Adam weight decay', float)
    .option('--checkpoint-every <n>', 'steps between checkpoints (default 500)', int(1))
    .option('--checkpoints-total-limit <n>', 'checkpoints kept (default 3)', int(1))
    .option('--validation-every <n>', 'steps between validation grids, 0 = off (default 100)', int(0))
    .option('--validation-prompts <n>', 'prompts in the validation grid (default 8)', int(1))
    .option('--prefetch <n>', 'embedding batches read ahead (default 2)', int(1))
    .option('--resume', 'continue from the latest checkpoint in --out')
    .option('--raw-weights', 'export the raw student weights instead of its EMA')
    .option('--mpi', 'data-parallel over MPI processes even when no launcher is detected (under mpirun / srun it is automatic; see docs/mpi.md)')
    .addOption(backendOption())
    .action(async (flags: DistillFlags) => {
      const fromFile = flags.config ? await readConfigFile(flags.config) : {};
      const defined = Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined));
      const o = { ...fromFile, ...defined } as DistillFlags & Partial<DistillConfig>;
      for (const key of ['teacher', 'embeddings', 'out', 'steps'] as const) {
        if (o[key] === undefined) throw new Error(`missing required option --${key} (or "${key}" in --config)`);
      }
      const backend = await initBackend(o.backend);
      log.info({ backend: backend.backend, provider: backend.provider }, 'backend');
      const config: Partial<DistillConfig> = {};
      for (const key of Object.keys(OFFICIAL_DEFAULTS) as (keyof DistillConfig)[]) {
        const v = (o as Record<string, unknown>)[key];
        if (v !== undefined) (config as Record<string, unknown>)[key] = key === 'loraTargets' && typeof v === 'string' ? v.split(',').map((s) => s.trim()).filter(Boolean) : v;
      }
      let stop = false;
      const onSignal = (signal: string) => {
        log.warn({ signal }, 'stopping: a checkpoint is written at the end of this optimiser step');
        stop = true;
      };
      process.once('SIGINT', () => onSignal('SIGINT'));
      process.once('SIGTERM', () => onSignal('SIGTERM'));
      const result = await runDistillation({
        teacher: o.teacher!,
        embeddings: o.embeddings!,
        out: o.out!,
        steps: o.steps!,
        config,
        checkpointEvery: o.checkpointEvery,
        checkpointsTotalLimit: o.checkpointsTotalLimit,
        resume: Boolean(o.resume),
        validationEvery: o.validationEvery ?? 100,
        validationPrompts: o.validationPrompts,
        prefetch: o.prefetch,
        exportRawWeights: Boolean(o.rawWeights),
        stopRequested: () => stop,
        mpi: Boolean(o.mpi),
      });
      if (result.rank === 0) process.stdout.write(`${JSON.stringify(result)}\n`);
    });
}
