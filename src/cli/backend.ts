/** `swiftbrush backend`: which tfjs backend `auto` (or --backend) picks, and why others were skipped. */
import type { Command } from 'commander';
import { initBackend } from '../backend.ts';
import { backendOption } from './options.ts';

export function register(program: Command): void {
  program
    .command('backend')
    .description('print the tfjs backend that would run (and why auto skipped the others)')
    .addOption(backendOption())
    .option('--json', 'print JSON')
    .action(async (opts: { backend?: string; json?: boolean }) => {
      const choice = await initBackend(opts.backend);
      if (opts.json) {
        process.stdout.write(JSON.stringify(choice) + '\n');
        return;
      }
      process.stdout.write(`${choice.backend} (${choice.provider})\n`);
      for (const s of choice.skipped) process.stdout.write(`  skipped ${s.candidate}: ${s.reason}\n`);
    });
}
