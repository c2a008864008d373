// The RAM tier: expert weights in SharedArrayBuffer slots (so any worker reads them without a copy),
// least-recently-used order from lru-cache, a byte budget that is never exceeded, and pins: an expert
// in use cannot be evicted. The hit/miss decision is made in one place, lookup(), for both the live
// cache (backing 'shared') and the accounting-only one (backing 'none') that `simulate` uses, so live
// and simulated hit rates agree.
import { LRUCache } from 'lru-cache';
import { UsageError } from '../model/errors.js';
import { EXPERT_MATRICES, type ExpertMatrix } from './locator.js';
import { SlotAllocator, type Backing, type Slot } from './slab.js';
import { formatBytes } from './size.js';
import { DIRECT_IO_ALIGNMENT } from '../native/io.js';

/** Each matrix starts on this boundary inside a slot (cache lines / SIMD loads) in the compact layout. */
export const MATRIX_ALIGNMENT = 64;

/**
 * Block size of direct reads (native/io.ts). In the direct-read layout every matrix has a region
 * of its own, big enough for the block-aligned file range covering it, and sits in that region at an
 * address congruent to its file offset mod this: O_DIRECT then reads straight into the slot, with no
 * bounce buffer and no copy (the CPU that copy burns is the compute's).
 */
export const DIRECT_READ_ALIGNMENT = DIRECT_IO_ALIGNMENT;
/** The direct-read layout is used when its padding costs at most this fraction of the expert's bytes. */
export const DIRECT_LAYOUT_MAX_OVERHEAD = 0.01;

/** Sizes of the experts, per layer; an ExpertLocator is one. */
export interface ExpertSizes {
  readonly layers: number;
  readonly expertCount: number;
  hasExperts(layer: number): boolean;
  /** offset: the matrix's position in the model file (an ExpertLocator gives it; absent means 0). */
  expertRange(layer: number, expert: number): Record<ExpertMatrix, { byteLength: number; offset?: number }>;
}

/** Experts of one size in every layer (for simulations and tests). */
export function uniformExpertSizes(layers: number, expertCount: number, bytes: Record<ExpertMatrix, number>): ExpertSizes {
  const range = { gate: { byteLength: bytes.gate }, up: { byteLength: bytes.up }, down: { byteLength: bytes.down } };
  return { layers, expertCount, hasExperts: () => true, expertRange: () => range };
}

export function expertKey(layer: number, expert: number, expertCount: number): number {
  return layer * expertCount + expert;
}

/** Where the three matrices sit inside a slot, relative to the slot's start. */
export interface SlotLayout {
  /** Compact layout: where each matrix is. Direct-read layout: where it is when its file offset and the
   * slot's address are multiples of DIRECT_READ_ALIGNMENT (HostCache places each entry's matrices). */
  readonly matrices: Record<ExpertMatrix, { offset: number; byteLength: number }>;
  /** Direct-read layout only: each matrix's region, before the slot's shift to an aligned address. */
  readonly regions?: Record<ExpertMatrix, { offset: number; byteLength: number }>;
  /** Expert bytes (the three matrices, no padding). */
  readonly expertBytes: number;
  /** Bytes the layout spans: padded to MATRIX_ALIGNMENT (compact), or to DIRECT_READ_ALIGNMENT plus
   * one block per region and one for the shift (direct-read). */
  readonly slotBytes: number;
}

const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to;

