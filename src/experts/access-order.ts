// The order in which one layer's experts of one evaluated batch meet the RAM cache. The live dispatcher
// and `simulate` both take it from here, so a replay sees the same LRU recency as the run.
//
// The MoE layer (engine/moe-layer.ts) hands the dispatcher one job per DISTINCT expert the batch routed
// to, in ascending expert id (prompt tokens are one batch; every decode step is a batch of one token).
// The dispatcher then puts the experts already resident first, keeping that order among each group,
// so they compute while the misses are read; every lookup (and LRU touch) happens in that order.
//
// The one case where the live order depends on timing: a batch whose distinct experts in a layer exceed
// the cache's capacity runs in waves (at most `capacity` pinned at once). Which experts are looked up
// after the first wave, and so which ones get evicted between waves, then depends on which jobs finish
// first. For such batches `simulate` (which follows this order without waits) is an approximation.

/** A layer's distinct experts for a batch, in the order the MoE layer makes its jobs (ascending id). */
export function batchExperts(selections: Iterable<number>): number[] {
  return [...new Set(selections)].sort((a, b) => a - b);
}

/**
 * Indices into `experts` (one layer's jobs of one batch, in job order) in the order the cache is asked
 * for them: resident experts first, then the others, each group keeping the job order (a stable
 * partition). `isResident` is asked once per expert, before any lookup changes the cache.
 */
export function accessOrder(layer: number, experts: readonly number[], isResident: (layer: number, expert: number) => boolean): number[] {
  const resident: number[] = [];
  const missing: number[] = [];
  experts.forEach((e, i) => (isResident(layer, e) ? resident : missing).push(i));
  return resident.concat(missing);
}
