/**
 * The one SIGINT / SIGTERM handler of the long-running commands (distill, default, train-teacher).
 *
 * The first signal asks the run to stop: `requested()` turns true, the run checkpoints at the end
 * of the optimiser step and the command exits with 130 (SIGINT) or 143 (SIGTERM), printing how to
 * continue. The handler then removes itself, so a second signal gets the operating system's
 * default action: the process ends at once, even in the middle of a step, and the last complete
 * checkpoint stays as it is (checkpoints are written to a temp folder and renamed into place).
 */
import { log } from '../log.ts';

const EXIT_CODES = { SIGINT: 130, SIGTERM: 143 } as const;
type StopSignal = keyof typeof EXIT_CODES;

export interface StopSignals {
  /** Whether a signal asked the run to stop. */
  requested(): boolean;
  /** The signal received, if any. */
  readonly signal: StopSignal | undefined;
  /** 130 after SIGINT, 143 after SIGTERM, undefined without a signal. */
  readonly exitCode: number | undefined;
  /** Stops listening (the default action returns: a signal ends the process at once). */
  dispose(): void;
}

/** Listens for SIGINT and SIGTERM; `what` says what happens next ("a checkpoint is written …"). */
export function stopOnSignals(what: string): StopSignals {
  let received: StopSignal | undefined;
  const handlers = new Map<StopSignal, () => void>();
  const dispose = () => {
    for (const [signal, handler] of handlers) process.removeListener(signal, handler);
    handlers.clear();
  };
  for (const signal of Object.keys(EXIT_CODES) as StopSignal[]) {
    const handler = () => {
      received = signal;
      dispose();
      log.warn({ signal }, `stopping: ${what}; a second ${signal === 'SIGINT' ? 'Ctrl-C' : signal} quits at once, keeping the last complete checkpoint`);
    };
    handlers.set(signal, handler);
    process.on(signal, handler);
  }
  return {
    requested: () => received !== undefined,
    get signal() {
      return received;
    },
    get exitCode() {
      return received ? EXIT_CODES[received] : undefined;
    },
    dispose,
  };
}

/**
 * After a run that a signal stopped: prints how to continue and sets the exit status (130 / 143).
 * Returns whether a signal stopped it.
 */
export function reportStop(signals: StopSignals, step: number, resumeCommand: string): boolean {
  if (!signals.signal) return false;
  process.stderr.write(`stopped by ${signals.signal} after step ${step}; continue with: ${resumeCommand}\n`);
  process.exitCode = signals.exitCode;
  return true;
}
