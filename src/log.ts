/**
 * pino logger. JSON lines on stderr (stdout stays free for `--json` results); human-readable
 * through pino-pretty when stderr is a terminal. `SWIFTBRUSH_LOG_LEVEL` sets the level.
 *
 * On a terminal a status line (the progress bar) may sit at the bottom of stderr: a log line is
 * then written above it (the bar's line is cleared, the log line written, the bar redrawn), so the
 * two never run into each other.
 */
import { Writable } from 'node:stream';
import { clearLine, cursorTo } from 'node:readline';
import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

/** A line redrawn at the bottom of the terminal, such as a progress bar. */
export interface StatusLine {
  redraw(): void;
}

let status: StatusLine | null = null;

/** Makes `line` the terminal's status line until the returned function is called. */
export function holdStatusLine(line: StatusLine): () => void {
  status = line;
  return () => {
    if (status === line) status = null;
  };
}

/** Writes text to stderr above the status line, if one is held. */
export function writeAboveStatusLine(text: string | Uint8Array): void {
  if (!status) {
    process.stderr.write(text);
    return;
  }
  clearLine(process.stderr, 0);
  cursorTo(process.stderr, 0);
  process.stderr.write(text);
  status.redraw();
}

function makeLogger(): Logger {
  const level = process.env.SWIFTBRUSH_LOG_LEVEL ?? (process.env.VITEST ? 'warn' : 'info');
  if (!process.stderr.isTTY) return pino({ level, base: undefined }, pino.destination({ dest: 2, sync: true }));
  const terminal = new Writable({
    write(chunk: Buffer, _encoding, done) {
      writeAboveStatusLine(chunk);
      done();
    },
  });
  return pino({ level, base: undefined }, pretty({ colorize: true, destination: terminal, ignore: 'pid,hostname' }));
}

export const log: Logger = makeLogger();
