// CONTRACT STUB (owner: see the helper task) — replace with the real command; keep the export.
import type { Command } from 'commander';

export function registerTokenizeCommand(program: Command): void {
  program.command('tokenize').description('not implemented yet');
}
