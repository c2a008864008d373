// `moe-offload report --trace T`: local routing consistency (SRP, SCH), cache-policy hit rates and a
// RAM cache size recommendation for a routing trace (ours or the plain import layout).
import type { Command } from 'commander';
import { writeFileSync } from 'node:fs';
import cliProgress from 'cli-progress';
import { runCommand } from './run-command.js';
import { FileAccessError, UsageError } from '../model/errors.js';
import { parseExpertBytes, parseIntList, parseNumber, parsePositiveInt } from './option-parsers.js';
import { loadTrace, type LoadedTrace } from '../trace/load.js';
import { computeReport, formatReportText, reportJson } from '../trace/report-data.js';
import { renderHtml } from '../trace/html.js';

/** The options report and simulate share: the trace to read and what it may lack. */
export interface TraceInputOptions {
  trace: string;
  experts?: string;
  expertBytes?: string;
  json?: boolean;
  progress?: boolean;
}

/**
 * Adds the options every trace-reading command takes (--trace, --experts, --expert-bytes, --json,
 * --progress); `expertBytesUse` says what the command needs an expert's bytes for.
 */
export function addTraceInputOptions(cmd: Command, expertBytesUse: string): Command {
  return cmd
    .requiredOption('--trace <file>', 'routing trace: ours (generate --trace) or the import layout, one {"seq","pos","experts"} per line; .gz or plain')
    .option('--experts <n>', 'experts per layer (default: the trace header, else the largest id + 1)')
    .option('--expert-bytes <size>', `bytes of one expert, ${expertBytesUse} (default: the trace header)`)
    .option('--json', 'print the result as JSON')
    .option('--progress', 'show a progress bar while reading even when stderr is not a terminal');
}

/** Checks --experts and --expert-bytes, then loads --trace (see loadTraceForCli). */
export async function loadTraceInput(opts: TraceInputOptions): Promise<{ trace: LoadedTrace; expertBytes: number | undefined }> {
  const experts = opts.experts !== undefined ? parsePositiveInt('--experts', opts.experts) : undefined;
  const expertBytes = parseExpertBytes(opts.expertBytes);
  return { trace: await loadTraceForCli(opts.trace, experts, opts.progress), expertBytes };
}

/** Loads a trace, with a progress bar on stderr when it is a terminal (or when asked). */
export async function loadTraceForCli(path: string, experts: number | undefined, progress: boolean | undefined): Promise<LoadedTrace> {
  const show = progress ?? process.stderr.isTTY === true;
  let bar: cliProgress.SingleBar | null = null;
  const onProgress = show
    ? (read: number, total: number) => {
      if (!bar) {
        bar = new cliProgress.SingleBar({
          stream: process.stderr, format: 'reading trace [{bar}] {percentage}% {value}/{total} MiB', hideCursor: true, noTTYOutput: !process.stderr.isTTY,
        }, cliProgress.Presets.shades_classic);
        bar.start(Math.max(1, Math.ceil(total / 2 ** 20)), 0);
      }
      bar.update(Math.floor(read / 2 ** 20));
    }
    : undefined;
  try {
    return await loadTrace(path, { ...(experts !== undefined ? { experts } : {}), ...(onProgress ? { onProgress } : {}) });
  } finally {
    (bar as cliProgress.SingleBar | null)?.stop();
  }
}

interface ReportOptions extends TraceInputOptions {
  segments: string;
  cacheSizes?: string;
  html?: string;
  targetHitRate: string;
}

export function registerReportCommand(program: Command): void {
  const cmd = program
    .command('report')
    .description('Routing report for a trace: SRP/SCH local routing consistency, LRU/LFU/MIN hit rates, a RAM cache recommendation');
  addTraceInputOptions(cmd, 'to state cache sizes in bytes')
    .option('--segments <list>', 'segment lengths m for SRP and SCH', '4,16,64')
    .option('--cache-sizes <list>', 'cache sizes C in experts per layer (default k, 2k, 4k, 8k, at most the expert count)')
    .option('--target-hit-rate <rate>', 'hit rate (0..1) the recommended cache must reach', '0.9')
    .option('--html <file>', 'also write a self-contained HTML page with plots')
    .addHelpText('after', `
Examples:
  $ moe-offload generate --model olmoe-1b-7b-q4_k_m.gguf --prompt "Hello" --trace run.trace.jsonl.gz
  $ moe-offload report --trace run.trace.jsonl.gz
  $ moe-offload report --trace run.trace.jsonl.gz --segments 8,32 --cache-sizes 8,16,32 --json
  $ moe-offload report --trace routing.jsonl --experts 64 --expert-bytes 3MiB --html report.html`)
    .action(runCommand(async (opts: ReportOptions) => {
      const segments = parseIntList('--segments', opts.segments);
      const cacheSizes = opts.cacheSizes !== undefined ? parseIntList('--cache-sizes', opts.cacheSizes) : undefined;
      const target = parseNumber('--target-hit-rate', opts.targetHitRate, { min: 0, max: 1, minExclusive: true, describe: 'above 0 and at most 1, such as 0.9' });
      const { trace: t, expertBytes } = await loadTraceInput(opts);
      if (cacheSizes) {
        const big = cacheSizes.find((c) => c > t.routing.experts);
        if (big !== undefined) throw new UsageError(`--cache-sizes ${big} is more than the ${t.routing.experts} experts per layer`, `give sizes from 1 to ${t.routing.experts}`);
      }
      const data = computeReport(t, { segments, ...(cacheSizes ? { cacheSizes } : {}), targetHitRate: target, ...(expertBytes !== undefined ? { expertBytes } : {}) });
      if (opts.html) {
        try {
          writeFileSync(opts.html, renderHtml(data));
        } catch (err) {
          throw new FileAccessError(`cannot write '${opts.html}': ${(err as Error).message}`, 'choose a writable --html path');
        }
      }
      process.stdout.write(opts.json ? `${reportJson(data)}\n` : `${formatReportText(data)}\n`);
    }));
}
