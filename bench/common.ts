/**
 * What the benchmark scripts share: flags parsed with commander as the CLI parses them (`--help`
 * lists them, a bad value or an unknown flag is refused by name), the median, and the fixture paths.
 */
import { Command } from 'commander';
import { fileURLToPath } from 'node:url';

export { backendOption, float, int } from '../src/cli/options.ts';

/** The diffusers fixture UNet (4x16x16, 1.43M parameters) and its scheduler, independent of the working directory. */
export const FIXTURE_UNET = fileURLToPath(new URL('../test/fixtures/diffusers-tiny-unet', import.meta.url));
export const FIXTURE_SCHEDULER = fileURLToPath(new URL('../test/fixtures/diffusers-scheduler', import.meta.url));

/**
 * Parses this script's flags: `define` adds the options to a commander program named `name`.
 * Returns the options, camelCased as commander names them.
 */
export function flags<T extends object>(name: string, description: string, define: (program: Command) => Command, argv = process.argv): T {
  const program = define(new Command(name).description(description)).allowExcessArguments(false);
  program.parse(argv);
  return program.opts<T>();
}

/** Median (the mean of the two middle values for an even count). */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error('median of no values');
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