/** The direct-read layout where its padding is cheap (DIRECT_LAYOUT_MAX_OVERHEAD), else the compact one. */
export function slotLayout(sizes: Record<ExpertMatrix, { byteLength: number }>): SlotLayout {
  let at = 0;
  let expertBytes = 0;
  const matrices = {} as Record<ExpertMatrix, { offset: number; byteLength: number }>;
  for (const m of EXPERT_MATRICES) {
    const byteLength = sizes[m].byteLength;
    matrices[m] = { offset: at, byteLength };
    expertBytes += byteLength;
    at += roundUp(byteLength, MATRIX_ALIGNMENT);
  }
  const compact: SlotLayout = { matrices, expertBytes, slotBytes: Math.max(at, MATRIX_ALIGNMENT) };
  // Direct-read layout: [shift < A][gate region][up region][down region], each region a whole number
  // of blocks with one block to spare, so the covering range of a matrix at any file offset fits.
  const A = DIRECT_READ_ALIGNMENT;
  let r = 0;
  const regions = {} as Record<ExpertMatrix, { offset: number; byteLength: number }>;
  const direct = {} as Record<ExpertMatrix, { offset: number; byteLength: number }>;
  for (const m of EXPERT_MATRICES) {
    const byteLength = sizes[m].byteLength;
    regions[m] = { offset: r, byteLength: roundUp(byteLength, A) + A };
    direct[m] = { offset: r, byteLength };
    r += regions[m].byteLength;
  }
  const slotBytes = A + r;
  if (expertBytes === 0 || slotBytes - compact.slotBytes > DIRECT_LAYOUT_MAX_OVERHEAD * expertBytes) return compact;
  return { matrices: direct, regions, expertBytes, slotBytes };
}

/** Each layer's slot layout (from its expert 0: a layer's experts are all one size); undefined for a dense layer. */
function layerLayouts(experts: ExpertSizes): (SlotLayout | undefined)[] {
  return Array.from({ length: experts.layers }, (_, l) => (experts.hasExperts(l) ? slotLayout(experts.expertRange(l, 0)) : undefined));
}

function largestSlot(layouts: readonly (SlotLayout | undefined)[]): number {
  return layouts.reduce((max, layout) => Math.max(max, layout?.slotBytes ?? 0), 0);
}

/** The slot size a HostCache uses for these experts (the largest padded expert), without allocating anything. */
export function slotBytesOf(experts: ExpertSizes): number {
  return largestSlot(layerLayouts(experts));
}

/**
 * The smallest budget that holds `inUse` experts pinned at once (for a decode step: the k experts of
 * one layer), given the slot size (an expert's bytes padded as slotLayout() does).
 */
export function minimumBudget(slotBytes: number, inUse: number): number {
  return slotBytes * Math.max(1, inUse);
}

/** A resident (or loading) expert. Pinned while someone uses it; read its weights with matrixView(). */
export interface HostEntry {
  readonly key: number;
  readonly layer: number;
  readonly expert: number;
  readonly slot: Slot;
  /** Absolute byte ranges inside slot.buffer. */
  readonly ranges: Record<ExpertMatrix, { offset: number; byteLength: number }>;
  /** Direct-read layout only: each matrix's region inside slot.buffer (absolute), which holds its range
   * and the block-aligned file range covering it (what a loader may fill with PositionedFile.readIntoRegion). */
  readonly regions?: Record<ExpertMatrix, { offset: number; byteLength: number }>;
}

/** A view of one matrix's bytes in the shared slab (no copy). Throws for an accounting-only cache. */
export function matrixView(entry: HostEntry, matrix: ExpertMatrix): Uint8Array {
  if (!entry.slot.buffer) throw new Error('an accounting-only cache (backing none) holds no weights');
  const r = entry.ranges[matrix];
  return new Uint8Array(entry.slot.buffer, r.offset, r.byteLength);
}

/** The whole slot as bytes (what a loader fills: each matrix at its range). */
export function slotView(entry: HostEntry): Uint8Array {
  if (!entry.slot.buffer) throw new Error('an accounting-only cache (backing none) holds no weights');
  return new Uint8Array(entry.slot.buffer, entry.slot.offset, entry.slot.byteLength);
}

