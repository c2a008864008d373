// `simulate`: replay a trace against one RAM cache shared by all layers, as the live run has it. LRU
// goes through the live cache class itself (HostCache in accounting-only mode), so simulated and live
// hit rates come from the same code; LFU and Belady's MIN (no live counterpart) use metrics.ts's replay.
//
// Traces that record each token's batch (the eval call; generate --trace writes it) are replayed as the
// live cache saw them: per batch and layer, each distinct expert once, in the dispatcher's order
// (experts/access-order.ts). Then LRU hits and misses equal the live run's counters exactly, except for
// a batch whose distinct experts in one layer exceed the cache's capacity (the live run does those in
// waves whose order depends on timing; counted in `oversizedBatchLayers`). Traces without batches are
// replayed token by token in router order.
//
// Prefetches (the trace's "prefetched" / "prefetch_cached", recorded when generate prefetched) are
// replayed by replayTrace for LRU per batch, in the live order: a layer's lookups (pinned), the retiring
// of its unused prefetches, the next layer's recorded prefetches, the unpins. The live cache can differ
// only through timing: an entry still being read can be neither evicted nor retired at once, which the
// replay (whose reads are all done before the next lookups) does not model; with a cache well above one
// layer's experts plus the prefetches this does not arise (a divergence shows in the counts, and as
// `prefetch.skipped` where a recorded read could not be redone).
import { accessOrder, batchExperts } from '../experts/access-order.js';
import { expertKey, HostCache, uniformExpertSizes } from '../experts/host-cache.js';
import type { RoutingData } from './routing.js';
import { sharedCacheReplay, type CachePolicy } from './metrics.js';
import { openTrace } from './format.js';

/**
 * Per sequence id, the batch index of each of its tokens in position order (the order RoutingData keeps
 * them in).
 */
export type TraceBatches = Map<number, Int32Array>;

/** What prefetching did during one batch, per MoE layer (the trace's "prefetched" and "prefetch_cached"). */
export interface BatchPrefetches {
  /** read[l]: experts of layer l whose read prefetch started, in order. */
  read: number[][];
  /** cached[l]: experts of layer l prefetch asked for that were already cached (only marked recently used). */
  cached: number[][];
}

/** Per sequence id, per batch index, the batch's prefetches (batches without any are absent). */
export type TracePrefetches = Map<number, Map<number, BatchPrefetches>>;

export interface TraceBatchInfo {
  /** null when some token line has no "batch" (old or imported traces). */
  batches: TraceBatches | null;
  /** null when no token line has "prefetched" (recorded without prefetching, or before traces knew it). */
  prefetches: TracePrefetches | null;
}

/** A trace file's batches and prefetches (one pass over the file). */
export async function readTraceBatchInfo(path: string): Promise<TraceBatchInfo> {
  const t = await openTrace(path);
  const bySeq = new Map<number, { pos: number; batch: number }[]>();
  let allBatched = true;
  let prefetches: TracePrefetches | null = null;
  for await (const rec of t.records) {
    if (rec.batch === undefined) {
      allBatched = false;
      continue;
    }
    let list = bySeq.get(rec.seq);
    if (!list) bySeq.set(rec.seq, list = []);
    list.push({ pos: rec.pos, batch: rec.batch });
    if (rec.prefetched) {
      prefetches ??= new Map();
      let seq = prefetches.get(rec.seq);
      if (!seq) prefetches.set(rec.seq, seq = new Map());
      // Every line of a batch carries the same lists: the first one seen stands for the batch.
      if (!seq.has(rec.batch)) seq.set(rec.batch, { read: rec.prefetched, cached: rec.prefetch_cached ?? rec.prefetched.map(() => []) });
    }
  }
  if (!allBatched) return { batches: null, prefetches };
  const batches: TraceBatches = new Map();
  // Array.prototype.sort is stable: ties keep file order, as RoutingBuilder orders them.
  for (const [seq, list] of bySeq) batches.set(seq, Int32Array.from(list.sort((a, b) => a.pos - b.pos), (x) => x.batch));
  return { batches, prefetches };
}

/** The batches of a trace file, or null when some token line has no "batch" (old or imported traces). */
export async function readTraceBatches(path: string): Promise<TraceBatches | null> {
  return (await readTraceBatchInfo(path)).batches;
}

/** Prefetch counters of a replay, as the live cache counts them (ExpertStatsSnapshot.prefetch). */
export interface PrefetchReplay {
  /** Reads started, as recorded in the trace and re-done by the replayed cache. */
  issued: number;
  /** Prefetched experts a lookup found before they were evicted or retired. */
  used: number;
  /** Prefetched experts evicted or retired (not asked for by their layer) before any lookup. */
  wasted: number;
  /**
   * Recorded reads the replayed cache did not start (the expert was cached, or no slot could be freed):
   * the replay's cache differs from the live one there. 0 when the replay follows the live run.
   */
  skipped: number;
}

