/**
 * `swiftbrush` command line. Each command lives in its own file under src/cli and exports
 * `register(program)`; this file only wires them together.
 */
import { Command, CommanderError } from 'commander';
import { createRequire } from 'node:module';
import { log } from '../log.ts';
import { COMMANDS } from './commands.ts';
import { explainBackendError } from '../backend.ts';

const require = createRequire(import.meta.url);
const { version } = require('../../package.json') as { version: string };

const program = new Command('swiftbrush')
  .description('SwiftBrush one-step diffusion distillation as a reactive stream (TensorFlow.js + RxJS)')
  .version(version)
  .showHelpAfterError('(add --help for usage)')
  .exitOverride();

for (const register of COMMANDS) register(program);

// A wasm abort can surface outside the command's promise (in a stream's callback): explain it too.
process.on('uncaughtException', (err) => {
  const explained = explainBackendError(err);
  process.stderr.write(`swiftbrush: error: ${explained instanceof Error ? explained.message : String(explained)}\n`);
  process.exit(1);
});

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode);
  const explained = explainBackendError(err);
  const message = explained instanceof Error ? explained.message : String(explained);
  log.debug({ err }, 'command failed');
  process.stderr.write(`swiftbrush: error: ${message}\n`);
  process.exit(1);
}