class Entry implements HostEntry {
  readonly ranges: Record<ExpertMatrix, { offset: number; byteLength: number }>;
  readonly regions?: Record<ExpertMatrix, { offset: number; byteLength: number }>;
  /** Pins held; an entry with pins > 0 is never evicted. */
  pins = 0;
  loaded = false;
  /** Read by prefetch() and not yet looked up: a lookup counts it used, an eviction wasted. */
  prefetched = false;
  /** retirePrefetches() came while the read ran: dropped when it ends, unless looked up first. */
  retire = false;
  /** Settles when the load does; rejects (and the entry is gone) when the load fails. */
  ready: Promise<void> = Promise.resolve();
  constructor(readonly key: number, readonly layer: number, readonly expert: number, readonly slot: Slot, layout: SlotLayout,
    fileRange: () => Record<ExpertMatrix, { offset?: number }>) {
    const r = {} as Record<ExpertMatrix, { offset: number; byteLength: number }>;
    if (!layout.regions) {
      for (const m of EXPERT_MATRICES) r[m] = { offset: slot.offset + layout.matrices[m].offset, byteLength: layout.matrices[m].byteLength };
      this.ranges = r;
      return;
    }
    // Shift the regions to an aligned address, then put each matrix at its file offset mod the block.
    const A = DIRECT_READ_ALIGNMENT;
    const base = slot.offset + (A - (slot.pageOffset + slot.offset) % A) % A;
    const file = fileRange();
    const g = {} as Record<ExpertMatrix, { offset: number; byteLength: number }>;
    for (const m of EXPERT_MATRICES) {
      const region = layout.regions[m];
      g[m] = { offset: base + region.offset, byteLength: region.byteLength };
      r[m] = { offset: base + region.offset + (file[m].offset ?? 0) % A, byteLength: layout.matrices[m].byteLength };
    }
    this.ranges = r;
    this.regions = g;
  }
}

export interface CacheCounters {
  hits: number;
  misses: number;
  evictions: number;
  /** Expert bytes (unpadded) inserted on misses. */
  insertedBytes: number;
  /** Loads that failed (the entry was dropped and its slot freed). */
  failedLoads: number;
}

/** Reads started by prefetch(); a failed one counts in CacheCounters.failedLoads too. */
export interface PrefetchCounters {
  issued: number;
  /** Of those: looked up afterwards (a hit), or evicted or failed before any lookup. */
  used: number;
  wasted: number;
  /** Expert bytes (unpadded) that prefetch reads completed. */
  bytes: number;
}

export interface CacheStats {
  total: CacheCounters;
  /** Indexed by layer. */
  layers: CacheCounters[];
  prefetch: { total: PrefetchCounters; layers: PrefetchCounters[] };
}

const zero = (): CacheCounters => ({ hits: 0, misses: 0, evictions: 0, insertedBytes: 0, failedLoads: 0 });
const zeroPrefetch = (): PrefetchCounters => ({ issued: 0, used: 0, wasted: 0, bytes: 0 });

export interface HostCacheOptions {
  budgetBytes: number;
  experts: ExpertSizes;
  /** 'shared' (default): SharedArrayBuffer slabs; 'none': sizes and LRU order only (simulation). */
  backing?: Backing;
  /** Experts pinned at once in normal use (k); the constructor rejects a budget that cannot hold them. */
  expertsInUse?: number;
  slabBytes?: number;
}

export class HostCache {
  readonly budgetBytes: number;
  readonly backing: Backing;
  readonly expertCount: number;
  /** Every slot has this size: the largest padded expert over all layers. */
  readonly slotBytes: number;
  private readonly layouts: (SlotLayout | undefined)[];
  private readonly experts: ExpertSizes;
  private readonly allocator: SlotAllocator;
  // Holds every resident and loading entry. Its size-based eviction never fires: takeSlot() makes
  // room first, and maxSize = allocator.maxSlots * slotBytes. dispose returns the slot to the allocator.
  private readonly lru: LRUCache<number, Entry>;
  private readonly counters: CacheCounters[];
  private readonly totals = zero();
  private readonly prefetchCounters: PrefetchCounters[];
  private readonly prefetchTotals = zeroPrefetch();
  /** Prefetched entries whose read is still running: unpinned, yet not evictable (the read writes into the slot). */
  private readonly prefetching = new Set<Entry>();
  /** Entries with `prefetched` set: read (or being read) by prefetch(), not looked up since. */
  private readonly unused = new Set<Entry>();

