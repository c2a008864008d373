// Reads a whole trace (our format or the import layout) into RoutingData for the metrics, plus the
// per-layer tier counts and stall times and the prefetch accuracy when the trace has them. Memory: the
// expert ids only.
import { UsageError } from '../model/errors.js';
import { openTrace, type ReadProgress, type TraceHeader, type TraceTokenRecord } from './format.js';
import { TIERS } from './import.js';
import { RoutingBuilder, type RoutingData } from './routing.js';

export interface TierStats {
  /** counts[l][i] = selections of layer l served from TIERS[i] (gpu, ram, disk). */
  counts: number[][];
  /** stallUs[l][i] = microseconds waited on those selections. */
  stallUs: number[][];
}

/** Prefetch accuracy, in total and per MoE layer: reads prefetch started, and whether their layer used them. */
export interface PrefetchCounts {
  /** Reads prefetch started (the trace's "prefetched"), one per batch, layer and expert. */
  issued: number;
  /** Of those, experts the batch selected in the layer they were read for (its lookups found them). */
  used: number;
  /** issued - used: read for a layer that did not select them. */
  wasted: number;
}

export interface PrefetchStats {
  total: PrefetchCounts;
  /** Indexed by MoE layer. */
  layers: PrefetchCounts[];
}

/**
 * Tallies prefetch accuracy from token lines: per batch (the lines of one sequence with one "batch"; a
 * line without "batch" is a batch of its own), each layer's "prefetched" ids against the union of the
 * experts the batch's tokens selected in that layer. Lines of a batch come one after another within
 * their sequence, so one open batch per sequence is kept.
 */
export class PrefetchTally {
  readonly stats: PrefetchStats;
  private readonly open = new Map<number, { batch: number | undefined; prefetched: number[][]; selected: Set<number>[] }>();

  constructor(layers: number) {
    const zero = (): PrefetchCounts => ({ issued: 0, used: 0, wasted: 0 });
    this.stats = { total: zero(), layers: Array.from({ length: layers }, zero) };
  }

  add(rec: TraceTokenRecord): void {
    const cur = this.open.get(rec.seq);
    if (cur && (rec.batch === undefined || cur.batch !== rec.batch)) this.close(rec.seq);
    let b = this.open.get(rec.seq);
    if (!b) {
      if (!rec.prefetched) return;
      b = { batch: rec.batch, prefetched: rec.prefetched, selected: rec.experts.map(() => new Set<number>()) };
      this.open.set(rec.seq, b);
    }
    rec.experts.forEach((ids, l) => { for (const e of ids) b.selected[l]?.add(e); });
  }

  /** Counts every batch still open; call once after the last line. */
  finish(): PrefetchStats {
    for (const seq of [...this.open.keys()]) this.close(seq);
    return this.stats;
  }

  private close(seq: number): void {
    const b = this.open.get(seq)!;
    this.open.delete(seq);
    b.prefetched.forEach((ids, l) => {
      const c = this.stats.layers[l];
      if (!c) return;
      for (const e of ids) {
        const used = b.selected[l]!.has(e);
        for (const x of [c, this.stats.total]) {
          x.issued++;
          if (used) x.used++;
          else x.wasted++;
        }
      }
    });
  }
}

export interface LoadedTrace {
  path: string;
  /** Our header; null for the import layout. */
  header: TraceHeader | null;
  routing: RoutingData;
  /** Per-tier serving statistics when every token line has "tier"; else null. */
  tiers: TierStats | null;
  /** Prefetch accuracy when some token line has "prefetched"; else null. */
  prefetch: PrefetchStats | null;
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
  let prefetch: PrefetchTally | null = null;
  let prefetched = false;
  let maxPrefetchedId = -1;
  for await (const rec of t.records) {
    if (rec.prefetched) prefetched = true;
    for (const lists of [rec.prefetched, rec.prefetch_cached]) for (const ids of lists ?? []) for (const e of ids) maxPrefetchedId = Math.max(maxPrefetchedId, e);
    prefetch ??= new PrefetchTally(rec.experts.length);
    prefetch.add(rec);
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
  if (maxPrefetchedId >= experts) {
    throw new UsageError(`${path}: a "prefetched" list names expert ${maxPrefetchedId}, but the expert count is ${experts}`, 'the trace is damaged; re-record it, or give a larger --experts');
  }
  const prefetchStats = prefetch?.finish() ?? null;
  return { path, header: t.header, routing: b.finish(experts), tiers: allTiered ? tiers : null, prefetch: prefetched ? prefetchStats : null, truncated: t.truncated };
}
