// `simulate`: replay a trace against one RAM cache shared by all layers, as the live run has it. LRU
// goes through the live cache class itself (HostCache in accounting-only mode), so simulated and live
// hit rates come from the same code; LFU and Belady's MIN (no live counterpart) use metrics.ts's replay.
import { HostCache, uniformExpertSizes } from '../experts/host-cache.js';
import type { RoutingData } from './routing.js';
import { sharedCacheReplay, type CachePolicy } from './metrics.js';

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
 * by all layers. `expertBytes` only prices the misses.
 */
export function simulateTrace(r: RoutingData, policy: CachePolicy, capacityExperts: number, expertBytes: number | null): SimulationResult {
  let cold: number;
  let accesses: number;
  let layerHitRate: number[] | null = null;
  if (policy === 'lru') {
    // One slot = one expert; the byte size does not change LRU decisions.
    const slot = 64;
    const sizes = uniformExpertSizes(r.layers, r.experts, { gate: slot, up: 0, down: 0 });
    const layerHits = new Float64Array(r.layers);
    cold = 0;
    accesses = 0;
    for (const s of r.sequences) {
      const cache = new HostCache({ budgetBytes: capacityExperts * slot, experts: sizes, backing: 'none', expertsInUse: 1 });
      for (let i = 0; i < s.ids.length; i++) {
        const layer = Math.floor(i / r.k) % r.layers;
        if (cache.access(layer, s.ids[i]!)) {
          cold++;
          layerHits[layer]!++;
        }
      }
      accesses += s.ids.length;
    }
    const perLayer = accesses / r.layers;
    layerHitRate = [...layerHits].map((h) => h / perLayer);
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
  };
}