  constructor(opts: HostCacheOptions) {
    const { experts } = opts;
    this.budgetBytes = opts.budgetBytes;
    this.backing = opts.backing ?? 'shared';
    this.expertCount = experts.expertCount;
    this.experts = experts;
    this.layouts = layerLayouts(experts);
    const slotBytes = largestSlot(this.layouts);
    if (slotBytes === 0) throw new RangeError('no layer has experts');
    this.slotBytes = slotBytes;
    const inUse = Math.max(1, opts.expertsInUse ?? 1);
    const min = minimumBudget(slotBytes, inUse);
    if (!(opts.budgetBytes >= min)) {
      const what = inUse === 1 ? 'one expert' : `the ${inUse} experts one layer uses at once`;
      throw new UsageError(`RAM cache budget ${formatBytes(Math.max(0, opts.budgetBytes || 0))} cannot hold ${what} (${formatBytes(slotBytes)} each); the minimum is ${formatBytes(min)}`,
        `give --ram-cache ${min} or more`);
    }
    this.allocator = new SlotAllocator({ slotBytes, budgetBytes: Math.floor(opts.budgetBytes), backing: this.backing, ...(opts.slabBytes ? { slabBytes: opts.slabBytes } : {}) });
    this.counters = Array.from({ length: experts.layers }, zero);
    this.prefetchCounters = Array.from({ length: experts.layers }, zeroPrefetch);
    this.lru = new LRUCache<number, Entry>({
      maxSize: this.allocator.maxSlots * slotBytes,
      sizeCalculation: () => slotBytes,
      dispose: (entry) => this.allocator.release(entry.slot),
      noDisposeOnSet: true,
    });
  }

  /** Most experts resident at once. */
  get capacity(): number { return this.allocator.maxSlots; }
  get size(): number { return this.lru.size; }
  /** Bytes of slabs allocated (or, with backing 'none', that would be). */
  get allocatedBytes(): number { return this.allocator.allocatedBytes; }
  get sharedArrayBufferBytes(): number { return this.allocator.sharedArrayBufferBytes; }
  get pinnedCount(): number {
    let n = 0;
    for (const e of this.lru.values()) if (e.pins > 0) n++;
    return n;
  }

  has(layer: number, expert: number): boolean {
    return this.lru.has(expertKey(layer, expert, this.expertCount));
  }

  /**
   * The expert, pinned for the caller (release it when done). A miss takes a slot (evicting the
   * least-recently-used unpinned experts if needed) and calls `load` to fill it; concurrent calls
   * for the same expert share that one load. If the load fails, the slot is freed and every caller
   * waiting on it gets the error (none holds a pin afterwards).
   */
  async getOrLoad(layer: number, expert: number, load: (entry: HostEntry) => Promise<void>): Promise<HostEntry> {
    return await this.pinOrLoad(layer, expert, load);
  }

  /**
   * getOrLoad without a wait where none is needed: an expert resident and loaded comes back pinned at
   * once; otherwise the promise getOrLoad gives. The lookup, the pin and the start of the load happen
   * synchronously, in the call, either way (same counters, same LRU order).
   */
  pinOrLoad(layer: number, expert: number, load: (entry: HostEntry) => Promise<void>): HostEntry | Promise<HostEntry> {
    // A miss with every slot pinned or being filled by a prefetch: wait for one of those reads, then look up
    // again (without prefetches this cannot happen where takeSlot would not throw its budget error anyway).
    if (this.prefetching.size > 0 && !this.lru.has(expertKey(layer, expert, this.expertCount)) && !this.canTakeSlot()) {
      const reads = [...this.prefetching].map((e) => e.ready.then(() => undefined, () => undefined));
      return Promise.race(reads).then(() => this.pinOrLoad(layer, expert, load));
    }
    const { entry, hit } = this.lookup(layer, expert);
    entry.pins++;
    if (hit && entry.loaded) return entry;
    if (!hit) entry.ready = this.runLoad(entry, load);
    return entry.ready.then(() => entry);
  }

