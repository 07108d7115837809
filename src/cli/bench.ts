/**
 * `swiftbrush bench`: median seconds per SwiftBrush step of the real stream vs a fused hand loop,
 * each operator's share, UNet forward / forward+backward, peak RSS and tensor drift
 * (library: bench/step.ts). `npm run bench` = `swiftbrush bench --json`.
 */
import { readFile } from 'node:fs/promises';
import { Option, type Command } from 'commander';
import { initBackend } from '../backend.ts';
import { FIXTURE_SCHEDULER, FIXTURE_UNET, runBench, type BenchOptions } from '../../bench/step.ts';
import { backendOption, int } from './options.ts';
import { DEFAULT_EMBEDDINGS } from '../default_data.ts';

type BenchFlags = Omit<BenchOptions, 'onProgress' | 'config'> & { embeddings: string; backend?: string; json?: boolean; torchRef?: string; variant?: string; mpi?: boolean; gradAccum: number };

/** PyTorch's figures for the same model (bench/torch_step.py's `JSON {...}` line, or that object alone). */
interface TorchFigures {
  params: number;
  step_s: number;
  forward_ms: number;
  forward_backward_ms: number;
  peak_rss_mib: number;
  [key: string]: unknown;
}

async function readTorchFigures(path: string): Promise<TorchFigures> {
  const text = await readFile(path, 'utf8').catch((err: Error) => {
    throw new Error(`--torch-ref ${path}: ${err.message}`);
  });
  const line = text.split('\n').reverse().find((l) => l.trim().startsWith('JSON ') || l.trim().startsWith('{'));
  if (!line) throw new Error(`--torch-ref ${path}: no \`JSON {...}\` line (the output of bench/torch_step.py)`);
  try {
    return JSON.parse(line.trim().replace(/^JSON /, '')) as TorchFigures;
  } catch (err) {
    throw new Error(`--torch-ref ${path}: ${(err as Error).message}`);
  }
}

