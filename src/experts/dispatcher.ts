// Per layer: the routed experts, each with the token rows routed to it, go to the RAM cache; experts
// already resident are computed at once while the misses are read (all reads start together). With 2+
// threads this thread computes each ready batch through the native thread pool, the pool's serving
// workers lent to it as helpers; with 1, the one worker computes each batch as a task. Pins are released
// as soon as a batch is computed. The caller (the engine's MoE layer) gets one output block per expert
// and combines them in each token's selection order, so the result does not depend on which expert
// finished first or where it was computed.
import { accessOrder } from './access-order.js';
import type { HostCache, HostEntry } from './host-cache.js';
import type { ExpertLocator, ExpertMatrix } from './locator.js';
import type { BatchExpert, BatchResult, ExpertBatchTask, ExpertPool, MatrixInSlab } from './pool.js';
import { computeBatch } from './worker.js';
import { parkThreads } from '../native/index.js';
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

type Batch = { i: number; entry: HostEntry }[];

export class ExpertDispatcher implements ExpertRunner {
  private readonly parts: DispatcherParts;
  /** A failure that came after its layer was computed (a lent worker's): thrown by the next runExperts or settle(). */
  private lateFailure: unknown;
  constructor(parts: DispatcherParts) {
    this.parts = parts;
  }

  /**
   * The end of an evaluation (the engine calls it): the lent workers go back after a short idle time,
   * and a failure that came after its layer is thrown, so no error is lost.
   */
  async settle(): Promise<void> {
    this.parts.pool.parkServingWhenIdle();
    this.throwLateFailure();
  }

  private throwLateFailure(): void {
    const err = this.lateFailure;
    this.lateFailure = undefined;
    if (err !== undefined) throw err;
  }