  /**
   * Starts reading an expert that is expected to be used soon, without counting a hit or a miss and
   * without a pin: it takes a free slot, or the least-recently-used unpinned expert's, as a miss would,
   * but never one of `spare`'s layers (the caller's current layer) and never where it would have to wait.
   * An expert already resident (or loading) is only marked recently used. Returns whether a read started.
   * A failed read never throws: the entry is dropped (counted failed and wasted) and a later lookup misses.
   */
  prefetch(layer: number, expert: number, load: (entry: HostEntry) => Promise<void>, spare: readonly number[] = []): boolean {
    const layout = this.layouts[layer];
    if (!layout || !Number.isInteger(expert) || expert < 0 || expert >= this.expertCount) return false;
    const key = expertKey(layer, expert, this.expertCount);
    if (this.lru.get(key)) return false; // marks it most recently used
    let slot: Slot | undefined;
    if (this.allocator.canAlloc()) {
      slot = this.allocator.alloc();
    } else {
      const victim = this.findVictim((e) => !spare.includes(e.layer));
      if (!victim) return false;
      this.evict(victim);
      slot = this.allocator.alloc();
    }
    if (!slot) return false;
    const entry = new Entry(key, layer, expert, slot, layout, () => this.experts.expertRange(layer, expert));
    entry.prefetched = true;
    this.lru.set(key, entry);
    this.prefetching.add(entry);
    this.unused.add(entry);
    const c = this.prefetchCounters[layer]!;
    c.issued++;
    this.prefetchTotals.issued++;
    entry.ready = this.runLoad(entry, load).then(() => {
      c.bytes += layout.expertBytes;
      this.prefetchTotals.bytes += layout.expertBytes;
    }).finally(() => {
      this.prefetching.delete(entry);
      if (entry.retire) this.retire(entry);
    });
    // Marked handled: a failure reaches only lookups that joined this read (they report it as a failed load).
    entry.ready.catch(() => undefined);
    return true;
  }

  /**
   * Drops the prefetched experts of `layer` that its lookups did not use (a misprediction), once their
   * reads end: left in place they would hold a slot for a whole LRU lifetime, pushing out experts that
   * are used. Call it right after the layer's experts were looked up.
   */
  retirePrefetches(layer: number): void {
    for (const e of [...this.unused]) {
      if (e.layer !== layer) continue;
      if (this.prefetching.has(e)) e.retire = true;
      else this.retire(e);
    }
  }

  private retire(e: Entry): void {
    e.retire = false;
    if (e.prefetched && e.pins === 0 && this.lru.peek(e.key) === e) this.evict(e);
  }

  /** Settles once every prefetch read under way has (never rejects). */
  async prefetchesSettled(): Promise<void> {
    while (this.prefetching.size > 0) await Promise.allSettled([...this.prefetching].map((e) => e.ready));
  }

  /**
   * Simulation (backing 'none' only): one access, as getOrLoad + release would do it, synchronously.
   * Returns true on a hit. Matches a live run that pins only the current layer's experts and requests
   * them in the same order: with room for k slots, LRU never evicts any of the k most recent anyway.
   */
  access(layer: number, expert: number): boolean {
    if (this.backing !== 'none') throw new Error('access() is for accounting-only caches; use getOrLoad()');
    const { entry, hit } = this.lookup(layer, expert);
    entry.loaded = true;
    return hit;
  }

  /** Pins an expert that is resident and loaded (marking it recently used); undefined otherwise. No hit/miss is counted. */
  acquire(key: number): HostEntry | undefined {
    const e = this.lru.get(key);
    if (!e || !e.loaded) return undefined;
    e.pins++;
    return e;
  }

  release(keyOrEntry: number | HostEntry): void {
    const key = typeof keyOrEntry === 'number' ? keyOrEntry : keyOrEntry.key;
    const e = this.lru.peek(key);
    if (!e || e.pins <= 0) throw new Error(`release of expert key ${key} that is not pinned`);
    e.pins--;
  }

  stats(): CacheStats {
    return { total: { ...this.totals }, layers: this.counters.map((c) => ({ ...c })),
      prefetch: { total: { ...this.prefetchTotals }, layers: this.prefetchCounters.map((c) => ({ ...c })) } };
  }

  /** THE hit/miss decision, shared by getOrLoad() and access(). A loading entry counts as a hit (no second read). */
  private lookup(layer: number, expert: number): { entry: Entry; hit: boolean } {
    const layout = this.layouts[layer];
    if (!layout) throw new RangeError(`layer ${layer} has no experts`);
    if (!Number.isInteger(expert) || expert < 0 || expert >= this.expertCount) throw new RangeError(`expert ${expert} out of range`);
    const key = expertKey(layer, expert, this.expertCount);
    const found = this.lru.get(key); // marks it most recently used
    const c = this.counters[layer]!;
    if (found) {
      c.hits++;
      this.totals.hits++;
      if (found.prefetched) {
        found.prefetched = false;
        found.retire = false;
        this.unused.delete(found);
        this.prefetchCounters[layer]!.used++;
        this.prefetchTotals.used++;
      }
      return { entry: found, hit: true };
    }
    const slot = this.takeSlot(layer);
    const entry = new Entry(key, layer, expert, slot, layout, () => this.experts.expertRange(layer, expert));
    this.lru.set(key, entry);
    c.misses++;
    this.totals.misses++;
    c.insertedBytes += layout.expertBytes;
    this.totals.insertedBytes += layout.expertBytes;
    return { entry, hit: false };
  }

