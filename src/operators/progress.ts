/**
 * progress: a TTY progress bar (steps/s, losses, ETA) via cli-progress, or — when stderr is not a
 * terminal — a pino log line every `logEvery` steps. Both read the per-step records of metrics.ts.
 * While the bar is drawn, log lines go above it (log.ts' status line).
 */
import { SingleBar, Presets } from 'cli-progress';
import { finalize, pipe, type MonoTypeOperatorFunction } from 'rxjs';
import type { StepContext } from './context.ts';
import type { DistillState } from './state.ts';
import { stepRecords, type StepRecord } from './metrics.ts';
import { holdStatusLine, log } from '../log.ts';

export function progress(state: DistillState, options: { totalSteps: number; startStep?: number; logEvery?: number; tty?: boolean }): MonoTypeOperatorFunction<StepContext> {
  const tty = options.tty ?? Boolean(process.stderr.isTTY);
  const logEvery = options.logEvery ?? 10;
  if (!tty) {
    return stepRecords(state, (r: StepRecord) => {
      if (r.step % logEvery === 0 || r.step === options.totalSteps) {
        log.info({ step: r.step, of: options.totalSteps, loss_vsd: r.loss_vsd === null ? null : +r.loss_vsd.toPrecision(4), loss_lora: r.loss_lora === null ? null : +r.loss_lora.toPrecision(4), samples_per_s: +r.samples_per_s.toFixed(2) }, 'distill');
      }
    });
  }
  const bar = new SingleBar(
    // forceRedraw: after a log line has cleared the bar's line, redraw it even though its text is unchanged.
    { format: 'distill |{bar}| {value}/{total} steps | {rate} steps/s | vsd {vsd} | lora {lora} | ETA {eta_formatted}', hideCursor: true, etaBuffer: 20, forceRedraw: true },
    Presets.shades_classic,
  );
  bar.start(options.totalSteps, options.startStep ?? 0, { rate: '-', vsd: '-', lora: '-' });
  const release = holdStatusLine({ redraw: () => bar.render() });
  let last = performance.now();
  return pipe(
    stepRecords(state, (r) => {
      const t = performance.now();
      bar.update(r.step, { rate: (1000 / (t - last)).toFixed(2), vsd: r.loss_vsd?.toPrecision(3) ?? '-', lora: r.loss_lora?.toPrecision(3) ?? '-' });
      last = t;
    }),
    finalize(() => {
      release();
      bar.stop();
    }),
  );
}
