/**
 * The settings of a distillation run, defined once: every key with its type, range, default and
 * help. The `distill` flags are generated from it (src/cli/distill.ts), `--config FILE.json` is
 * validated by it, the `config.json` a run writes and the settings a checkpoint carries are complete
 * objects of it (camelCase, accepted back by `--config`), and `--resume` merges by it.
 *
 * Two groups: the algorithm's hyper-parameters (`DistillConfig`, what the operators read; defaults
 * are the official SwiftBrush script's for SD 2.1-base) and the run's options (files, length,
 * checkpoints, validation).
 */

/** Hyper-parameters; defaults are the official SwiftBrush script's (SD 2.1-base). */
export interface DistillConfig {
  seed: number;
  batchSize: number;
  gradAccum: number;
  guidanceScale: number;
  studentLr: number;
  /** Linear warm-up of the student's lr over its first steps (0 = none), as diffusers' schedulers do. */
  lrWarmupSteps: number;
  /**
   * The student's lr after warm-up, as diffusers' get_scheduler names it: 'constant' (official;
   * with warm-up it is constant_with_warmup), or 'linear' / 'cosine' decay to 0 at lrDecaySteps.
   */
  lrScheduler: 'constant' | 'linear' | 'cosine';
  /** diffusers' num_training_steps for the decaying schedules; 0 = the run's --steps. */
  lrDecaySteps: number;
  loraLr: number;
  loraRank: number;
  loraAlpha: number;
  loraTargets: string[];
  maxGradNorm: number;
  /** EMA of the student; 0 disables it. */
  emaDecay: number;
  /** VSD timesteps t ∈ [tMin, tMax] (inclusive), the LoRA teacher's t′ ∈ [0, T−1]. */
  tMin: number;
  tMax: number;
  /**
   * The LoRA teacher's loss: 'official' = mse(√ᾱ_t′·ε_φ, √ᾱ_t′·ε′) (SwiftBrush; weak at high t′),
   * 'epsilon' = mse(ε_φ, ε′), the plain denoising loss of diffusers' training scripts (every t′ alike).
   */
  loraLossWeighting: 'official' | 'epsilon';
  /**
   * The score gradient's weighting per sample: 'official' = σ_t² (ε_teacher − ε_lora) (SwiftBrush,
   * ProlificDreamer's w(t)); 'dmd' = (ε_teacher − ε_lora) / mean|ε − ε_teacher|, DMD's (Yin et al.
   * 2024, eq. 8) normalisation (μ_fake − μ_real) / mean|μ_real − x̂0| written in ε: the difference of
   * the two x0-predictions divided by how far the teacher's x0-prediction is from x̂0.
   */
  vsdWeighting: 'official' | 'dmd';
  /**
   * λ in [0, 1]: the score gradient uses (1 − λ)·ε_lora + λ·ε as the fake score, i.e. mixes
   * DreamFusion's SDS (ε_teacher − ε) into VSD. 0 (official) is pure VSD.
   */
  sdsWeight: number;
  /** Probability (one draw per micro-batch) that the LoRA teacher trains on the null prompt. */
  loraNullPromptProb: number;
  /**
   * Threads computing micro-batches of a window at once (1 = the main thread alone). Each extra
   * replica takes whole micro-batches, so it needs gradAccum ≥ replicas; the result equals the
   * sequential run's up to float summation order.
   */
  replicas: number;
  /**
   * The student steps on every N-th optimiser step only; the LoRA teacher on every one (DMD2's
   * two-time-scale update, `dfake_gen_update_ratio`): the LoRA teacher tracks the student with N
   * times the updates, and the steps in between skip the teacher passes and the student's backward.
   * 1 = official (both every step). The first student step is step N−1.
   */
  studentUpdateEvery: number;
  /** Stop after this many consecutive windows with a non-finite loss or gradient. */
  maxNonFiniteSteps: number;
  adamBeta1: number;
  adamBeta2: number;
  adamEps: number;
  adamWeightDecay: number;
  /** diffusers' weights variant of the teacher (`fp16` reads diffusion_pytorch_model.fp16.safetensors); null = the plain file. */
  variant: string | null;
}

