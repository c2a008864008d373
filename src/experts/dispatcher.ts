// Per layer: the routed experts, each with the token rows routed to it, go to the RAM cache; experts
// already resident are computed at once while the misses are read (all reads start together), several
// experts per pool task (one task per idle worker), and with 2+ threads this thread computes a share
// too; each task's pins are released as soon as its results are back. The caller (the engine's MoE
// layer) gets one output block per expert and combines them in each token's selection order, so the
// result does not depend on which expert finished first or where it was computed.
import { accessOrder } from './access-order.js';
import type { HostCache, HostEntry } from './host-cache.js';
import type { ExpertLocator, ExpertMatrix } from './locator.js';
import type { BatchExpert, BatchResult, ExpertBatchTask, ExpertPool, MatrixInSlab } from './pool.js';
import { computeBatch, SharedClaims } from './worker.js';
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

/** How long the dispatcher's thread blocks waiting for workers to finish a shared batch before it goes back to the event loop. */
const SHARED_WAIT_MS = 20;

type Batch = { i: number; entry: HostEntry }[];

export class ExpertDispatcher implements ExpertRunner {
  private readonly parts: DispatcherParts;
  /** Worker tasks not yet settled (see settle()). */
  private readonly outstanding = new Set<Promise<void>>();
  private lateFailure: unknown;
  constructor(parts: DispatcherParts) {
    this.parts = parts;
  }

  /**
   * Waits for worker tasks still running after their layer completed, then throws a failure one of
   * them had (the engine calls it at the end of each evaluation, so no error is lost).
   */
  async settle(): Promise<void> {
    while (this.outstanding.size > 0) await Promise.all(this.outstanding);
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

    // With more than one compute thread, this thread is one of them: it would only wait otherwise, and
    // on a machine with as many cores as threads a third thread woken here would take its core anyway.
    // So the ready experts go out as one shared batch that this thread and the pool's serving workers
    // (pool.runShared: no piscina task, a futex wake-up) claim expert by expert (SharedClaims): a worker
    // that wakes late takes fewer, and this thread learns that all are computed from the shared counter
    // instead of waiting for the workers' reply messages (those are taken in at settle()). With one
    // thread, the one worker computes everything, one piscina task at a time.
    const helper = pool.threads > 1 ? 1 : 0;
    const workers = pool.threads - helper;
    let layerDone = false;
    /** Runs the task on a worker; `after` (if given) runs once it has settled, before the next dispatch. */
    const post = (task: ExpertBatchTask, batch: Batch, after?: () => void): Promise<void> => {
      inFlight++;
      let run: Promise<BatchResult>;
      try {
        const what = `layer ${layer} ${batch.map(({ i }) => `expert ${jobs[i]!.expert}`).join(', ')}`;
        run = task.claims ? pool.runShared(task, what) : pool.runBatch(task, what);
      } catch (err) {
        run = Promise.reject(err);
      }
      const settled = run.then((r) => stats.addCompute(layer, r.computeMs), (err: unknown) => {
        // A failure after the layer is complete (its experts were computed by other threads) is thrown
        // by the next runExperts or settle(), so that it is never lost.
        if (layerDone) this.lateFailure ??= err;
        else fail(err);
      }).finally(() => {
        inFlight--;
        this.outstanding.delete(settled);
        after?.();
        if (layerDone) return;
        lookUp();
        dispatch();
        finishIfIdle();
      });
      this.outstanding.add(settled);
      return settled;
    };
    const complete = (batch: Batch): void => {
      finished(batch);
      clock.computeEnd();
      unpin(batch);
    };
    const dispatch = (): void => {
      while (failure === undefined && ready.length > 0) {
        if (helper === 0) {
          if (inFlight >= workers) return;
          const batch = ready.splice(0, ready.length);
          clock.computeStart();
          void post(taskOf(batch), batch, () => complete(batch));
          continue;
        }
        const batch = ready.splice(0, ready.length);
        const task = taskOf(batch);
        // A batch of 2+ experts is shared with the serving workers (one still on an older batch joins
        // late or not at all); a lone expert is computed here.
        const claims = batch.length > 1 ? SharedClaims.create(batch.length) : undefined;
        if (claims) task.claims = claims;
        clock.computeStart();
        const posted: Promise<void>[] = claims ? [post(task, batch)] : [];
        try {
          stats.addCompute(layer, computeBatch(task).computeMs);
        } catch (err) {
          fail(err);
        }
        if (!claims || SharedClaims.waitAll(claims, batch.length, SHARED_WAIT_MS)) {
          complete(batch);
        } else {
          // A worker is slow or died holding claims: once every worker task has settled (a dead one
          // is retried by the pool), this thread computes what is still missing, then completes.
          void Promise.all(posted).then(() => {
            const missing = batch.map((_, j) => j).filter((j) => !SharedClaims.isDone(claims, j));
            try {
              if (failure === undefined && missing.length > 0) stats.addCompute(layer, computeBatch(task, missing).computeMs);
            } catch (err) {
              fail(err);
            }
            complete(batch);
            lookUp();
            dispatch();
            finishIfIdle();
          });
        }
        lookUp();
      }
    };

    lookUp();
    dispatch();
    finishIfIdle();
    await done;
    layerDone = true;
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
