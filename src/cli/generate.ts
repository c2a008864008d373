// CONTRACT STUB (owner: see the helper task) — replace with the real command; keep the export.
import type { Command } from 'commander';

export function registerGenerateCommand(program: Command): void {
  program.command('generate').description('not implemented yet');
}