export function register(program: Command): void {
  program
    .command('bench')
    .description('benchmark one distillation step: stream vs fused loop, per-operator shares, UNet fwd/fwd+bwd, RSS, tensor drift')
    .addOption(new Option('--unet <dir>', 'teacher pipeline folder (unet/ + scheduler/) or a bare unet folder').default(FIXTURE_UNET, "the package's test/fixtures/diffusers-tiny-unet"))
    .addOption(new Option('--scheduler <dir>', 'scheduler folder when --unet is a bare unet folder').default(FIXTURE_SCHEDULER, "the package's test/fixtures/diffusers-scheduler"))
    .option('--batch-size <n>', 'prompts per step', int(1), 8)
    .option('--steps <n>', 'timed steps per mode (stream, fused, per-operator)', int(1), 20)
    .option('--warmup <n>', 'untimed steps per mode first', int(1), 3)
    .option('--round <n>', 'steps per interleaved round', int(1), 5)
    .option('--unet-reps <n>', 'timed UNet forward / forward+backward repetitions', int(1), 10)
    .addOption(new Option('--embeddings <file>', 'Parquet file whose "" row is the null prompt').default(DEFAULT_EMBEDDINGS, 'the shipped data/embeddings.parquet'))
    .option('--replicas <n>', 'also time the step split over n data-parallel threads (n micro-batches of B/n, --replicas n --grad-accum n); 1 = skip', int(1), 1)
    .option('--mpi', 'under mpirun -np N: time the distillation step over N processes instead (step time, all-reduce share, bytes per step; docs/mpi.md)')
    .option('--grad-accum <k>', 'with --mpi: micro-batches per process per optimiser step', int(1), 1)
    .option('--tokens <n>', 'prompt tokens of the synthetic embeddings when --embeddings has no null prompt of the UNet\'s width (default 8)', int(1))
    .option('--torch-ref <file>', "PyTorch's figures for the same model and batch (the output of bench/torch_step.py): printed side by side, with ratios")
    .option('--variant <name>', "teacher weights variant, as diffusers' from_pretrained(variant=...)")
    .addOption(backendOption())
    .option('--json', 'print one JSON object')
    .action(async (opts: BenchFlags) => {
      const choice = await initBackend(opts.backend);
      if (opts.mpi) {
        const { runMpiBench } = await import('../parallel/bench_mpi.ts'); // loads MPI only when asked
        const r = await runMpiBench({ config: opts.variant ? { variant: opts.variant } : undefined, unet: opts.unet, scheduler: opts.scheduler ?? FIXTURE_SCHEDULER, embeddings: opts.embeddings, batchSize: opts.batchSize, gradAccum: opts.gradAccum, steps: opts.steps, warmup: opts.warmup });
        const { openWorld } = await import('../parallel/mpi.ts');
        if (openWorld().rank !== 0) return;
        if (opts.json) process.stdout.write(JSON.stringify(r) + '\n');
        else {
          const mb = (b: number) => (b / 2 ** 20).toFixed(1);
          process.stdout.write(
            [
              `${r.processes} processes (${r.library}), backend ${r.backend}, ${r.unet}, ${r.params} params, global batch ${r.global_batch} (${r.batch_size} x ${r.grad_accum} x ${r.processes}), ${r.steps} steps`,
              `step ${r.step_s.toFixed(3)} s   all-reduce ${r.allreduce_s.toFixed(3)} s (${(100 * r.allreduce_share).toFixed(1)}% of the step)`,
              `per process per step: ${mb(r.bytes_per_step)} MiB handed to MPI, ring all-reduce sends ${mb(r.ring_bytes_sent_per_step)} MiB (${mb(r.ring_bandwidth_bytes_per_s)} MiB/s effective)`,
            ].join('\n') + '\n',
          );
        }
        return;
      }
      const torch = opts.torchRef ? await readTorchFigures(opts.torchRef) : null;
      const result = await runBench({
        config: opts.variant ? { variant: opts.variant } : undefined,
        unet: opts.unet,
        scheduler: opts.scheduler,
        batchSize: opts.batchSize,
        steps: opts.steps,
        warmup: opts.warmup,
        round: opts.round,
        unetReps: opts.unetReps,
        embeddings: opts.embeddings,
        replicas: opts.replicas,
        tokens: opts.tokens,
        onProgress: (done, total) => process.stderr.write(`bench: ${done}/${total} steps per mode\n`),
      });
      const ratios = torch ? { step: result.step_s / torch.step_s, forward: result.forward_ms / torch.forward_ms, forward_backward: result.forward_backward_ms / torch.forward_backward_ms, peak_rss: result.peak_rss_mib / torch.peak_rss_mib } : null;
      if (torch && torch.params !== result.params) throw new Error(`--torch-ref ${opts.torchRef}: ${torch.params} parameters, this UNet has ${result.params}: not the same model`);
      const out = { ...result, provider: choice.provider, ...(torch ? { pytorch: torch, ratio_to_pytorch: ratios } : {}) };
      if (opts.json) {
        process.stdout.write(JSON.stringify(out) + '\n');
        return;
      }
      const r = out;
      const lines = [
        `backend ${r.backend} (${r.provider}), ${r.unet}, batch ${r.batch_size}, ${r.params} params, ${r.steps} steps per mode`,
        `step (stream)  ${r.step_s.toFixed(3)} s   fused loop ${r.fused_step_s.toFixed(3)} s   stream overhead ${(100 * r.stream_overhead).toFixed(1)}% (95% CI ${r.stream_overhead_ci95.map((v) => (100 * v).toFixed(1)).join(' to ')}%)`,
        `UNet forward ${r.forward_ms.toFixed(1)} ms   forward+backward ${r.forward_backward_ms.toFixed(1)} ms`,
        ...Object.entries(r.operator_ms).map(([k, v]) => `  ${k.padEnd(14)} ${v.toFixed(1).padStart(8)} ms  ${(100 * r.operator_share[k]!).toFixed(1).padStart(5)}%`),
        ...(r.data_parallel ? [`data-parallel: ${r.data_parallel.replicas} threads x ${r.data_parallel.micro_batch} prompts  ${r.data_parallel.step_s.toFixed(3)} s per step   speed-up ${r.data_parallel.speedup.toFixed(2)}x`] : []),
        `peak RSS ${r.peak_rss_mib.toFixed(0)} MiB (after warm-up ${r.rss_after_warmup_mib.toFixed(0)}, end ${r.rss_end_mib.toFixed(0)})   numTensors drift ${r.tensor_drift}   load ${r.load_s.toFixed(1)} s`,
        ...(torch && ratios
          ? [
              `PyTorch (${opts.torchRef}): step ${torch.step_s.toFixed(3)} s (x${ratios.step.toFixed(2)})   forward ${torch.forward_ms.toFixed(1)} ms (x${ratios.forward.toFixed(2)})   forward+backward ${torch.forward_backward_ms.toFixed(1)} ms (x${ratios.forward_backward.toFixed(2)})   peak RSS ${torch.peak_rss_mib.toFixed(0)} MiB (x${ratios.peak_rss.toFixed(2)})`,
            ]
          : []),
      ];
      process.stdout.write(lines.join('\n') + '\n');
    });
}
