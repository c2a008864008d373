// Local routing consistency metrics (SRP, SCH) and cache-policy baselines (LRU, LFU, Belady's MIN),
// exactly as ../shared/metrics.md defines them (Liang et al., arXiv 2505.16056, and their scripts).
//
// Conventions shared by every function here:
// - Caches start empty at the start of each sequence; hit rates pool hits and accesses over sequences.
// - Per layer: layer l's experts with a cache of C experts. Model level ("model"): all layers' experts in
//   one id space (layer * E + e), each token's selections concatenated in layer order, cache C * layers.
//   For the baselines that is one shared cache, as the live RAM cache is (one byte budget for all layers).
// - "warm" counting excuses first uses while the cache has room (fewer than C distinct experts used
//   before, earlier experts of the same token included), as SCH and the paper's baselines do; "cold"
//   counts only experts found in the cache, which is what a real run that starts empty sees.
// - SCH judges a token's k experts against the cache as it was at the start of the token (metrics.md);
//   the baselines LRU/LFU/MIN look experts up one at a time in router order, as a live cache sees them.
//
// Everything runs on typed arrays: SRP is O(1) per selection (a histogram of window counts advanced
// lazily), SCH (sch.ts) keeps cached experts in per-count lists ordered by last use, LRU is a linked list, LFU and
// MIN use an indexed binary heap.
import type { RoutingData } from './routing.js';
import { SchScratch, schReplay } from './sch.js';

/** A metric for each layer and for the whole model. NaN where there is nothing to measure. */
export interface LayerAndModel {
  layers: number[];
  model: number;
}

export interface SrpResult extends LayerAndModel {
  /** The best threshold c* per layer and for the model. */
  threshold: LayerAndModel;
  /** Best group size P(c*)/A (predicted experts per actual selection) per layer and for the model. */
  groupSize: LayerAndModel;
}

export interface SchResult extends LayerAndModel {
  /** The same replay counted cold (only cached experts are hits); the SCH value itself is warm. */
  cold: LayerAndModel;
}

export type CachePolicy = 'lru' | 'lfu' | 'belady';
export const CACHE_POLICIES: readonly CachePolicy[] = ['lru', 'lfu', 'belady'];

export interface HitRates {
  warm: LayerAndModel;
  cold: LayerAndModel;
}

/** A stream of accesses: `tokens` rows of `width` ids each, ids in 0..idSpace-1. */
interface AccessStream {
  ids: Int32Array;
  tokens: number;
  width: number;
}

interface Views {
  /** perLayer[l][s]: layer l's selections of sequence s, ids 0..E-1. */
  perLayer: AccessStream[][];
  /** pooled[s]: all layers' selections of sequence s, ids layer * E + e. */
  pooled: AccessStream[];
}

const viewCache = new WeakMap<RoutingData, Views>();

function views(r: RoutingData): Views {
  let v = viewCache.get(r);
  if (v) return v;
  const { layers: L, experts: E, k } = r;
  const perLayer: AccessStream[][] = [];
  for (let l = 0; l < L; l++) {
    perLayer.push(r.sequences.map((s) => {
      const ids = new Int32Array(s.tokens * k);
      for (let t = 0; t < s.tokens; t++) ids.set(s.ids.subarray((t * L + l) * k, (t * L + l + 1) * k), t * k);
      return { ids, tokens: s.tokens, width: k };
    }));
  }
  const pooled = r.sequences.map((s) => {
    const ids = new Int32Array(s.ids.length);
    for (let i = 0; i < ids.length; i++) ids[i] = Math.floor(i / k) % L * E + s.ids[i]!;
    return { ids, tokens: s.tokens, width: L * k };
  });
  v = { perLayer, pooled };
  viewCache.set(r, v);
  return v;
}

// ---------------------------------------------------------------- SRP

/**
 * hist[v] += number of (window, expert) pairs with n(w, e) = v, over all windows of m tokens of the
 * streams. Advances a per-window histogram of counts lazily: hist[v] is credited with cur[v] for every
 * window between two changes of cur[v], so each selection entering or leaving the window costs O(1).
 */
