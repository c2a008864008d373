// `moe-offload report --trace T`: local routing consistency (SRP, SCH), cache-policy hit rates and a
// RAM cache size recommendation for a routing trace (ours or the plain import layout).
import type { Command } from 'commander';
import { writeFileSync } from 'node:fs';
import cliProgress from 'cli-progress';
import { runCommand } from './run-command.js';
import { FileAccessError, UsageError } from '../model/errors.js';
import { parseSize } from '../experts/size.js';
import { loadTrace, type LoadedTrace } from '../trace/load.js';
import { computeReport, formatReportText, reportJson } from '../trace/report-data.js';
import { renderHtml } from '../trace/html.js';

/** '4,16,64' -> [4, 16, 64]: positive integers, deduplicated, ascending. */
export function parseIntList(text: string, what: string): number[] {
  const parts = text.split(',').map((p) => p.trim());
  const out: number[] = [];
  for (const p of parts) {
    if (!/^\d+$/.test(p) || Number(p) < 1) throw new UsageError(`bad ${what} '${text}': '${p}' is not a positive integer`, `give a comma-separated list such as 4,16,64`);
    out.push(Number(p));
  }
  return [...new Set(out)].sort((a, b) => a - b);
}

export function parsePositiveInt(text: string, what: string): number {
  if (!/^\d+$/.test(text.trim()) || Number(text) < 1) throw new UsageError(`bad ${what} '${text}': not a positive integer`, `give a whole number such as 64`);
  return Number(text);
}

export function parseExpertBytes(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const b = parseSize(text, { what: '--expert-bytes' });
  if (b < 1) throw new UsageError(`bad --expert-bytes '${text}': must be at least 1 byte`, 'give the bytes of one expert, e.g. 3MiB');
  return b;
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

interface ReportOptions {
  trace: string;
  segments: string;
  cacheSizes?: string;
  experts?: string;
  json?: boolean;
  html?: string;
  targetHitRate: string;
  expertBytes?: string;
  progress?: boolean;
}

export function registerReportCommand(program: Command): void {
  program
    .command('report')
    .description('Routing report for a trace: SRP/SCH local routing consistency, LRU/LFU/MIN hit rates, a RAM cache recommendation')
    .requiredOption('--trace <file>', 'routing trace: ours (generate --trace) or the import layout, one {"seq","pos","experts"} per line; .gz or plain')
    .option('--segments <list>', 'segment lengths m for SRP and SCH', '4,16,64')
    .option('--cache-sizes <list>', 'cache sizes C in experts per layer (default k, 2k, 4k, 8k, at most the expert count)')
    .option('--experts <n>', 'experts per layer (default: the trace header, else the largest id + 1)')
    .option('--target-hit-rate <rate>', 'hit rate (0..1) the recommended cache must reach', '0.9')
    .option('--expert-bytes <size>', 'bytes of one expert, to state cache sizes in bytes (default: the trace header)')
    .option('--json', 'print the report as JSON')
    .option('--html <file>', 'also write a self-contained HTML page with plots')
    .option('--progress', 'show a progress bar while reading even when stderr is not a terminal')
    .addHelpText('after', `
Examples:
  $ moe-offload generate --model olmoe-1b-7b-q4_k_m.gguf --prompt "Hello" --trace run.trace.jsonl.gz
  $ moe-offload report --trace run.trace.jsonl.gz
  $ moe-offload report --trace run.trace.jsonl.gz --segments 8,32 --cache-sizes 8,16,32 --json
  $ moe-offload report --trace routing.jsonl --experts 64 --expert-bytes 3MiB --html report.html`)
    .action(runCommand(async (opts: ReportOptions) => {
      const segments = parseIntList(opts.segments, '--segments');
      const cacheSizes = opts.cacheSizes !== undefined ? parseIntList(opts.cacheSizes, '--cache-sizes') : undefined;
      const experts = opts.experts !== undefined ? parsePositiveInt(opts.experts, '--experts') : undefined;
      const target = Number(opts.targetHitRate);
      if (!/^\s*(\d+(\.\d*)?|\.\d+)\s*$/.test(opts.targetHitRate) || !(target > 0 && target <= 1)) {
        throw new UsageError(`bad --target-hit-rate '${opts.targetHitRate}': must be a number in (0, 1]`, 'give a hit rate such as 0.9');
      }
      const expertBytes = parseExpertBytes(opts.expertBytes);
      const t = await loadTraceForCli(opts.trace, experts, opts.progress);
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
