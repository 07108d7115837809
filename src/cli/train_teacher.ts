/** `swiftbrush train-teacher`: trains the embedded default's MNIST teacher (resumable). */
import type { Command } from 'commander';
import { initBackend } from '../backend.ts';
import { trainTeacher } from '../mnist/teacher.ts';
import { log } from '../log.ts';
import { backendOption, float, int } from './options.ts';
import { reportStop, stopOnSignals } from './signals.ts';

export function register(program: Command): void {
  program
    .command('train-teacher')
    .description('train the MNIST teacher UNet of the embedded default (diffusers layout, resumable)')
    .option('--out <dir>', 'run folder (checkpoints, and the exported teacher in OUT/teacher); the committed checkpoints/teacher continues the shipped teacher', 'checkpoints/teacher')
    .option('--steps <n>', 'total optimisation steps', int(1), 20000)
    .option('--batch-size <n>', 'images per step', int(1), 64)
    .option('--lr <x>', 'Adam learning rate', float, 1e-3)
    .option('--seed <n>', 'seed for init and every random draw', int(0), 0)
    .option('--cond-dropout <p>', 'probability of training on the null prompt (for CFG)', float, 0.1)
    .option('--ema-decay <x>', 'EMA decay of the exported weights', float, 0.999)
    .option('--max-grad-norm <x>', 'gradient clipping', float, 1.0)
    .option('--checkpoint-every <n>', 'steps between checkpoints', int(1), 200)
    .option('--checkpoints-total-limit <n>', 'checkpoints kept', int(1), 2)
    .option('--resume', 'continue from the latest checkpoint in --out')
    .addOption(backendOption())
    .action(async (o: { out: string; steps: number; batchSize: number; lr: number; seed: number; condDropout: number; emaDecay: number; maxGradNorm: number; checkpointEvery: number; checkpointsTotalLimit: number; resume?: boolean; backend?: string }) => {
      const backend = await initBackend(o.backend);
      log.info({ backend: backend.backend }, 'backend');
      const signals = stopOnSignals('a checkpoint is written after this step, then training exits');
      let ema = 0;
      let last = 0;
      try {
        await trainTeacher({
          ...o,
          resume: Boolean(o.resume),
          shouldStop: signals.requested,
          onStep: ({ step, loss, gradNorm, secondsPerStep }) => {
            ema = ema ? 0.98 * ema + 0.02 * loss : loss;
            last = step;
            if (step % 20 === 0 || step <= 3) log.info({ step, loss: +ema.toFixed(5), gradNorm: +gradNorm.toFixed(3), s_per_step: +secondsPerStep.toFixed(3) }, 'teacher');
          },
        });
        reportStop(signals, last, `npx swiftbrush train-teacher --out ${o.out} --resume`);
      } finally {
        signals.dispose();
      }
    });
}
