// The SCH replay of one sequence (../shared/metrics.md, "SCH(m, C)"): a cache of `cap` experts that
// evicts the lowest (window count, last use) other than the expert being inserted.
//
// Why it is fast: while the cache has room nothing can be evicted, so only counts and stamps are kept;
// the eviction order is built once, when the cache first overflows (it stays full from then on). The
// order is one doubly linked list per window count, oldest stamp first. A use gives the newest stamp, so
// the expert goes to the tail of count - 1 and the list stays in order; only the window slide (count + 1,
// stamp unchanged) can put an expert out of order, which marks its list unsorted until it is scanned.
// Everything lives in typed arrays held by SchScratch and reused across sequences.

/** Working arrays for SCH over one id space and window counts up to `maxCount`. */
export class SchScratch {
  readonly count: Int32Array;
  readonly stamp: Float64Array;
  readonly cached: Uint8Array;
  readonly used: Uint8Array;
  /** t + 1 when evicted while processing token t: it was still cached at that token's start. */
  readonly evictedAt: Int32Array;
  readonly prev: Int32Array;
  readonly next: Int32Array;
  /** Experts cached while the cache had room, in insertion order (to build the lists on overflow). */
  readonly inserted: Int32Array;
  /** Scan mode: (window count, stamp) of the expert in each cache slot, as one number. */
  readonly slotKey: Float64Array;
  readonly head: Int32Array;
  readonly tail: Int32Array;
  readonly size: Int32Array;
  /** 1 while list v is in ascending stamp order (its head is then the oldest). */
  readonly sorted: Uint8Array;

  constructor(readonly idSpace: number, readonly maxCount: number) {
    this.count = new Int32Array(idSpace);
    this.stamp = new Float64Array(idSpace);
    this.cached = new Uint8Array(idSpace);
    this.used = new Uint8Array(idSpace);
    this.evictedAt = new Int32Array(idSpace);
    this.prev = new Int32Array(idSpace);
    this.next = new Int32Array(idSpace);
    this.inserted = new Int32Array(idSpace);
    this.slotKey = new Float64Array(idSpace);
    this.head = new Int32Array(maxCount + 1);
    this.tail = new Int32Array(maxCount + 1);
    this.size = new Int32Array(maxCount + 1);
    this.sorted = new Uint8Array(maxCount + 1);
  }
}

/**
 * Up to this cache size a miss finds its victim by scanning the cached experts, which costs nothing on a
 * hit; above it, per-count lists (a few list moves per selection) win.
 */
const SCAN_CAP = 64;

/**
 * Replays one sequence (`tokens` rows of `width` ids) under SCH(m, cap); returns warm (the SCH count)
 * and cold hits. `s.maxCount` must be at least min(m, tokens).
 */
export function schReplay(ids: Int32Array, tokens: number, width: number, m: number, cap: number, s: SchScratch): { warm: number; cold: number } {
  // Stamps are 1 .. tokens * width, so count * span + stamp orders by (count, stamp) while it is exact.
  const span = tokens * width + 1;
  const exact = (Math.min(m, tokens) + 1) * span <= Number.MAX_SAFE_INTEGER;
  return cap <= SCAN_CAP && exact ? replayByScan(ids, tokens, width, m, cap, span, s) : replayByLists(ids, tokens, width, m, cap, s);
}

/** Clears the per-expert state and counts the first window (the first `end` ids) into `s.count`. */
function startReplay(s: SchScratch, ids: Int32Array, end: number): void {
  const { count } = s;
  count.fill(0);
  s.cached.fill(0);
  s.used.fill(0);
  s.evictedAt.fill(0);
  for (let i = 0; i < end; i++) count[ids[i]!]!++;
}

/** SCH with the victim found by a scan of the (at most SCAN_CAP) cached experts, held in `s.inserted`. */
function replayByScan(ids: Int32Array, tokens: number, width: number, m: number, cap: number, span: number, s: SchScratch): { warm: number; cold: number } {
  // slots[i]: the expert in slot i; slotKey[i]: its count * span + stamp, kept current so that the scan
  // for the lowest is one pass over contiguous numbers with a rarely taken branch.
  const { count, cached, used, evictedAt, inserted: slots, prev: slotOf, slotKey } = s;
  const n = tokens;
  const w = width;
  startReplay(s, ids, Math.min(m, n) * w);
  let warm = 0;
  let cold = 0;
  let distinct = 0;
  let cachedCount = 0;
  let clock = 0;
  for (let t = 0; t < n; t++) {
    const base = t * w;
    // Judge and use the token's experts in router order (an id occurs once per token): count - 1,
    // newest stamp, insert (and evict) if not cached.
    for (let j = 0; j < w; j++) {
      const e = ids[base + j]!;
      const key = --count[e]! * span + ++clock;
      if (cached[e]) {
        warm++;
        cold++;
        slotKey[slotOf[e]!] = key;
        continue;
      }
      // A hit if cached at the start of the token (evicted since by an earlier expert of the token).
      if (evictedAt[e] === t + 1) {
        warm++;
        cold++;
      } else if (!used[e]) {
        if (distinct < cap) warm++;
        used[e] = 1;
        distinct++;
      }
      cached[e] = 1;
      let slot = cachedCount;
      if (cachedCount < cap) cachedCount++;
      else {
        // e takes the slot of the lowest (count, stamp) of the others.
        let best = slotKey[0]!;
        slot = 0;
        for (let i = 1; i < cap; i++) {
          if (slotKey[i]! < best) {
            best = slotKey[i]!;
            slot = i;
          }
        }
        cached[slots[slot]!] = 0;
        evictedAt[slots[slot]!] = t + 1;
      }
      slots[slot] = e;
      slotOf[e] = slot;
      slotKey[slot] = key;
    }
    // 3. Slide the window: token t + m's selections enter the counts.
    if (t + m < n) {
      const inn = (t + m) * w;
      for (let j = 0; j < w; j++) {
        const e = ids[inn + j]!;
        count[e]!++;
        if (cached[e]) slotKey[slotOf[e]!]! += span;
      }
    }
  }
  return { warm, cold };
}

