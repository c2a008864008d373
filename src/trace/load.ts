// Reads a whole trace (our format or the import layout) into RoutingData for the metrics, plus the
// per-layer tier counts and stall times when the trace has them. Memory: the expert ids only.
import { UsageError } from '../model/errors.js';
import { openTrace, type ReadProgress, type TraceHeader } from './format.js';
import { TIERS } from './import.js';
import { RoutingBuilder, type RoutingData } from './routing.js';

export interface TierStats {
  /** counts[l][i] = selections of layer l served from TIERS[i] (gpu, ram, disk). */
  counts: number[][];
  /** stallUs[l][i] = microseconds waited on those selections. */
  stallUs: number[][];
}

export interface LoadedTrace {
  path: string;
  /** Our header; null for the import layout. */
  header: TraceHeader | null;
  routing: RoutingData;
  /** Per-tier serving statistics when every token line has "tier"; else null. */
  tiers: TierStats | null;
  /** The file ended in a cut-off line (an interrupted recording); the complete lines were used. */
  truncated: boolean;
}

export interface LoadOptions {
  /** Expert count; default: the header's, else the largest id + 1. */
  experts?: number;
  onProgress?: ReadProgress;
}

export async function loadTrace(path: string, opts: LoadOptions = {}): Promise<LoadedTrace> {
  const t = await openTrace(path, opts.onProgress);
  const b = new RoutingBuilder();
  let tiers: TierStats | null = null;
  let allTiered = true;
  for await (const rec of t.records) {
    const where = `${path}:${t.line}`;
    b.add(rec.seq, rec.pos, rec.experts, where);
    if (t.header && rec.experts[0]!.length !== t.header.k) {
      throw new UsageError(`${where}: selects ${rec.experts[0]!.length} experts, the header says k = ${t.header.k}`, 'the trace is damaged; re-record it');
    }
    if (rec.tier && allTiered) {
      if (!tiers) {
        const L = rec.experts.length;
        tiers = { counts: Array.from({ length: L }, () => [0, 0, 0]), stallUs: Array.from({ length: L }, () => [0, 0, 0]) };
      }
      rec.tier.forEach((row, l) => row.forEach((tier, j) => {
        const i = TIERS.indexOf(tier);
        tiers!.counts[l]![i]!++;
        tiers!.stallUs[l]![i]! += rec.stall_us?.[l]?.[j] ?? 0;
      }));
    } else allTiered = false;
  }
  let experts = opts.experts ?? t.header?.experts;
  if (opts.experts === undefined && t.header && b.largestId >= t.header.experts) {
    throw new UsageError(`${path}: expert id ${b.largestId} is out of range for the header's ${t.header.experts} experts`, 'the trace is damaged; re-record it');
  }
  if (b.largestId < 0) throw new UsageError(`${path}: the trace has no tokens`, 'record or import a trace with at least one token line');
  if (experts === undefined) experts = b.largestId + 1;
  if (b.largestId >= experts) throw new UsageError(`${path}: the trace uses expert ${b.largestId} but the expert count is ${experts}`, 'give a larger --experts or leave it out');
  return { path, header: t.header, routing: b.finish(experts), tiers: allTiered ? tiers : null, truncated: t.truncated };
}