  async runExperts(layer: number, x: Float32Array, nEmbd: number, jobs: readonly ExpertJob[]): Promise<Float32Array[]> {
    this.throwLateFailure();
    const { cache, reader, pool, locator, stats, onServe } = this.parts;
    const t0 = performance.now();
    const xs = onSharedMemory(x);
    // Every job's output rows in one shared buffer the workers write into: job i's rows start at rowStart[i].
    const rowStart = new Int32Array(jobs.length);
    let totalRows = 0;
    for (let i = 0; i < jobs.length; i++) {
      rowStart[i] = totalRows;
      totalRows += jobs[i]!.rows.length;
    }
    const rows = new Int32Array(totalRows);
    for (let i = 0; i < jobs.length; i++) rows.set(jobs[i]!.rows, rowStart[i]!);
    const out = new Float32Array(new SharedArrayBuffer(totalRows * nEmbd * 4));
    const results: Float32Array[] = new Array<Float32Array>(jobs.length);

    // Resident experts first: they compute while the misses are read (access-order.ts; `simulate`
    // replays the same order). At most `limit` experts are pinned (or loading) at once, so a batch that
    // routes to more experts than the cache holds runs in waves.
    const order = accessOrder(layer, jobs.map((j) => j.expert), (l, e) => cache.has(l, e));
    const clock = new StallClock();
    const limit = Math.max(1, Math.min(cache.capacity, jobs.length));
    // Experts whose weights are in RAM, pinned, waiting to be computed. They go out in one task per idle
    // worker, the ready ones split evenly over the idle compute threads: one message per worker per
    // layer when everything is resident, and each miss as soon as a thread is free.
    const ready: Batch = [];
    let next = 0;
    let pinned = 0;
    let inFlight = 0;
    let failure: unknown;
    let settle!: () => void;
    const done = new Promise<void>((resolve) => { settle = resolve; });
    const fail = (err: unknown): void => { if (failure === undefined) failure = err; };
    // The first error stops new lookups and tasks; what is pinned is released, what runs drains, then it is thrown.
    const finishIfIdle = (): void => {
      if (failure !== undefined) {
        for (const r of ready) cache.release(r.entry);
        pinned -= ready.length;
        ready.length = 0;
      }
      if (pinned === 0 && (failure !== undefined || next >= order.length)) settle();
    };

    const served = (i: number, entry: HostEntry, read: boolean, asked: number): void => {
      const job = jobs[i]!;
      onServe?.(layer, job.expert, read ? 'disk' : 'ram', Math.round((performance.now() - asked) * 1000), job.rows);
      ready.push({ i, entry });
    };

    const lookUp = (): void => {
      while (failure === undefined && pinned < limit && next < order.length) {
        const i = order[next++]!;
        const job = jobs[i]!;
        const asked = performance.now();
        // pinOrLoad calls the loader synchronously exactly when its lookup counts a miss: the tier
        // reported here always agrees with the cache's hit/miss counters.
        let read = false;
        let got: HostEntry | Promise<HostEntry>;
        try {
          got = cache.pinOrLoad(layer, job.expert, (e) => { read = true; return reader.load(e); });
        } catch (err) {
          fail(err);
          return;
        }
        pinned++;
        if (!(got instanceof Promise)) {
          served(i, got, false, asked);
          continue;
        }
        clock.loadStart();
        got.then((entry) => {
          clock.loadEnd();
          if (failure !== undefined) {
            cache.release(entry);
            pinned--;
          } else {
            served(i, entry, read, asked);
            dispatch();
          }
          finishIfIdle();
        }, (err: unknown) => {
          clock.loadEnd();
          pinned--; // a failed load leaves no pin
          fail(err);
          finishIfIdle();
        });
      }
    };

    const taskOf = (batch: Batch): ExpertBatchTask => {
      const slabs: SharedArrayBuffer[] = [];
      const experts: BatchExpert[] = batch.map(({ i, entry }) => {
        const job = jobs[i]!;
        const buffer = entry.slot.buffer!;
        let slab = slabs.indexOf(buffer);
        if (slab < 0) slab = slabs.push(buffer) - 1;
        const matrix = (m: ExpertMatrix): MatrixInSlab => {
          const loc = locator.locate(layer, job.expert, m);
          return { offset: entry.ranges[m].offset, byteLength: entry.ranges[m].byteLength, type: loc.type, rows: loc.rows, cols: loc.cols };
        };
        const down = matrix('down');
        if (down.rows !== nEmbd) throw new Error(`layer ${layer} expert ${job.expert} has ${down.rows} outputs, expected ${nEmbd}`);
        return { slab, gate: matrix('gate'), up: matrix('up'), down, rowStart: rowStart[i]!, nTokens: job.rows.length };
      });
      return { slabs, experts, x: xs, rows, out };
    };
    const finished = (batch: Batch): void => {
      for (const { i } of batch) results[i] = out.subarray(rowStart[i]! * nEmbd, (rowStart[i]! + jobs[i]!.rows.length) * nEmbd);
    };
    const unpin = (batch: Batch): void => {
      for (const { entry } of batch) cache.release(entry);
      pinned -= batch.length;
    };

    // With more than one compute thread, this thread computes every ready batch through the native
    // thread pool, whose helpers are the pool's serving workers lent to it (pool.lendWorkers): they take
    // experts of the batch as soon as it starts, without a message or a wake-up. With one thread, the
    // one worker computes each batch as a piscina task while this thread waits for reads and results.
    const native = pool.threads > 1;
    if (native) pool.lendWorkers((err) => { this.lateFailure ??= err; });
    else parkThreads(); // the native matmul helpers would otherwise spin on the core the worker needs
    /** Runs the task on the worker; `after` runs once it has settled, before the next dispatch. */
    const post = (task: ExpertBatchTask, batch: Batch, after: () => void): void => {
      inFlight++;
      let run: Promise<BatchResult>;
      try {
        run = pool.runBatch(task, `layer ${layer} ${batch.map(({ i }) => `expert ${jobs[i]!.expert}`).join(', ')}`);
      } catch (err) {
        run = Promise.reject(err);
      }
      // The batch's pins hold the layer open until this has run: a failure is never late.
      void run.then((r) => stats.addCompute(layer, r.computeMs), (err: unknown) => fail(err)).finally(() => {
        inFlight--;
        after();
        lookUp();
        dispatch();
        finishIfIdle();
      });
    };
    const complete = (batch: Batch): void => {
      finished(batch);
      clock.computeEnd();
      unpin(batch);
    };
    const dispatch = (): void => {
      while (failure === undefined && ready.length > 0) {
        if (!native && inFlight > 0) return; // the one worker is busy: what is ready goes out next, together
        const batch = ready.splice(0, ready.length);
        clock.computeStart();
        if (!native) {
          post(taskOf(batch), batch, () => complete(batch));
          continue;
        }
        try {
          stats.addCompute(layer, computeBatch(taskOf(batch), pool.threads).computeMs);
        } catch (err) {
          fail(err);
        }
        complete(batch);
        lookUp();
      }
    };

    lookUp();
    dispatch();
    finishIfIdle();
    await done;
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