function srpHistogram(streams: AccessStream[], idSpace: number, m: number, hist: Float64Array): void {
  const cnt = new Int32Array(idSpace);
  const cur = new Float64Array(m + 1);
  const last = new Float64Array(m + 1);
  for (const s of streams) {
    const { ids, tokens: n, width: w } = s;
    if (n < m) continue;
    cnt.fill(0);
    cur.fill(0);
    last.fill(0);
    cur[0] = idSpace;
    // One change of an expert's count at window index `time`.
    const change = (e: number, delta: number, time: number): void => {
      const v = cnt[e]!;
      hist[v]! += cur[v]! * (time - last[v]!);
      last[v] = time;
      cur[v]!--;
      const u = v + delta;
      hist[u]! += cur[u]! * (time - last[u]!);
      last[u] = time;
      cur[u]!++;
      cnt[e] = u;
    };
    for (let i = 0; i < m * w; i++) change(ids[i]!, 1, 0);
    const windows = n - m + 1;
    for (let time = 1; time < windows; time++) {
      const out = (time - 1) * w;
      const inn = (time + m - 1) * w;
      for (let j = 0; j < w; j++) change(ids[out + j]!, -1, time);
      for (let j = 0; j < w; j++) change(ids[inn + j]!, 1, time);
    }
    for (let v = 0; v <= m; v++) hist[v]! += cur[v]! * (windows - last[v]!);
  }
}

/** max over c of F1(c) = 2 M(c) / (P(c) + A), with the threshold and group size where it is reached. */
function srpFromHistogram(hist: Float64Array, m: number): { f1: number; c: number; groupSize: number } {
  let A = 0;
  for (let v = 0; v <= m; v++) A += v * hist[v]!;
  if (A === 0) return { f1: NaN, c: NaN, groupSize: NaN };
  // Suffix sums give M(c) and P(c) for every c.
  const M = new Float64Array(m + 2);
  const pairs = new Float64Array(m + 2);
  for (let v = m; v >= 0; v--) {
    M[v] = M[v + 1]! + v * hist[v]!;
    pairs[v] = pairs[v + 1]! + hist[v]!;
  }
  let best = -1;
  let bestC = 0;
  for (let c = 0; c <= m; c++) {
    const f1 = (2 * M[c]!) / (m * pairs[c]! + A);
    if (f1 > best) {
      best = f1;
      bestC = c;
    }
  }
  return { f1: best, c: bestC, groupSize: (m * pairs[bestC]!) / A };
}

/** SRP(m) per layer and at model level (M, P and A added over layers before the max over c). */
export function srp(r: RoutingData, m: number): SrpResult {
  if (!Number.isInteger(m) || m < 1) throw new RangeError(`segment length must be a positive integer, got ${m}`);
  const v = views(r);
  const total = new Float64Array(m + 1);
  const out: SrpResult = { layers: [], model: NaN, threshold: { layers: [], model: NaN }, groupSize: { layers: [], model: NaN } };
  for (let l = 0; l < r.layers; l++) {
    const hist = new Float64Array(m + 1);
    srpHistogram(v.perLayer[l]!, r.experts, m, hist);
    for (let i = 0; i <= m; i++) total[i]! += hist[i]!;
    const s = srpFromHistogram(hist, m);
    out.layers.push(s.f1);
    out.threshold.layers.push(s.c);
    out.groupSize.layers.push(s.groupSize);
  }
  const s = srpFromHistogram(total, m);
  out.model = s.f1;
  out.threshold.model = s.c;
  out.groupSize.model = s.groupSize;
  return out;
}

// ---------------------------------------------------------------- SCH

function checkCap(cap: number): void {
  if (!Number.isInteger(cap) || cap < 1) throw new RangeError(`cache size must be a positive integer, got ${cap}`);
}

function schStreams(streams: AccessStream[], idSpace: number, m: number, cap: number): { warm: number; cold: number } {
  let longest = 0;
  for (const s of streams) longest = Math.max(longest, s.tokens);
  const st = new SchScratch(idSpace, Math.min(m, longest));
  let warm = 0;
  let cold = 0;
  let accesses = 0;
  for (const s of streams) {
    const h = schReplay(s.ids, s.tokens, s.width, m, cap, st);
    warm += h.warm;
    cold += h.cold;
    accesses += s.tokens * s.width;
  }
  return { warm: warm / accesses, cold: cold / accesses };
}

/** SCH(m, C) per layer (cache of C) and at model level (pooled ids, cache C * layers). */
export function sch(r: RoutingData, m: number, C: number): SchResult {
  if (!Number.isInteger(m) || m < 1) throw new RangeError(`segment length must be a positive integer, got ${m}`);
  checkCap(C);
  const v = views(r);
  const out: SchResult = { layers: [], model: NaN, cold: { layers: [], model: NaN } };
  for (let l = 0; l < r.layers; l++) {
    const h = schStreams(v.perLayer[l]!, r.experts, m, C);
    out.layers.push(h.warm);
    out.cold.layers.push(h.cold);
  }
  const h = schStreams(v.pooled, r.layers * r.experts, m, C * r.layers);
  out.model = h.warm;
  out.cold.model = h.cold;
  return out;
}