  /** A free slot: a fresh one while the budget allows, else the least-recently-used unpinned expert's. */
  private takeSlot(layer: number): Slot {
    // Invariant: entries in lru == used slots; used + free slot bytes == allocated slab bytes <= budget.
    if (!this.allocator.canAlloc()) {
      const victim = this.findVictim();
      if (!victim) {
        const pinned = this.lru.size;
        const min = minimumBudget(this.slotBytes, pinned + 1);
        throw new UsageError(
          `RAM cache budget ${formatBytes(this.budgetBytes)} is full with ${pinned} experts all in use, and layer ${layer} needs one more; the minimum for ${pinned + 1} experts in use at once is ${formatBytes(min)}`,
          `give --ram-cache ${min} or more`);
      }
      this.evict(victim);
    }
    const slot = this.allocator.alloc();
    if (!slot) throw new Error('slot allocator full after making room'); // cannot happen: see canAlloc()
    return slot;
  }

  /** The least-recently-used entry that is unpinned, not being filled by a prefetch, and `allowed`. */
  private findVictim(allowed: (e: Entry) => boolean = () => true): Entry | undefined {
    for (const key of this.lru.rkeys()) { // least recently used first
      const e = this.lru.peek(key)!;
      if (e.pins === 0 && !this.prefetching.has(e) && allowed(e)) return e;
    }
    return undefined;
  }

  private canTakeSlot(): boolean {
    return this.allocator.canAlloc() || this.findVictim() !== undefined;
  }

  private evict(victim: Entry): void {
    this.lru.delete(victim.key); // dispose() frees the slot
    this.counters[victim.layer]!.evictions++;
    this.totals.evictions++;
    if (victim.prefetched) this.countWasted(victim);
  }

  private countWasted(entry: Entry): void {
    entry.prefetched = false;
    this.unused.delete(entry);
    this.prefetchCounters[entry.layer]!.wasted++;
    this.prefetchTotals.wasted++;
  }

  private runLoad(entry: Entry, load: (entry: HostEntry) => Promise<void>): Promise<void> {
    return (async () => { await load(entry); })().then(
      () => { entry.loaded = true; },
      (err: unknown) => {
        // Drop the entry so no one finds half-filled weights; its pins die with it.
        entry.pins = 0;
        if (this.lru.peek(entry.key) === entry) this.lru.delete(entry.key);
        if (entry.prefetched) this.countWasted(entry);
        this.counters[entry.layer]!.failedLoads++;
        this.totals.failedLoads++;
        throw err;
      });
  }

  /** Throws if the accounting is inconsistent (tests and debug runs call it after operations). */
  checkInvariants(): void {
    this.allocator.checkInvariants();
    const fail = (what: string) => { throw new Error(`host cache invariant broken: ${what}`); };
    if (this.lru.size !== this.allocator.usedSlots) fail(`${this.lru.size} entries but ${this.allocator.usedSlots} used slots`);
    if (this.lru.calculatedSize !== this.lru.size * this.slotBytes) fail('lru size differs from slot bytes');
    if (this.allocator.allocatedBytes > this.budgetBytes) fail('allocated past the budget');
    const seen = new Set<number>();
    for (const e of this.prefetching) if (this.lru.peek(e.key) !== e) fail(`prefetch of ${e.key} loading outside the cache`);
    for (const e of this.unused) if (this.lru.peek(e.key) !== e || !e.prefetched) fail(`unused prefetch of ${e.key} outside the cache`);
    for (const e of this.lru.values()) {
      if (e.pins < 0) fail(`negative pins on ${e.key}`);
      if (seen.has(e.slot.index)) fail(`slot ${e.slot.index} held twice`);
      seen.add(e.slot.index);
    }
  }
}
