import { afterEach, describe, expect, it, vi } from 'vitest';
import { holdStatusLine, writeAboveStatusLine } from '../src/log.ts';

describe('log lines and the progress bar', () => {
  afterEach(() => vi.restoreAllMocks());

  it('clear the status line, write above it and redraw it; without one, write as is', () => {
    const written: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      written.push(String(chunk));
      return true;
    });
    const redraw = vi.fn(() => written.push('<bar>'));
    const release = holdStatusLine({ redraw });
    writeAboveStatusLine('checkpoint saved\n');
    release();
    writeAboveStatusLine('done\n');
    const text = written.join('');
    // clearLine(…, 0) = ESC[2K, cursorTo(…, 0) = ESC[1G: the log line starts on a clean line.
    expect(text).toBe('\x1b[2K\x1b[1Gcheckpoint saved\n<bar>done\n');
    expect(redraw).toHaveBeenCalledTimes(1);
  });
});
