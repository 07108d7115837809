/** Option helpers shared by commands: parsing with errors that name the option. */
import { InvalidArgumentError, Option } from 'commander';
import { BACKEND_NAMES } from '../backend.ts';

export function backendOption(): Option {
  return new Option('--backend <name>', 'tfjs backend (env SWIFTBRUSH_BACKEND)').choices([...BACKEND_NAMES]);
}

export function int(min = 0) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`expected an integer >= ${min}, got '${value}'`);
    return n;
  };
}

export function float(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`expected a finite number, got '${value}'`);
  return n;
}
