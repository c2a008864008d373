// Per layer: the routed experts, each with the token rows routed to it, go to the RAM cache; experts
// already resident go to the worker pool at once while the misses are read (all reads start
// together); each expert's pin is released as soon as its result is back. The caller (the engine's
// MoE layer) gets one output block per expert and combines them in each token's selection order, so
// the result does not depend on which expert finished first.
import { accessOrder } from './access-order.js';
import type { HostCache, HostEntry } from './host-cache.js';
import type { ExpertLocator, ExpertMatrix } from './locator.js';
import type { ExpertPool, MatrixInSlab } from './pool.js';
import type { ExpertReader } from './reader.js';
import type { ExpertStats } from './stats.js';

/** One expert and the rows of x (tokens of the batch) routed to it, in the order the output wants. */
export interface ExpertJob {
  expert: number;
  rows: Int32Array;
}

/** What the MoE layer hands over: compute these experts on these token batches. */
export interface ExpertRunner {
  /**
   * x: nTokens rows of nEmbd values. Returns, for each job, rows.length rows of nEmbd values: the
   * expert's FFN output for those tokens, in the job's row order.
   */
  runExperts(layer: number, x: Float32Array, nEmbd: number, jobs: readonly ExpertJob[]): Promise<Float32Array[]>;
}

/** Where one job's weights came from: 'ram' = a cache hit (also joining a load already under way, as the
 * cache's hit counter has it), 'disk' = this job's lookup missed and read the expert. */
export type ServeTier = 'ram' | 'disk';

/**
 * Called once per expert job, when its weights are in RAM: the tier, the wall-clock microseconds from
 * the job's lookup until its weights were ready (near 0 for a loaded expert), and the job's rows
 * (token indices in the batch).
 */
export type ServeHook = (layer: number, expert: number, tier: ServeTier, stallUs: number, rows: Int32Array) => void;

export interface DispatcherParts {
  cache: HostCache;
  reader: ExpertReader;
  pool: ExpertPool;
  locator: ExpertLocator;
  stats: ExpertStats;
  onServe?: ServeHook;
}

/** Wall-clock accounting of one layer's stall: time with reads outstanding and nothing computing. */
class StallClock {
  private loading = 0;
  private computing = 0;
  private since = performance.now();
  stalledMs = 0;
  private change(dLoading: number, dComputing: number): void {
    const now = performance.now();
    if (this.loading > 0 && this.computing === 0) this.stalledMs += now - this.since;
    this.since = now;
    this.loading += dLoading;
    this.computing += dComputing;
  }
  loadStart(): void { this.change(1, 0); }
  loadEnd(): void { this.change(-1, 0); }
  computeStart(): void { this.change(0, 1); }
  computeEnd(): void { this.change(0, -1); }
}

export class ExpertDispatcher implements ExpertRunner {
  private readonly parts: DispatcherParts;
  constructor(parts: DispatcherParts) {
    this.parts = parts;
  }

  async runExperts(layer: number, x: Float32Array, nEmbd: number, jobs: readonly ExpertJob[]): Promise<Float32Array[]> {
    const { cache, reader, pool, locator, stats, onServe } = this.parts;
    const t0 = performance.now();
    const xs = onSharedMemory(x);
    const results: Float32Array[] = new Array<Float32Array>(jobs.length);
    // Resident experts first: they compute while the misses are read (access-order.ts; `simulate`
    // replays the same order). At most `capacity` experts are pinned at once, so a batch that routes to
    // more experts than the cache holds runs in waves.
    const order = accessOrder(layer, jobs.map((j) => j.expert), (l, e) => cache.has(l, e));
    const clock = new StallClock();
    const limit = Math.max(1, Math.min(cache.capacity, jobs.length));
    let next = 0;
    let failure: unknown;

    const runOne = async (i: number): Promise<void> => {
      const job = jobs[i]!;
      clock.loadStart();
      const asked = performance.now();
      // getOrLoad calls the loader synchronously exactly when its lookup counts a miss: the tier
      // reported here always agrees with the cache's hit/miss counters.
      let read = false;
      let entry: HostEntry;
      try {
        entry = await cache.getOrLoad(layer, job.expert, (e) => { read = true; return reader.load(e); });
      } finally {
        clock.loadEnd();
      }
      try {
        if (failure !== undefined) return;
        onServe?.(layer, job.expert, read ? 'disk' : 'ram', Math.round((performance.now() - asked) * 1000), job.rows);
        const matrix = (m: ExpertMatrix): MatrixInSlab => {
          const loc = locator.locate(layer, job.expert, m);
          return { offset: entry.ranges[m].offset, byteLength: entry.ranges[m].byteLength, type: loc.type, rows: loc.rows, cols: loc.cols };
        };
        clock.computeStart();
        try {
          const r = await pool.run({
            slab: entry.slot.buffer!, gate: matrix('gate'), up: matrix('up'), down: matrix('down'),
            x: xs, rows: job.rows, nTokens: job.rows.length,
          }, `layer ${layer} expert ${job.expert}`);
          stats.addCompute(layer, r.computeMs);
          if (r.y.length !== job.rows.length * nEmbd) throw new Error(`expert ${job.expert} returned ${r.y.length} values, expected ${job.rows.length * nEmbd}`);
          results[i] = r.y;
        } finally {
          clock.computeEnd();
        }
      } finally {
        cache.release(entry);
      }
    };

    // `limit` lanes, each taking the next job when its last one is done; the first error stops new
    // jobs, the lanes drain (no pin or read is left behind), then it is thrown.
    const lane = async (): Promise<void> => {
      while (failure === undefined && next < order.length) {
        const i = order[next++]!;
        try {
          await runOne(i);
        } catch (err) {
          if (failure === undefined) failure = err;
        }
      }
    };
    await Promise.all(Array.from({ length: limit }, lane));
    stats.addStall(layer, clock.stalledMs);
    stats.addWall(layer, performance.now() - t0);
    if (failure !== undefined) throw failure;
    return results;
  }
}

/** x itself when it lives on a SharedArrayBuffer (workers read it without a copy), else a shared copy. */
function onSharedMemory(x: Float32Array): Float32Array {
  if (x.buffer instanceof SharedArrayBuffer) return x;
  const shared = new Float32Array(new SharedArrayBuffer(x.byteLength));
  shared.set(x);
  return shared;
}
