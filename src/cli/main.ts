// The moe-offload command-line program: one file per command, registered here.
import { Command } from 'commander';
import { registerInspectCommand } from './inspect.js';
import { registerTokenizeCommand } from './tokenize.js';
import { registerGenerateCommand } from './generate.js';
import { registerReportCommand } from './report.js';
import { registerSimulateCommand } from './simulate.js';

const program = new Command();
program
  .name('moe-offload')
  .description('Run Mixture-of-Experts models bigger than fast memory, from GGUF files.')
  // Usage mistakes (unknown option, missing required option) end like every other bad input: one line
  // with a hint, exit 2; --help and --version still exit 0.
  .configureOutput({
    outputError: (text, write) => write(`moe-offload: ${text.replace(/^error: /, '').trim()}; run with --help for usage and examples\n`),
  })
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2));

registerGenerateCommand(program);
registerTokenizeCommand(program);
registerInspectCommand(program);
registerReportCommand(program);
registerSimulateCommand(program);

await program.parseAsync(process.argv);