/** The run's options beside the hyper-parameters. */
export interface RunOptions {
  /** Teacher pipeline folder (unet/ + scheduler/) or a bare unet folder. */
  teacher: string;
  /** Embedding Parquet file(s): a path, a glob, a comma list, or a list of those. */
  embeddings: string | string[];
  out: string;
  /** Optimiser steps (each = gradAccum micro-batches). */
  steps: number;
  checkpointEvery: number;
  checkpointsTotalLimit: number;
  /** Steps between validation grids; 0 = off. */
  validationEvery: number;
  validationPrompts: number;
  prefetch: number;
  /** Export the raw student weights instead of its EMA. */
  rawWeights: boolean;
}

/** Everything a run is made with: what `config.json` holds and a checkpoint carries. */
export type RunSettings = RunOptions & DistillConfig;
export type SettingKey = keyof RunSettings;

type Kind = 'int' | 'number' | 'string' | 'choice' | 'list' | 'paths' | 'boolean';

/**
 * One setting. `resume` says what `--resume` does with it: 'restore' (taken from the checkpoint
 * unless given again), 'fixed' (taken from the checkpoint; giving another value is refused: the
 * checkpoint's tensors depend on it) or 'given' (never restored: where the run is, e.g. --out).
 */
export interface Setting {
  kind: Kind;
  help: string;
  /** Flag argument name in the help, e.g. '<n>'. */
  arg?: string;
  default?: unknown;
  /** Shown in the help instead of the default value (e.g. "--steps"). */
  defaultText?: string;
  min?: number;
  max?: number;
  /** The bound is exclusive. */
  minExclusive?: boolean;
  maxExclusive?: boolean;
  choices?: readonly string[];
  required?: boolean;
  resume: 'restore' | 'fixed' | 'given';
  group: 'run' | 'algorithm';
}

const alg = (s: Omit<Setting, 'group' | 'resume'> & { resume?: Setting['resume'] }): Setting => ({ resume: 'restore', ...s, group: 'algorithm' });
const run = (s: Omit<Setting, 'group' | 'resume'> & { resume?: Setting['resume'] }): Setting => ({ resume: 'restore', ...s, group: 'run' });
const prob = { min: 0, max: 1 };
const beta = { min: 0, max: 1, maxExclusive: true };