export interface SimulationResult {
  policy: CachePolicy;
  /** Experts the cache holds, all layers together. */
  capacityExperts: number;
  accesses: number;
  hits: { cold: number; warm: number };
  hitRate: { cold: number; warm: number };
  misses: number;
  /** Expert bytes read on (cold) misses; null when the expert size is unknown. */
  bytesRead: number | null;
  /** Cold hit rate per layer (the shared cache's hits on that layer's experts). LRU only; else null. */
  layerHitRate: number[] | null;
  /** LRU replayed batch by batch (each distinct expert of a batch and layer looked up once), as the live cache. */
  perBatch: boolean;
  /**
   * (batch, layer) pairs with more distinct experts than the cache holds: the live run does them in
   * waves whose order depends on timing, so for them the replay approximates. 0 without batches.
   */
  oversizedBatchLayers: number;
  /** The trace's prefetches replayed (LRU per batch only); null when not replayed. */
  prefetch: PrefetchReplay | null;
}

/** Distinct experts per sequence, capped at the capacity: the first uses warm counting excuses. */
function excusedFirstUses(r: RoutingData, cap: number): number {
  const seen = new Uint8Array(r.layers * r.experts);
  let n = 0;
  for (const s of r.sequences) {
    seen.fill(0);
    let distinct = 0;
    for (let i = 0; i < s.ids.length; i++) {
      const key = Math.floor(i / r.k) % r.layers * r.experts + s.ids[i]!;
      if (!seen[key]) {
        seen[key] = 1;
        distinct++;
      }
    }
    n += Math.min(distinct, cap);
  }
  return n;
}

interface LruOutcome {
  cold: number;
  accesses: number;
  layerHitRate: number[];
  oversizedBatchLayers: number;
  prefetch: PrefetchReplay | null;
}

/**
 * The LRU replay through HostCache (accounting only). With `prefetches` it does, per batch and layer, what
 * the live run does: the layer's lookups (pinned), then retirePrefetches(layer), then the prefetches
 * recorded for the next layer (HostCache.prefetch, sparing that layer's entries), then the unpins. Those
 * reads end asynchronously even here: the generator yields the cache when its reads must be awaited
 * (before the next lookups, as in a live run whose reads are done by then) and returns the outcome.
 * Without prefetches it never yields.
 */
function* lruReplay(r: RoutingData, capacityExperts: number, batches: TraceBatches | null,
  prefetches: TracePrefetches | null): Generator<HostCache, LruOutcome, void> {
  // One slot = one expert; the byte size does not change LRU decisions.
  const slot = 64;
  const sizes = uniformExpertSizes(r.layers, r.experts, { gate: slot, up: 0, down: 0 });
  const layerHits = new Float64Array(r.layers);
  const layerAccesses = new Float64Array(r.layers);
  let oversizedBatchLayers = 0;
  const withPrefetch = prefetches !== null && batches !== null;
  const pf: PrefetchReplay = { issued: 0, used: 0, wasted: 0, skipped: 0 };
  const loaded = (): Promise<void> => Promise.resolve();
  const lookup = (cache: HostCache, layer: number, expert: number): void => {
    layerAccesses[layer]!++;
    if (cache.access(layer, expert)) layerHits[layer]!++;
  };
  /** Applies one batch's prefetches recorded for `layer`; true when a read started (to be awaited). */
  const prefetchLayer = (cache: HostCache, done: BatchPrefetches | undefined, layer: number): boolean => {
    if (!done) return false;
    // Recorded cache hits only mark the expert recently used; they spare nothing else, since a prefetch
    // never evicts an entry of its own layer, so doing them before the reads changes no eviction.
    for (const e of done.cached[layer] ?? []) if (cache.has(layer, e)) cache.prefetch(layer, e, loaded, [layer]);
    let started = false;
    for (const e of done.read[layer] ?? []) {
      if (cache.prefetch(layer, e, loaded, [layer])) started = true;
      else pf.skipped++;
    }
    return started;
  };
  for (const s of r.sequences) {
    const cache = new HostCache({ budgetBytes: capacityExperts * slot, experts: sizes, backing: 'none', expertsInUse: 1 });
    const batchOf = batches?.get(s.seq);
    if (batches && (!batchOf || batchOf.length !== s.tokens)) throw new Error(`batches of sequence ${s.seq} do not match its ${s.tokens} tokens`);
    if (!batchOf) {
      for (let i = 0; i < s.ids.length; i++) lookup(cache, Math.floor(i / r.k) % r.layers, s.ids[i]!);
      continue;
    }
    const seqPrefetches = withPrefetch ? prefetches.get(s.seq) : undefined;
    const width = r.layers * r.k;
    for (let t0 = 0; t0 < s.tokens;) {
      let t1 = t0 + 1;
      while (t1 < s.tokens && batchOf[t1] === batchOf[t0]) t1++;
      const done = seqPrefetches?.get(batchOf[t0]!);
      if (prefetchLayer(cache, done, 0)) yield cache;
      for (let layer = 0; layer < r.layers; layer++) {
        const chosen: number[] = [];
        for (let t = t0; t < t1; t++) for (let j = 0; j < r.k; j++) chosen.push(s.ids[t * width + layer * r.k + j]!);
        const experts = batchExperts(chosen);
        const oversized = experts.length > capacityExperts;
        if (oversized) oversizedBatchLayers++;
        // Pinned while the next layer's prefetches run, as live (not for a layer the live run does in waves).
        const pins: number[] = [];
        for (const i of accessOrder(layer, experts, (l, e) => cache.has(l, e))) {
          lookup(cache, layer, experts[i]!);
          if (withPrefetch && !oversized) pins.push(cache.acquire(expertKey(layer, experts[i]!, r.experts))!.key);
        }
        if (withPrefetch) cache.retirePrefetches(layer);
        if (layer + 1 < r.layers && prefetchLayer(cache, done, layer + 1)) yield cache;
        for (const key of pins) cache.release(key);
      }
      t0 = t1;
    }
    if (withPrefetch) {
      const c = cache.stats().prefetch.total;
      pf.issued += c.issued;
      pf.used += c.used;
      pf.wasted += c.wasted;
    }
  }
  let cold = 0;
  let accesses = 0;
  for (let l = 0; l < r.layers; l++) {
    cold += layerHits[l]!;
    accesses += layerAccesses[l]!;
  }
  return { cold, accesses, layerHitRate: [...layerHits].map((h, l) => h / layerAccesses[l]!), oversizedBatchLayers, prefetch: withPrefetch ? pf : null };
}

