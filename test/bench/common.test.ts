import { describe, expect, it } from 'vitest';
import { flags, int, median } from '../../bench/common.ts';

describe('bench helpers', () => {
  it('median: the middle value, or the mean of the two middle ones', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(() => median([])).toThrow(/no values/);
  });

  it('flags: parsed as the CLI parses them, bad values refused by name', () => {
    const define = (p: import('commander').Command) => p.option('--steps <n>', 'steps', int(1), 20).option('--json', 'JSON').exitOverride().configureOutput({ writeErr: () => {} });
    expect(flags('t', 'test', define, ['node', 't', '--steps', '3', '--json'])).toEqual({ steps: 3, json: true });
    expect(flags('t', 'test', define, ['node', 't'])).toEqual({ steps: 20 });
    expect(() => flags('t', 'test', define, ['node', 't', '--steps', '0'])).toThrow(/--steps.*expected an integer >= 1, got '0'/);
    expect(() => flags('t', 'test', define, ['node', 't', '--stpes', '3'])).toThrow(/unknown option '--stpes'/);
  });
});
