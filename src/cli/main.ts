// The moe-offload command-line program: one file per command, registered here.
import { Command } from 'commander';

const program = new Command();
program
  .name('moe-offload')
  .description('Run Mixture-of-Experts models bigger than fast memory, from GGUF files.')
  .showHelpAfterError();

await program.parseAsync(process.argv);
