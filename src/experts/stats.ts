// What offloading cost, per layer and in total: cache hits and misses (counted by HostCache, where the
// decision is made), bytes and time of reads, time the forward pass stalled on reads, and compute time.
import type { CacheStats, PrefetchCounters } from './host-cache.js';
import { formatBytes } from './size.js';

/** Counters the dispatcher and reader keep per layer (cache counters come from HostCache). */
export interface IoComputeCounters {
  /** Expert loads completed and their bytes (the three matrices). */
  reads: number;
  bytesRead: number;
  /** Wall time of each load, summed (loads overlap, so this can exceed the elapsed time). */
  readMs: number;
  /** Time the layer had reads outstanding and no expert computing: the forward pass waited on the disk. */
  stallMs: number;
  /**
   * Expert FFN batches (a layer's experts ready at one time) and their compute time: the worker's with
   * one thread, the wall time of the batch on all threads (one native pool call) with more.
   */
  tasks: number;
  computeMs: number;
  /** Wall time of the layer's expert stage (from routing to the last expert result). */
  wallMs: number;
}

export interface ExpertLayerStats extends IoComputeCounters {
  hits: number;
  misses: number;
  evictions: number;
}

export interface ExpertStatsSnapshot {
  ramCacheBytes: number;
  threads: number;
  /** Failed worker attempts that were retried. */
  retries: number;
  total: ExpertLayerStats;
  /** Indexed by layer; layers without experts are all zeros. */
  layers: ExpertLayerStats[];
  /**
   * Reads of the next layer's predicted experts (OffloadOptions.prefetch), in total: issued, then used
   * (looked up afterwards) or wasted (evicted or failed first), and their bytes. Their reads are in
   * total.reads / bytesRead too; their later lookups count as hits.
   */
  prefetch: PrefetchCounters;
}

const zero = (): IoComputeCounters => ({ reads: 0, bytesRead: 0, readMs: 0, stallMs: 0, tasks: 0, computeMs: 0, wallMs: 0 });

export class ExpertStats {
  readonly layers: IoComputeCounters[];
  constructor(layers: number) {
    this.layers = Array.from({ length: layers }, zero);
  }

  addRead(layer: number, bytes: number, ms: number): void {
    const c = this.layers[layer]!;
    c.reads++;
    c.bytesRead += bytes;
    c.readMs += ms;
  }

  addCompute(layer: number, ms: number): void {
    const c = this.layers[layer]!;
    c.tasks++;
    c.computeMs += ms;
  }

  addStall(layer: number, ms: number): void { this.layers[layer]!.stallMs += ms; }
  addWall(layer: number, ms: number): void { this.layers[layer]!.wallMs += ms; }

  snapshot(cache: CacheStats, extra: { ramCacheBytes: number; threads: number; retries: number }): ExpertStatsSnapshot {
    const layers = this.layers.map((c, l) => {
      const k = cache.layers[l];
      return { hits: k?.hits ?? 0, misses: k?.misses ?? 0, evictions: k?.evictions ?? 0, ...c };
    });
    const total = layers.reduce((t, c) => {
      for (const key of Object.keys(t) as (keyof ExpertLayerStats)[]) t[key] += c[key];
      return t;
    }, { hits: 0, misses: 0, evictions: 0, ...zero() });
    return { ...extra, total, layers, prefetch: { ...cache.prefetch.total } };
  }
}

/** A short table for stderr (generate --stats): one row per layer with experts, then the total. */
export function formatExpertStats(s: ExpertStatsSnapshot): string {
  const head = ['layer', 'hits', 'misses', 'hit %', 'read', 'read ms', 'stall ms', 'compute ms'];
  const short = (n: number) => formatBytes(n).replace(/ \(\d+ bytes\)$/, '');
  const row = (name: string, c: ExpertLayerStats) => {
    const n = c.hits + c.misses;
    return [name, String(c.hits), String(c.misses), n ? (100 * c.hits / n).toFixed(1) : '-', short(c.bytesRead),
      c.readMs.toFixed(1), c.stallMs.toFixed(1), c.computeMs.toFixed(1)];
  };
  const rows = s.layers.map((c, l) => ({ c, l })).filter(({ c }) => c.hits + c.misses > 0).map(({ c, l }) => row(String(l), c));
  rows.push(row('total', s.total));
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((v, i) => (i === 0 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  ');
  const p = s.prefetch;
  return [
    `experts: RAM cache ${formatBytes(s.ramCacheBytes)}, ${s.threads} compute thread${s.threads === 1 ? '' : 's'}` +
      (s.retries ? `, ${s.retries} worker task${s.retries === 1 ? '' : 's'} retried` : ''),
    line(head), ...rows.map(line),
    ...(p.issued > 0 ? [`prefetch: ${p.issued} issued, ${p.used} used, ${p.wasted} wasted, ${short(p.bytes)} read`] : []),
  ].join('\n');
}