export const SETTINGS: { readonly [K in SettingKey]: Setting } = {
  teacher: run({ kind: 'string', arg: '<dir>', required: true, resume: 'fixed', help: 'teacher pipeline folder (unet/ + scheduler/) or a bare unet folder' }),
  embeddings: run({ kind: 'paths', arg: '<files>', required: true, help: 'embedding Parquet file(s): a path, a glob or a comma list' }),
  out: run({ kind: 'string', arg: '<dir>', required: true, resume: 'given', help: 'run folder (checkpoints, samples, metrics, student); never holding anything a run did not write' }),
  steps: run({ kind: 'int', arg: '<n>', min: 1, required: true, help: 'optimiser steps (each = --grad-accum micro-batches)' }),
  checkpointEvery: run({ kind: 'int', arg: '<n>', min: 1, default: 500, help: 'steps between checkpoints' }),
  checkpointsTotalLimit: run({ kind: 'int', arg: '<n>', min: 1, default: 3, help: 'checkpoints kept' }),
  validationEvery: run({ kind: 'int', arg: '<n>', min: 0, default: 100, help: 'steps between validation grids (samples/step-000100.png), 0 = off' }),
  validationPrompts: run({ kind: 'int', arg: '<n>', min: 1, default: 8, help: 'prompts in the validation grid' }),
  prefetch: run({ kind: 'int', arg: '<n>', min: 1, default: 2, help: 'embedding batches read ahead' }),
  rawWeights: run({ kind: 'boolean', default: false, help: 'export the raw student weights instead of its EMA' }),

  batchSize: alg({ kind: 'int', arg: '<n>', min: 1, default: 16, help: 'prompts per micro-batch' }),
  gradAccum: alg({ kind: 'int', arg: '<k>', min: 1, default: 1, help: 'micro-batches per optimiser step' }),
  seed: alg({ kind: 'int', arg: '<n>', min: 0, default: 0, help: 'seed of every random draw' }),
  guidanceScale: alg({ kind: 'number', arg: '<w>', min: 0, default: 4.5, help: 'CFG scale of the teacher in the score gradient' }),
  studentLr: alg({ kind: 'number', arg: '<x>', min: 0, default: 1e-6, help: 'student Adam lr' }),
  lrWarmupSteps: alg({ kind: 'int', arg: '<n>', min: 0, default: 0, help: 'student lr warm-up steps (linear, as diffusers)' }),
  lrScheduler: alg({ kind: 'choice', arg: '<name>', choices: ['constant', 'linear', 'cosine'], default: 'constant', help: "student lr after warm-up, as diffusers' get_scheduler: constant, or linear / cosine decay to 0 at --lr-decay-steps" }),
  lrDecaySteps: alg({ kind: 'int', arg: '<n>', min: 0, default: 0, defaultText: '0 = --steps', help: 'steps to reach lr 0 with linear/cosine' }),
  loraLr: alg({ kind: 'number', arg: '<x>', min: 0, default: 1e-3, help: 'LoRA teacher Adam lr' }),
  loraRank: alg({ kind: 'int', arg: '<r>', min: 1, default: 64, resume: 'fixed', help: 'LoRA rank' }),
  loraAlpha: alg({ kind: 'number', arg: '<a>', min: 0, minExclusive: true, default: 108, resume: 'fixed', help: 'LoRA alpha; scale alpha/rank' }),
  loraTargets: alg({ kind: 'list', arg: '<list>', default: ['to_q', 'to_v'], resume: 'fixed', help: "comma list of LoRA target modules, matched as PEFT's target_modules (Linear or Conv2d names or suffixes: to_q, to_out.0, conv1, time_emb_proj …)" }),
  maxGradNorm: alg({ kind: 'number', arg: '<x>', min: 0, minExclusive: true, default: 1.0, help: 'gradient clipping per model' }),
  emaDecay: alg({ kind: 'number', arg: '<x>', ...beta, default: 0.9999, help: 'student EMA decay, 0 = off' }),
  tMin: alg({ kind: 'int', arg: '<t>', min: 0, default: 20, help: 'smallest VSD timestep' }),
  tMax: alg({ kind: 'int', arg: '<t>', min: 0, default: 980, help: 'largest VSD timestep' }),
  loraLossWeighting: alg({ kind: 'choice', arg: '<w>', choices: ['official', 'epsilon'], default: 'official', help: 'LoRA teacher loss: official = mse(√ᾱ·ε_φ, √ᾱ·ε′), epsilon = plain mse(ε_φ, ε′)' }),
  vsdWeighting: alg({ kind: 'choice', arg: '<w>', choices: ['official', 'dmd'], default: 'official', help: "student score gradient: official = σ_t²(ε_teacher − ε_lora), dmd = (ε_teacher − ε_lora) / mean|ε − ε_teacher| per sample (DMD's normalisation)" }),
  sdsWeight: alg({ kind: 'number', arg: '<λ>', ...prob, default: 0, help: "mix DreamFusion's SDS into the score gradient: fake score (1 − λ)·ε_lora + λ·ε; 0 = pure VSD" }),
  loraNullPromptProb: alg({ kind: 'number', arg: '<p>', ...prob, default: 0.1, help: 'null-prompt probability for the LoRA teacher' }),
  replicas: alg({ kind: 'int', arg: '<n>', min: 1, default: 1, help: 'data-parallel threads (main + n−1 workers), each computing whole micro-batches of a --grad-accum window: both cores on the single-threaded wasm backend (needs --grad-accum ≥ n)' }),
  studentUpdateEvery: alg({ kind: 'int', arg: '<n>', min: 1, default: 1, help: 'the student steps on every n-th optimiser step, the LoRA teacher on every one (DMD2-style two-time-scale update)' }),
  maxNonFiniteSteps: alg({ kind: 'int', arg: '<n>', min: 1, default: 10, help: 'stop after this many non-finite steps in a row' }),
  adamBeta1: alg({ kind: 'number', arg: '<x>', ...beta, default: 0.9, help: 'Adam beta1 (both models)' }),
  adamBeta2: alg({ kind: 'number', arg: '<x>', ...beta, default: 0.999, help: 'Adam beta2 (both models)' }),
  adamEps: alg({ kind: 'number', arg: '<x>', min: 0, minExclusive: true, default: 1e-8, help: 'Adam epsilon' }),
  adamWeightDecay: alg({ kind: 'number', arg: '<x>', min: 0, default: 0, help: 'Adam weight decay (decoupled, AdamW)' }),
  variant: alg({ kind: 'string', arg: '<name>', default: null, defaultText: 'none: the plain file', resume: 'fixed', help: "teacher weights variant, as diffusers' from_pretrained(variant=...): fp16 reads diffusion_pytorch_model.fp16.safetensors (training runs in float32 either way)" }),
};

