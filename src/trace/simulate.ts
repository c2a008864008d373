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
import { accessOrder, batchExperts } from '../experts/access-order.js';
import { HostCache, uniformExpertSizes } from '../experts/host-cache.js';
import type { RoutingData } from './routing.js';
import { sharedCacheReplay, type CachePolicy } from './metrics.js';
import { openTrace } from './format.js';

/**
 * Per sequence id, the batch index of each of its tokens in position order (the order RoutingData keeps
 * them in).
 */
export type TraceBatches = Map<number, Int32Array>;

/** The batches of a trace file, or null when some token line has no "batch" (old or imported traces). */
export async function readTraceBatches(path: string): Promise<TraceBatches | null> {
  const t = await openTrace(path);
  const bySeq = new Map<number, { pos: number; batch: number }[]>();
  for await (const rec of t.records) {
    if (rec.batch === undefined) {
      await t.records.return(undefined);
      return null;
    }
    let list = bySeq.get(rec.seq);
    if (!list) bySeq.set(rec.seq, list = []);
    list.push({ pos: rec.pos, batch: rec.batch });
  }
  const out: TraceBatches = new Map();
  // Array.prototype.sort is stable: ties keep file order, as RoutingBuilder orders them.
  for (const [seq, list] of bySeq) out.set(seq, Int32Array.from(list.sort((a, b) => a.pos - b.pos), (x) => x.batch));
  return out;
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

/**
 * Replays every sequence (each from an empty cache) against a cache of `capacityExperts` experts shared
 * by all layers. `expertBytes` only prices the misses. With `batches` (readTraceBatches), LRU replays
 * batch by batch as the live dispatcher looks experts up.
 */
export function simulateTrace(r: RoutingData, policy: CachePolicy, capacityExperts: number, expertBytes: number | null,
  batches: TraceBatches | null = null): SimulationResult {
  let cold: number;
  let accesses: number;
  let layerHitRate: number[] | null = null;
  let oversizedBatchLayers = 0;
  const perBatch = policy === 'lru' && batches !== null;
  if (policy === 'lru') {
    // One slot = one expert; the byte size does not change LRU decisions.
    const slot = 64;
    const sizes = uniformExpertSizes(r.layers, r.experts, { gate: slot, up: 0, down: 0 });
    const layerHits = new Float64Array(r.layers);
    const layerAccesses = new Float64Array(r.layers);
    cold = 0;
    accesses = 0;
    const lookup = (cache: HostCache, layer: number, expert: number): void => {
      layerAccesses[layer]!++;
      if (cache.access(layer, expert)) layerHits[layer]!++;
    };
    for (const s of r.sequences) {
      const cache = new HostCache({ budgetBytes: capacityExperts * slot, experts: sizes, backing: 'none', expertsInUse: 1 });
      const batchOf = batches?.get(s.seq);
      if (batches && (!batchOf || batchOf.length !== s.tokens)) throw new Error(`batches of sequence ${s.seq} do not match its ${s.tokens} tokens`);
      if (!batchOf) {
        for (let i = 0; i < s.ids.length; i++) lookup(cache, Math.floor(i / r.k) % r.layers, s.ids[i]!);
        continue;
      }
      const width = r.layers * r.k;
      for (let t0 = 0; t0 < s.tokens;) {
        let t1 = t0 + 1;
        while (t1 < s.tokens && batchOf[t1] === batchOf[t0]) t1++;
        for (let layer = 0; layer < r.layers; layer++) {
          const chosen: number[] = [];
          for (let t = t0; t < t1; t++) for (let j = 0; j < r.k; j++) chosen.push(s.ids[t * width + layer * r.k + j]!);
          const experts = batchExperts(chosen);
          if (experts.length > capacityExperts) oversizedBatchLayers++;
          for (const i of accessOrder(layer, experts, (l, e) => cache.has(l, e))) lookup(cache, layer, experts[i]!);
        }
        t0 = t1;
      }
    }
    for (let l = 0; l < r.layers; l++) {
      cold += layerHits[l]!;
      accesses += layerAccesses[l]!;
    }
    layerHitRate = [...layerHits].map((h, l) => h / layerAccesses[l]!);
  } else {
    const h = sharedCacheReplay(r, policy, capacityExperts);
    cold = h.cold;
    accesses = h.accesses;
  }
  const warm = cold + excusedFirstUses(r, capacityExperts);
  const misses = accesses - cold;
  return {
    policy,
    capacityExperts,
    accesses,
    hits: { cold, warm },
    hitRate: { cold: cold / accesses, warm: warm / accesses },
    misses,
    bytesRead: expertBytes === null ? null : misses * expertBytes,
    layerHitRate,
    perBatch,
    oversizedBatchLayers,
  };
}
