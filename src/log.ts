/**
 * pino logger. JSON lines on stderr (stdout stays free for `--json` results); human-readable
 * through pino-pretty when stderr is a terminal. `SWIFTBRUSH_LOG_LEVEL` sets the level.
 */
import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

function makeLogger(): Logger {
  const level = process.env.SWIFTBRUSH_LOG_LEVEL ?? (process.env.VITEST ? 'warn' : 'info');
  const stream = process.stderr.isTTY ? pretty({ colorize: true, destination: 2, ignore: 'pid,hostname' }) : pino.destination({ dest: 2, sync: true });
  return pino({ level, base: undefined }, stream);
}

export const log: Logger = makeLogger();