export const SETTING_KEYS = Object.keys(SETTINGS) as SettingKey[];
export const DISTILL_CONFIG_KEYS = SETTING_KEYS.filter((k) => SETTINGS[k].group === 'algorithm') as (keyof DistillConfig)[];
export const RUN_OPTION_KEYS = SETTING_KEYS.filter((k) => SETTINGS[k].group === 'run') as (keyof RunOptions)[];

/** The official SwiftBrush script's hyper-parameters (SD 2.1-base). */
export const OFFICIAL_DEFAULTS: DistillConfig = Object.fromEntries(DISTILL_CONFIG_KEYS.map((k) => [k, structuredClone(SETTINGS[k].default)])) as unknown as DistillConfig;

/** The run options' defaults (the required ones have none). */
export const RUN_DEFAULTS: Partial<RunOptions> = Object.fromEntries(RUN_OPTION_KEYS.filter((k) => SETTINGS[k].default !== undefined).map((k) => [k, SETTINGS[k].default]));

/** --flag-name of a key. */
export function flagOf(key: string): string {
  return `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

/** How a value reads in help and messages: 0.0001, 'official', to_q,to_v. */
export function formatValue(v: unknown): string {
  if (Array.isArray(v)) return v.join(',');
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
}

const describe = (v: unknown) => (typeof v === 'string' ? `"${v}" (a string)` : Array.isArray(v) ? `${JSON.stringify(v)} (a list)` : v === null ? 'null' : `${String(v)}${typeof v === 'number' ? '' : ` (a ${typeof v})`}`);

/**
 * Checks one value against its setting and returns it normalised (a comma string becomes a list);
 * throws "`where`key must be …, got …" naming the key.
 */
export function checkSetting(key: SettingKey, value: unknown, where = ''): unknown {
  const s = SETTINGS[key];
  const fail = (what: string): never => {
    throw new Error(`${where}${key} must be ${what}, got ${describe(value)}`);
  };
  switch (s.kind) {
    case 'int':
    case 'number': {
      if (typeof value !== 'number') fail(s.kind === 'int' ? 'an integer' : 'a number');
      const v = value as number;
      const lowOk = s.min === undefined || (s.minExclusive ? v > s.min : v >= s.min);
      const highOk = s.max === undefined || (s.maxExclusive ? v < s.max : v <= s.max);
      if (!lowOk || !highOk) {
        if (s.max === undefined) fail(`${s.minExclusive ? '>' : '≥'} ${s.min}`);
        fail(`in ${s.minExclusive ? '(' : '['}${s.min}, ${s.max}${s.maxExclusive ? ')' : ']'}`);
      }
      if (!Number.isFinite(v)) fail('a finite number');
      if (s.kind === 'int' && !Number.isInteger(v)) fail('an integer');
      return v;
    }
    case 'choice': {
      if (typeof value === 'string' && s.choices!.includes(value)) return value;
      const quoted = s.choices!.map((c) => `'${c}'`);
      throw new Error(`${where}${key} must be ${quoted.slice(0, -1).join(', ')} or ${quoted.at(-1)}, got ${JSON.stringify(value)}`);
    }
    case 'string':
      if (value === null && s.default === null) return value; // an optional string whose default is "none"
      if (typeof value !== 'string' || value === '') fail('a non-empty string');
      return value;
    case 'boolean':
      if (typeof value !== 'boolean') fail('true or false');
      return value;
    case 'list': {
      const list = typeof value === 'string' ? value.split(',').map((x) => x.trim()).filter(Boolean) : value;
      if (!Array.isArray(list) || list.length === 0 || list.some((x) => typeof x !== 'string' || x === '')) fail('a non-empty list of names (or a comma string)');
      return list;
    }
    case 'paths': {
      const ok = (typeof value === 'string' && value !== '') || (Array.isArray(value) && value.length > 0 && value.every((x) => typeof x === 'string' && x !== ''));
      if (!ok) fail('a path, a glob, a comma list or a list of those');
      return value;
    }
  }
}

/** Cross-setting rules (each names both keys). */
export function checkSettingsTogether(c: Partial<RunSettings>, where = ''): void {
  if (c.tMin !== undefined && c.tMax !== undefined && c.tMin > c.tMax) throw new Error(`${where}tMin (${c.tMin}) must not exceed tMax (${c.tMax})`);
  if (c.replicas !== undefined && c.gradAccum !== undefined && c.replicas > c.gradAccum) {
    throw new Error(`${where}replicas (${c.replicas}) needs gradAccum ≥ replicas (got ${c.gradAccum}): each replica computes whole micro-batches of an accumulation window`);
  }
}

/** Validates a partial settings object (a --config file, a library call): unknown keys, types, ranges. */
export function checkSettings(raw: Record<string, unknown>, where = '', extraKeys: readonly string[] = []): Partial<RunSettings> {
  const unknown = Object.keys(raw).filter((k) => !(k in SETTINGS) && !extraKeys.includes(k));
  if (unknown.length) {
    const hints = unknown.map((k) => {
      const camel = k.replace(/[_-]([a-z])/g, (_, c: string) => c.toUpperCase());
      return camel !== k && camel in SETTINGS ? `${k} (did you mean ${camel}?)` : k;
    });
    throw new Error(`${where}unknown key(s) ${hints.join(', ')}; known: ${[...SETTING_KEYS, ...extraKeys].join(', ')}`);
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (v === undefined) continue;
    out[k] = k in SETTINGS ? checkSetting(k as SettingKey, v, where) : v;
  }
  checkSettingsTogether(out as Partial<RunSettings>, where);
  return out as Partial<RunSettings>;
}

/** The algorithm's hyper-parameters: defaults, then `given` (validated). */
export function distillConfig(given: Partial<DistillConfig> = {}, where = ''): DistillConfig {
  const config = { ...OFFICIAL_DEFAULTS, ...checkSettings(given as Record<string, unknown>, where) } as DistillConfig;
  checkSettingsTogether(config, where);
  return config;
}

/** The algorithm part of a settings object. */
export function pickDistillConfig(s: Partial<RunSettings>): Partial<DistillConfig> {
  return Object.fromEntries(DISTILL_CONFIG_KEYS.filter((k) => s[k] !== undefined).map((k) => [k, s[k]])) as Partial<DistillConfig>;
}

export interface SettingChange {
  key: SettingKey;
  from: unknown;
  to: unknown;
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/** "guidanceScale 2.5 → 3, steps 50 → 80". */
export function formatChanges(changes: readonly SettingChange[]): string {
  return changes.map((c) => `${c.key} ${formatValue(c.from)} → ${formatValue(c.to)}`).join(', ');
}

/**
 * What `--resume` runs with: the checkpoint's settings, with the ones given again on the command
 * line (or in --config) overriding them. Returns the changes; refuses a change to a 'fixed' key by
 * name. `equal` compares a key's two values (e.g. paths resolved); default: the same JSON.
 */
export function resumeSettings(saved: Partial<RunSettings>, given: Partial<RunSettings>, options: { checkpoint: string; equal?: (key: SettingKey, a: unknown, b: unknown) => boolean }): { settings: Partial<RunSettings>; changes: SettingChange[] } {
  const equal = options.equal ?? ((_k, a, b) => same(a, b));
  const settings: Record<string, unknown> = {};
  const changes: SettingChange[] = [];
  for (const key of SETTING_KEYS) {
    const s = SETTINGS[key];
    const was = saved[key];
    const now = given[key];
    if (s.resume === 'given' || was === undefined) {
      if (now !== undefined) settings[key] = now;
      continue;
    }
    if (now === undefined || equal(key, was, now)) {
      settings[key] = was;
      continue;
    }
    if (s.resume === 'fixed') {
      throw new Error(
        `--resume: ${key} cannot change (${flagOf(key)}): ${options.checkpoint} was trained with ${formatValue(was)}, asked for ${formatValue(now)}. ` +
          'Leave it out to continue that run, or start a new run (another --out, or --overwrite)',
      );
    }
    settings[key] = now;
    changes.push({ key, from: was, to: now });
  }
  return { settings: settings as Partial<RunSettings>, changes };
}