function result(r: RoutingData, policy: CachePolicy, capacityExperts: number, expertBytes: number | null, perBatch: boolean,
  o: LruOutcome | { cold: number; accesses: number; layerHitRate: null; oversizedBatchLayers: 0; prefetch: null }): SimulationResult {
  const { cold, accesses } = o;
  const warm = cold + excusedFirstUses(r, capacityExperts);
  const misses = accesses - cold;
  // A prefetch reads the whole expert as a miss does; it counts no miss.
  const reads = misses + (o.prefetch?.issued ?? 0);
  return {
    policy,
    capacityExperts,
    accesses,
    hits: { cold, warm },
    hitRate: { cold: cold / accesses, warm: warm / accesses },
    misses,
    bytesRead: expertBytes === null ? null : reads * expertBytes,
    layerHitRate: o.layerHitRate,
    perBatch,
    oversizedBatchLayers: o.oversizedBatchLayers,
    prefetch: o.prefetch,
  };
}

/**
 * Replays every sequence (each from an empty cache) against a cache of `capacityExperts` experts shared
 * by all layers. `expertBytes` only prices the reads. With `batches` (readTraceBatches), LRU replays
 * batch by batch as the live dispatcher looks experts up. Prefetches are not replayed here: see replayTrace.
 */
export function simulateTrace(r: RoutingData, policy: CachePolicy, capacityExperts: number, expertBytes: number | null,
  batches: TraceBatches | null = null): SimulationResult {
  const perBatch = policy === 'lru' && batches !== null;
  if (policy !== 'lru') {
    const h = sharedCacheReplay(r, policy, capacityExperts);
    return result(r, policy, capacityExperts, expertBytes, perBatch, { cold: h.cold, accesses: h.accesses, layerHitRate: null, oversizedBatchLayers: 0, prefetch: null });
  }
  const replay = lruReplay(r, capacityExperts, batches, null);
  const end = replay.next();
  if (!end.done) throw new Error('lruReplay yielded without prefetches'); // cannot happen: only prefetch reads yield
  return result(r, policy, capacityExperts, expertBytes, perBatch, end.value);
}

/**
 * simulateTrace, plus the trace's prefetches (readTraceBatchInfo) for LRU per batch: replayed as the live
 * cache does them, so hits, misses, bytes read and the prefetch counters match the run that recorded
 * the trace. Other policies, and traces without batches, ignore the prefetches (result.prefetch null).
 */
export async function replayTrace(r: RoutingData, policy: CachePolicy, capacityExperts: number, expertBytes: number | null,
  info: TraceBatchInfo): Promise<SimulationResult> {
  if (policy !== 'lru' || info.batches === null || info.prefetches === null) return simulateTrace(r, policy, capacityExperts, expertBytes, info.batches);
  const replay = lruReplay(r, capacityExperts, info.batches, info.prefetches);
  for (;;) {
    const step = replay.next();
    if (step.done) return result(r, policy, capacityExperts, expertBytes, true, step.value);
    await step.value.prefetchesSettled();
  }
}
