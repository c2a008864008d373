// Offloading, assembled: the model file opened for positioned reads, the RAM cache with its budget, the
// reader that fills it, the worker pool and the dispatcher. The engine sees one ExpertRunner.
import { PositionedFile } from '../native/io.js';
import { UsageError } from '../model/errors.js';
import { ExpertDispatcher, type ExpertJob, type ExpertRunner, type ServeHook } from './dispatcher.js';
import { HostCache, minimumBudget, slotBytesOf } from './host-cache.js';
import type { ExpertLocator } from './locator.js';
import { ExpertPool } from './pool.js';
import { ExpertReader } from './reader.js';
import { defaultRamCacheBytes, formatBytes, parseSize } from './size.js';
import { ExpertStats, type ExpertStatsSnapshot } from './stats.js';

export interface OffloadOptions {
  /**
   * RAM cache budget: bytes, or text for parseSize ('512MiB', '25%' of all experts as cached). Default:
   * defaultRamCacheBytes() minus the resident weights, capped at what all experts take in the cache.
   */
  ramCache?: number | string;
  /** O_DIRECT reads (no second copy in the page cache). */
  directIo?: boolean;
  /** Worker threads computing experts (default 1). */
  threads?: number;
  /**
   * Read the experts the engine predicts for the next layer (its router applied early) while this layer
   * computes. Helps when the RAM cache is smaller than the experts and misses go to the disk (measured:
   * 20-25% less time per token at 25% and 50% of the experts). Default: on when the cache cannot hold
   * every expert (when it can, only a cold cache's first tokens would gain, and every layer would pay
   * for the guess).
   */
  prefetch?: boolean;
  /** Told, per expert job, which tier served it and how long it waited (trace recording: CliTrace.onServe). */
  onServe?: ServeHook;
  /**
   * Told, per expert prefetch() asked the cache for, what came of it (trace recording: CliTrace.onPrefetch):
   * read true when a read started, false when the expert was already cached (only marked recently used).
   * Not called when nothing happened (no slot could be freed).
   */
  onPrefetch?: (layer: number, expert: number, read: boolean) => void;
}

/** Bytes all experts take in the cache: every (layer, expert) in a slot (matrices padded to 64 bytes). */
export function cachedExpertBytes(locator: ExpertLocator, slotBytes: number): number {
  let n = 0;
  for (let l = 0; l < locator.layers; l++) if (locator.hasExperts(l)) n += locator.expertCount;
  return n * slotBytes;
}

/** Bytes of every tensor that stays resident (dense weights, router, shared experts). */
export function residentBytes(locator: ExpertLocator): number {
  return locator.residentTensors().reduce((s, t) => s + t.byteLength, 0);
}

/** The budget in bytes for `ramCache` (see OffloadOptions.ramCache). */
export function resolveRamCache(ramCache: number | string | undefined, locator: ExpertLocator, slotBytes: number): number {
  const all = cachedExpertBytes(locator, slotBytes);
  if (ramCache === undefined) {
    return Math.min(all, Math.max(0, defaultRamCacheBytes() - residentBytes(locator)));
  }
  const bytes = typeof ramCache === 'number' ? ramCache : parseSize(ramCache, { totalBytes: all, what: '--ram-cache' });
  return Math.min(bytes, all); // more than everything buys nothing
}

/**
 * The share of the predicted experts (most probable first) that prefetch() reads. The guess is right
 * far more often at the top (bench model, top-8: ranks 1-4 about 90%, ranks 5-8 75% down to 45%), and
 * a wrong guess costs a whole read of a disk that is the bottleneck.
 */
const PREFETCH_SHARE = 0.5;

export class ExpertOffload implements ExpertRunner {
  readonly cache: HostCache;
  readonly pool: ExpertPool;
  readonly budgetBytes: number;
  private readonly file: PositionedFile;
  private readonly dispatcher: ExpertDispatcher;
  private readonly statsKeeper: ExpertStats;
  private readonly reader: ExpertReader;
  /** OffloadOptions.prefetch: whether prefetch() reads anything (the engine predicts only when it is set). */
  readonly prefetching: boolean;
  private readonly onPrefetch: OffloadOptions['onPrefetch'];
  private closed = false;

  constructor(path: string, locator: ExpertLocator, opts: OffloadOptions = {}) {
    const slotBytes = slotBytesOf(locator);
    this.budgetBytes = resolveRamCache(opts.ramCache, locator, slotBytes);
    const k = Math.max(1, locator.expertUsedCount);
    const min = minimumBudget(slotBytes, k);
    if (this.budgetBytes < min && opts.ramCache === undefined) {
      throw new UsageError(`not enough free memory for the RAM expert cache: about ${formatBytes(this.budgetBytes)} is available, one layer's ${k} experts need ${formatBytes(min)}`,
        `free some memory or give --ram-cache ${min} (it may swap)`);
    }
    this.cache = new HostCache({ budgetBytes: this.budgetBytes, experts: locator, expertsInUse: k });
    this.file = new PositionedFile(path, { direct: opts.directIo ?? false });
    this.statsKeeper = new ExpertStats(locator.layers);
    const reader = new ExpertReader(this.file, locator, (l, bytes, ms) => this.statsKeeper.addRead(l, bytes, ms));
    this.reader = reader;
    let expertsInFile = 0;
    for (let l = 0; l < locator.layers; l++) if (locator.hasExperts(l)) expertsInFile += locator.expertCount;
    this.prefetching = opts.prefetch ?? this.cache.capacity < expertsInFile;
    this.onPrefetch = opts.onPrefetch;
    this.pool = new ExpertPool({ threads: opts.threads ?? 1 });
    this.dispatcher = new ExpertDispatcher({ cache: this.cache, reader, pool: this.pool, locator, stats: this.statsKeeper,
      ...(opts.onServe ? { onServe: opts.onServe } : {}) });
  }

  runExperts(layer: number, x: Float32Array, nEmbd: number, jobs: readonly ExpertJob[]): Promise<Float32Array[]> {
    const running = this.dispatcher.runExperts(layer, x, nEmbd, jobs);
    // The layer's experts were looked up in that call: what was prefetched for it and not asked for goes.
    if (this.prefetching) this.cache.retirePrefetches(layer);
    return running;
  }

  /**
   * Starts reading the most probable of `experts` of `layer` (predicted, most probable first, not yet
   * routed) into free or least-recently-used slots, sparing `layer`'s resident experts (about to be
   * looked up). Never throws and never waits; a read that fails is dropped and a later lookup reads the
   * expert again.
   */
  prefetch(layer: number, experts: readonly number[]): void {
    if (!this.prefetching || this.closed) return;
    const take = Math.ceil(experts.length * PREFETCH_SHARE);
    for (const e of experts.slice(0, take)) {
      const cached = this.onPrefetch !== undefined && this.cache.has(layer, e);
      const read = this.cache.prefetch(layer, e, (entry) => this.reader.load(entry), [layer]);
      if (read || cached) this.onPrefetch?.(layer, e, read);
    }
  }

  /** Waits for worker tasks that outlived their layer; throws what failed among them (the engine calls it after each evaluation). */
  settle(): Promise<void> {
    return this.dispatcher.settle();
  }

  stats(): ExpertStatsSnapshot {
    return this.statsKeeper.snapshot(this.cache.stats(), { ramCacheBytes: this.budgetBytes, threads: this.pool.threads, retries: this.pool.retries });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.pool.close();
    } finally {
      await this.cache.prefetchesSettled(); // their reads write into the slabs from the file below
      this.file.close();
    }
  }
}