// ---------------------------------------------------------------- baselines

/** A binary min-heap of ids ordered by (key1, key2), with each id's position so keys can change. */
class IndexedHeap {
  readonly key1: Float64Array;
  readonly key2: Float64Array;
  private readonly heap: Int32Array;
  private readonly pos: Int32Array;
  size = 0;

  constructor(idSpace: number) {
    this.key1 = new Float64Array(idSpace);
    this.key2 = new Float64Array(idSpace);
    this.heap = new Int32Array(idSpace);
    this.pos = new Int32Array(idSpace).fill(-1);
  }

  clear(): void {
    for (let i = 0; i < this.size; i++) this.pos[this.heap[i]!] = -1;
    this.size = 0;
  }

  private less(a: number, b: number): boolean {
    const a1 = this.key1[a]!;
    const b1 = this.key1[b]!;
    if (a1 !== b1) return a1 < b1;
    return this.key2[a]! < this.key2[b]!;
  }

  private place(i: number, e: number): void {
    this.heap[i] = e;
    this.pos[e] = i;
  }

  private up(i: number): void {
    const e = this.heap[i]!;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const pe = this.heap[p]!;
      if (!this.less(e, pe)) break;
      this.place(i, pe);
      i = p;
    }
    this.place(i, e);
  }

  private down(i: number): void {
    const e = this.heap[i]!;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= this.size) break;
      if (c + 1 < this.size && this.less(this.heap[c + 1]!, this.heap[c]!)) c++;
      const ce = this.heap[c]!;
      if (!this.less(ce, e)) break;
      this.place(i, ce);
      i = c;
    }
    this.place(i, e);
  }

  push(e: number): void {
    this.place(this.size++, e);
    this.up(this.size - 1);
  }

  /** Call after changing e's keys. */
  update(e: number): void {
    const i = this.pos[e]!;
    this.up(i);
    this.down(this.pos[e]!);
  }

  pop(): number {
    const top = this.heap[0]!;
    this.pos[top] = -1;
    const last = this.heap[--this.size]!;
    if (this.size > 0) {
      this.place(0, last);
      this.down(0);
    }
    return top;
  }
}

/** Replays streams under one policy with `cap` entries; hits counted warm and cold, and accesses. */
export function replayPolicy(streams: readonly AccessStream[], idSpace: number, policy: CachePolicy, cap: number): { warm: number; cold: number; accesses: number } {
  checkCap(cap);
  const used = new Uint8Array(idSpace);
  const cached = new Uint8Array(idSpace);
  let warm = 0;
  let cold = 0;
  let accesses = 0;
  // LRU: a doubly linked list, least recent at the head.
  const prev = new Int32Array(idSpace);
  const next = new Int32Array(idSpace);
  let head = -1;
  let tail = -1;
  const unlink = (e: number) => {
    const p = prev[e]!;
    const n = next[e]!;
    if (p < 0) head = n;
    else next[p] = n;
    if (n < 0) tail = p;
    else prev[n] = p;
  };
  const append = (e: number) => {
    prev[e] = tail;
    next[e] = -1;
    if (tail < 0) head = e;
    else next[tail] = e;
    tail = e;
  };
  // LFU: (frequency, last use) min-heap. MIN: (-next use, last use) min-heap: farthest next use first,
  // never-used-again experts (next use = +inf) before all, least recent among equals.
  const heap = policy === 'lru' ? null : new IndexedHeap(idSpace);
  const freq = policy === 'lfu' ? new Float64Array(idSpace) : null;
  for (const s of streams) {
    const { ids, tokens, width } = s;
    const n = tokens * width;
    used.fill(0);
    cached.fill(0);
    head = tail = -1;
    heap?.clear();
    freq?.fill(0);
    let nextUse: Float64Array | null = null;
    if (policy === 'belady') {
      nextUse = new Float64Array(n);
      const seen = new Float64Array(idSpace).fill(Infinity);
      for (let i = n - 1; i >= 0; i--) {
        const e = ids[i]!;
        nextUse[i] = seen[e]!;
        seen[e] = i;
      }
    }
    let distinct = 0;
    let size = 0;
    for (let i = 0; i < n; i++) {
      const e = ids[i]!;
      const hit = cached[e] === 1;
      if (hit) {
        warm++;
        cold++;
      } else if (!used[e]) {
        if (distinct < cap) warm++;
        used[e] = 1;
        distinct++;
      }
      if (!hit && size === cap) {
        // Evict before inserting e: the same as inserting and evicting the lowest other than e.
        let victim: number;
        if (heap) victim = heap.pop();
        else {
          victim = head;
          unlink(victim);
        }
        cached[victim] = 0;
        size--;
      }
      if (heap) {
        if (freq) {
          heap.key1[e] = ++freq[e]!;
          heap.key2[e] = i;
        } else {
          heap.key1[e] = -nextUse![i]!;
          heap.key2[e] = i;
        }
        if (hit) heap.update(e);
        else heap.push(e);
      } else {
        if (hit) unlink(e);
        append(e);
      }
      if (!hit) {
        cached[e] = 1;
        size++;
      }
    }
    accesses += n;
  }
  return { warm, cold, accesses };
}

