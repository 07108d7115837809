/**
 * `swiftbrush distill`: SwiftBrush distillation of a diffusers teacher over prompt embeddings.
 * Its flags are generated from the settings schema (src/swiftbrush/config.ts): every key of it is a
 * flag and a key of `--config FILE.json` (flags win over the file). The run writes its complete
 * settings to OUT/config.json, which `--config` takes back; `--resume` restores them from the
 * newest checkpoint, with the options given again overriding them.
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { initBackend } from '../backend.ts';
import { runDistillation } from '../operators/run.ts';
import { prepareRunFolder } from '../operators/run_folder.ts';
import { detectLauncher } from '../parallel/mpi.ts';
import { OFFICIAL_DEFAULTS, SETTING_KEYS, checkSettings, pickDistillConfig, type DistillConfig, type RunSettings } from '../swiftbrush/config.ts';
import { planDistillation } from '../operators/state.ts';
import { backendMemoryLimit, formatPlan, NATIVE_ADVICE } from '../models/memory.ts';
import { readNullEmbedding } from '../streams/reader.ts';
import { log } from '../log.ts';
import { backendOption, settingOption } from './options.ts';
import { reportStop, stopOnSignals } from './signals.ts';

interface DistillFlags extends Partial<RunSettings> {
  config?: string;
  dryRun?: boolean;
  resume?: boolean;
  overwrite?: boolean;
  mpi?: boolean;
  backend?: string;
}

/** Keys a --config file may hold beside the settings. */
const CONFIG_EXTRA_KEYS = ['backend'] as const;

/** Reads and validates a --config file (types, ranges, unknown keys: each refused by name). */
export async function readConfigFile(path: string): Promise<Partial<RunSettings> & { backend?: string }> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new Error(`--config ${path}: ${(err as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error(`--config ${path}: expected a JSON object of settings`);
  const where = `--config ${path}: `;
  const { backend, ...rest } = raw as Record<string, unknown>;
  if (backend !== undefined && typeof backend !== 'string') throw new Error(`${where}backend must be a string, got ${JSON.stringify(backend)}`);
  return { ...checkSettings(rest, where, CONFIG_EXTRA_KEYS), ...(backend !== undefined ? { backend } : {}) };
}

/** `--dry-run`: the memory plan from config.json and the weight headers (tokens from the embeddings' null prompt, else 77). */
async function dryRun(teacher: string, config: DistillConfig, embeddings: string | undefined, backend: string): Promise<string> {
  const tokens = embeddings ? (await readNullEmbedding(embeddings)).shape[0] : 77;
  const { plan, params, fileParams, files, dtypes } = await planDistillation(teacher, config, tokens);
  const limit = backendMemoryLimit(backend);
  const head = `${teacher}: ${params.toLocaleString('en')} parameters by config.json, ${fileParams.toLocaleString('en')} in ${files.join(', ')} (${dtypes.join(', ')}; float32 on the backend); ${tokens} tokens${embeddings ? '' : ' (no --embeddings: assumed)'}; backend ${backend}`;
  const verdict = plan.total <= limit.bytes ? 'fits' : backend === 'wasm' ? `refused on wasm: ${NATIVE_ADVICE}` : 'may not fit: lower --batch-size, or use a machine with more memory';
  return `${head}\n${formatPlan(plan, limit)}\n${verdict}`;
}

export function register(program: Command): void {
  const cmd = program
    .command('distill')
    .description('distil a diffusers teacher into a one-step student (SwiftBrush / VSD) over Parquet prompt embeddings; defaults are the official script\'s (SD 2.1-base)');
  for (const key of SETTING_KEYS) {
    cmd.addOption(settingOption(key));
    if (key === 'out') cmd.option('--config <file>', 'JSON file of settings (camelCase keys, as the config.json a run writes); flags win over it');
  }
  cmd
    .option('--resume', 'continue the run in --out from its newest checkpoint, with its settings (options given again override them)')
    .option('--mpi', 'data-parallel over MPI processes even when no launcher is detected (under mpirun / srun it is automatic; docs/mpi.md)')
    .option('--dry-run', "print what the run will hold in memory (teacher, student, EMA, Adam, gradients, LoRA, activations) against the backend's limit, from config.json and the weight headers; load nothing and exit")
    .option('--overwrite', 'start afresh over a previous distill run in --out (removes only that run\'s files)')
    .addOption(backendOption())
    .action(async (flags: DistillFlags) => {
      const { config: configPath, resume, overwrite, backend: backendFlag, dryRun: dry, mpi, ...given } = flags;
      const fromFile = configPath ? await readConfigFile(configPath) : {};
      const defined = Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined)) as Partial<RunSettings>;
      const o: Partial<RunSettings> & { backend?: string } = { ...fromFile, ...defined };
      if (dry) {
        if (o.teacher === undefined) throw new Error('missing required option --teacher (or "teacher" in --config)');
        const backend = await initBackend(backendFlag ?? o.backend);
        const embeddings = o.embeddings === undefined ? undefined : Array.isArray(o.embeddings) ? o.embeddings.join(',') : o.embeddings;
        process.stdout.write(`${await dryRun(o.teacher, { ...OFFICIAL_DEFAULTS, ...pickDistillConfig(o) }, embeddings, backend.backend)}\n`);
        return;
      }
      if (o.out === undefined) throw new Error('missing required option --out (or "out" in --config)');
      // Under mpirun / srun only rank 0 checks and marks --out (it alone writes there): the other ranks
      // would otherwise look at the folder while rank 0 is writing its run.json and refuse it.
      if ((detectLauncher()?.rank ?? 0) === 0) await prepareRunFolder(o.out, { command: 'distill', resume, overwrite });
      const backend = await initBackend(backendFlag ?? o.backend);
      log.info({ backend: backend.backend, provider: backend.provider }, 'backend');
      const signals = stopOnSignals('a checkpoint is written at the end of this optimiser step, then the run exits');
      try {
        const result = await runDistillation({
          teacher: o.teacher,
          embeddings: o.embeddings,
          out: o.out,
          steps: o.steps,
          config: pickDistillConfig(o),
          checkpointEvery: o.checkpointEvery,
          checkpointsTotalLimit: o.checkpointsTotalLimit,
          resume: Boolean(resume),
          validationEvery: o.validationEvery,
          validationPrompts: o.validationPrompts,
          prefetch: o.prefetch,
          exportRawWeights: o.rawWeights,
          stopRequested: signals.requested,
          mpi: Boolean(mpi),
        });
        if (result.rank !== 0) return; // rank 0 reports for an MPI run
        process.stdout.write(`${JSON.stringify(result)}\n`);
        reportStop(signals, result.step, `npx swiftbrush distill --out ${o.out} --resume`);
      } finally {
        signals.dispose();
      }
    });
}
