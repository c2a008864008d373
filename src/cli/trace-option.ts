// `--trace FILE` for the commands that run a model: record the routing of the run as a trace
// (src/trace/FORMAT.md) that `report` and `simulate` read.
//
//   const trace = startTrace(o.trace, { tiers: true });      // before loadModel
//   loadModel(path, { ..., onRoute: trace?.onRoute, offload: { ..., onServe: trace?.onServe, onPrefetch: trace?.onPrefetch } });
//   trace?.begin(path, promptIds);                           // once the prompt is tokenized
//   ... generate ...
//   trace?.close();                                          // on success: PATH.partial -> PATH
//
// A run that fails or is interrupted leaves PATH.partial with the tokens recorded so far.
import type { Command } from 'commander';
import { UsageError } from '../model/errors.js';
import { openTraceRecorder, readTraceModelInfo, type RecorderOptions, type TraceRecorder } from '../trace/recorder.js';
import type { Tier } from '../trace/import.js';

export const TRACE_HELP = `--trace FILE records, for every token and MoE layer, the experts the router chose and their weights,
as gzipped JSON lines (src/trace/FORMAT.md); \`moe-offload report --trace FILE\` and \`simulate\` read it.
While running the file is FILE.partial; it is renamed to FILE when the run ends normally.`;

export function addTraceOption(cmd: Command): Command {
  return cmd.option('--trace <file>', 'record the routing (experts per token and layer) to this trace file, for report and simulate');
}

export class CliTrace {
  private recorder: TraceRecorder | undefined;
  constructor(readonly path: string, private readonly options: RecorderOptions = {}) {}

  /** LoadOptions.onRoute; routing before begin() is not recorded. */
  readonly onRoute = (layer: number, position: number, experts: number[], weights: number[]): void => {
    this.recorder?.route(layer, position, experts, weights);
  };

  /**
   * For the offloading dispatcher: expert `expert` of block `layer` was served from `tier` for the rows
   * (batch token indices, as in an ExpertJob) of the current batch. Recorded when started with tiers.
   */
  readonly onServe = (layer: number, expert: number, tier: Tier, stallUs: number, rows?: ArrayLike<number>): void => {
    this.recorder?.serveExpert(layer, expert, tier, stallUs, rows);
  };

  /** OffloadOptions.onPrefetch: what prefetch did for expert `expert` of block `layer` in the current batch. */
  readonly onPrefetch = (layer: number, expert: number, read: boolean): void => {
    this.recorder?.prefetch(layer, expert, read);
  };

  /** Opens PATH.partial with the model's header and the prompt's token ids. */
  begin(modelPath: string, promptIds: readonly number[]): void {
    if (this.recorder) throw new Error('CliTrace.begin called twice');
    this.recorder = openTraceRecorder(this.path, readTraceModelInfo(modelPath), [...promptIds], this.options);
  }

  /** The recorder (for tier reports), once begun. */
  get current(): TraceRecorder | undefined {
    return this.recorder;
  }

  close(): void {
    this.recorder?.close();
  }
}

/**
 * A CliTrace for --trace PATH, or undefined without the option. `tiers: true` once the engine reports
 * where experts were served from (pass `onServe` to it): tokens then wait for those reports.
 */
export function startTrace(path: string | undefined, options: RecorderOptions = {}): CliTrace | undefined {
  if (path === undefined) return undefined;
  if (path.trim() === '') throw new UsageError('--trace needs a file name', 'e.g. --trace run.trace.jsonl.gz');
  return new CliTrace(path, options);
}