/** Hit rates of one policy with C experts per layer (per layer) and C * layers shared (model), warm and cold. */
export function policyHitRates(r: RoutingData, policy: CachePolicy, C: number): HitRates {
  checkCap(C);
  const v = views(r);
  const out: HitRates = { warm: { layers: [], model: NaN }, cold: { layers: [], model: NaN } };
  for (let l = 0; l < r.layers; l++) {
    const h = replayPolicy(v.perLayer[l]!, r.experts, policy, C);
    out.warm.layers.push(h.warm / h.accesses);
    out.cold.layers.push(h.cold / h.accesses);
  }
  const h = replayPolicy(v.pooled, r.layers * r.experts, policy, C * r.layers);
  out.warm.model = h.warm / h.accesses;
  out.cold.model = h.cold / h.accesses;
  return out;
}

/** One shared cache of `capTotal` experts over all layers (ids layer * E + e): hits and accesses. */
export function sharedCacheReplay(r: RoutingData, policy: CachePolicy, capTotal: number): { warm: number; cold: number; accesses: number } {
  return replayPolicy(views(r).pooled, r.layers * r.experts, policy, capTotal);
}

/** Expert usage: counts[l][e] = number of tokens whose layer-l selection contains e. */
export function expertUsage(r: RoutingData): number[][] {
  const { layers: L, experts: E, k } = r;
  const counts = Array.from({ length: L }, () => new Array<number>(E).fill(0));
  for (const s of r.sequences) {
    for (let i = 0; i < s.ids.length; i++) counts[Math.floor(i / k) % L]![s.ids[i]!]!++;
  }
  return counts;
}

/**
 * LRU reuse distances (cold counting): hist[d] = accesses whose previous use of the same expert in the
 * sequence was d distinct other experts ago; first uses are counted in `firstUses`. LRU is a stack
 * algorithm, so a cache of `cap` hits exactly the accesses with d < cap: one pass gives every size.
 */
export interface ReuseHistogram {
  hist: Float64Array;
  firstUses: number;
  accesses: number;
}

function reuseHistogram(streams: readonly AccessStream[], idSpace: number): ReuseHistogram {
  const hist = new Float64Array(idSpace);
  const last = new Int32Array(idSpace);
  let firstUses = 0;
  let accesses = 0;
  for (const s of streams) {
    const n = s.tokens * s.width;
    // Fenwick tree over positions: 1 where a position is the latest use of its expert.
    const tree = new Int32Array(n + 1);
    const add = (i: number, d: number) => {
      for (i++; i <= n; i += i & -i) tree[i]! += d;
    };
    const prefix = (i: number) => {
      let sum = 0;
      for (i++; i > 0; i -= i & -i) sum += tree[i]!;
      return sum;
    };
    last.fill(-1);
    for (let i = 0; i < n; i++) {
      const e = s.ids[i]!;
      const p = last[e]!;
      if (p < 0) firstUses++;
      else {
        hist[prefix(i - 1) - prefix(p)]!++;
        add(p, -1);
      }
      add(i, 1);
      last[e] = i;
    }
    accesses += n;
  }
  return { hist, firstUses, accesses };
}

/** Cold LRU hit rate of a cache of `cap` entries from a reuse histogram. */
export function lruHitRateFromReuse(h: ReuseHistogram, cap: number): number {
  let hits = 0;
  for (let d = 0; d < Math.min(cap, h.hist.length); d++) hits += h.hist[d]!;
  return hits / h.accesses;
}

/** Reuse histograms per layer (ids of one layer) and for the shared pooled cache ("model"). */
export function lruReuse(r: RoutingData): { layers: ReuseHistogram[]; model: ReuseHistogram } {
  const v = views(r);
  return {
    layers: v.perLayer.map((streams) => reuseHistogram(streams, r.experts)),
    model: reuseHistogram(v.pooled, r.layers * r.experts),
  };
}