/** SCH with the cached experts in per-count lists ordered by stamp (see the top of the file). */
function replayByLists(ids: Int32Array, tokens: number, width: number, m: number, cap: number, s: SchScratch): { warm: number; cold: number } {
  // One flat loop with the list operations written out: closures over mutable locals cost V8 dearly here.
  const { count, stamp, cached, used, evictedAt, prev, next, inserted, head, tail, size, sorted } = s;
  const n = tokens;
  const w = width;
  startReplay(s, ids, Math.min(m, n) * w);
  let warm = 0;
  let cold = 0;
  let distinct = 0;
  let cachedCount = 0;
  let clock = 0;
  let full = false;
  /** No list below `lo` has members (a lower bound on the lowest non-empty list). */
  let lo = 0;

  for (let t = 0; t < n; t++) {
    const base = t * w;
    // Judge and use the token's experts in router order (an id occurs once per token): count - 1,
    // newest stamp, insert (and evict) if not cached.
    for (let j = 0; j < w; j++) {
      const e = ids[base + j]!;
      const v = count[e]! - 1;
      count[e] = v;
      stamp[e] = ++clock;
      if (cached[e]) {
        warm++;
        cold++;
        if (!full) continue;
        // Unlink e from list v + 1.
        const p = prev[e]!;
        const q = next[e]!;
        if (p < 0) head[v + 1] = q;
        else next[p] = q;
        if (q < 0) tail[v + 1] = p;
        else prev[q] = p;
        if (--size[v + 1]! === 0) sorted[v + 1] = 1;
      } else {
        // A hit if cached at the start of the token (evicted since by an earlier expert of the token).
        if (evictedAt[e] === t + 1) {
          warm++;
          cold++;
        } else if (!used[e]) {
          if (distinct < cap) warm++;
          used[e] = 1;
          distinct++;
        }
        cached[e] = 1;
        if (!full) {
          if (cachedCount < cap) {
            inserted[cachedCount++] = e;
            continue;
          }
          full = true;
          lo = buildLists(s, cap);
        }
        // Evict the lowest (count, stamp) before listing e: the same as inserting e and evicting the
        // lowest other than e.
        while (size[lo] === 0) lo++;
        let victim = head[lo]!;
        if (!sorted[lo]) {
          for (let x = next[victim]!; x >= 0; x = next[x]!) if (stamp[x]! < stamp[victim]!) victim = x;
        }
        const p = prev[victim]!;
        const q = next[victim]!;
        if (p < 0) head[lo] = q;
        else next[p] = q;
        if (q < 0) tail[lo] = p;
        else prev[q] = p;
        if (--size[lo]! === 0) sorted[lo] = 1;
        cached[victim] = 0;
        evictedAt[victim] = t + 1;
      }
      // Append e to the tail of list v: its stamp is the newest, so the list stays in order.
      const tl = tail[v]!;
      prev[e] = tl;
      next[e] = -1;
      if (tl < 0) head[v] = e;
      else next[tl] = e;
      tail[v] = e;
      size[v]!++;
      if (v < lo) lo = v;
    }
    // 3. Slide the window: token t + m's selections enter the counts.
    if (t + m < n) {
      const inn = (t + m) * w;
      for (let j = 0; j < w; j++) {
        const e = ids[inn + j]!;
        const v = count[e]!;
        count[e] = v + 1;
        if (!full || !cached[e]) continue;
        // Move e from list v to the tail of list v + 1; its stamp is old, so that list may go unsorted.
        const p = prev[e]!;
        const q = next[e]!;
        if (p < 0) head[v] = q;
        else next[p] = q;
        if (q < 0) tail[v] = p;
        else prev[q] = p;
        if (--size[v]! === 0) sorted[v] = 1;
        const tl = tail[v + 1]!;
        prev[e] = tl;
        next[e] = -1;
        if (tl < 0) head[v + 1] = e;
        else {
          next[tl] = e;
          if (stamp[tl]! > stamp[e]!) sorted[v + 1] = 0;
        }
        tail[v + 1] = e;
        size[v + 1]!++;
      }
    }
  }
  return { warm, cold };
}

/** The cache just overflowed: lists every expert cached so far (`cap` of them) in stamp order; returns the lowest count. */
function buildLists(s: SchScratch, cap: number): number {
  const { count, stamp, head, tail, size, sorted, prev, next } = s;
  head.fill(-1);
  tail.fill(-1);
  size.fill(0);
  sorted.fill(1);
  const order = s.inserted.subarray(0, cap).sort((a, b) => stamp[a]! - stamp[b]!);
  let lo = s.maxCount;
  for (let i = 0; i < cap; i++) {
    const e = order[i]!;
    const v = count[e]!;
    const tl = tail[v]!;
    prev[e] = tl;
    next[e] = -1;
    if (tl < 0) head[v] = e;
    else next[tl] = e;
    tail[v] = e;
    size[v]!++;
    if (v < lo) lo = v;
  }
  return lo;
}
