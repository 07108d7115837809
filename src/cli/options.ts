/** Option helpers shared by commands: parsing with errors that name the option. */
import { InvalidArgumentError, Option } from 'commander';
import { BACKEND_NAMES } from '../backend.ts';
import { SETTINGS, checkSetting, flagOf, formatValue, type SettingKey } from '../swiftbrush/config.ts';

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

/**
 * The commander option of a run setting, generated from its schema entry (src/swiftbrush/config.ts):
 * `--kebab-name <arg>`, parsed and range-checked by the schema, its default (or "required") shown.
 */
export function settingOption(key: SettingKey): Option {
  const s = SETTINGS[key];
  const flags = s.kind === 'boolean' ? flagOf(key) : `${flagOf(key)} ${s.arg ?? '<value>'}`;
  const shown = s.defaultText ?? (s.default !== undefined && s.kind !== 'boolean' ? formatValue(s.default) : undefined);
  const help = s.required ? `${s.help} (required; or "${key}" in --config)` : shown !== undefined ? `${s.help} (default: ${shown})` : s.help;
  const option = new Option(flags, help);
  if (s.kind === 'choice') return option.choices([...s.choices!]);
  if (s.kind === 'int' || s.kind === 'number') {
    option.argParser((value: string) => {
      const n = value.trim() === '' ? Number.NaN : Number(value);
      try {
        return checkSetting(key, Number.isNaN(n) ? value : n);
      } catch (err) {
        throw new InvalidArgumentError((err as Error).message.replace(`${key} must be`, 'expected'));
      }
    });
  }
  if (s.kind === 'list') {
    option.argParser((value: string) => {
      try {
        return checkSetting(key, value);
      } catch (err) {
        throw new InvalidArgumentError((err as Error).message.replace(`${key} must be`, 'expected'));
      }
    });
  }
  return option;
}
