// CONTRACT STUB (owner: see the helper task) — replace with the real command; keep the export.
import type { Command } from 'commander';

export function registerInspectCommand(program: Command): void {
  program.command('inspect').description('not implemented yet');
}
