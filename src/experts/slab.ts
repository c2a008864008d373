// Fixed-size slots carved out of SharedArrayBuffer slabs, for the RAM expert cache. All experts of a
// model (nearly always) have one byte size, so one slot size never fragments: a freed slot fits the
// next expert exactly. Slabs are allocated lazily, so memory grows only as the cache fills, and never
// past the budget. With backing 'none' nothing is allocated but every count is kept the same way, so a
// simulation makes exactly the decisions a live run makes.
import { UsageError } from '../model/errors.js';
import { pageOffsetOf } from '../native/io.js';
import { formatBytes } from './size.js';

export type Backing = 'shared' | 'none';

/** One slot: bytes [offset, offset + byteLength) of `buffer` (null when backing is 'none'). */
export interface Slot {
  /** 0 .. maxSlots-1, unique while the slot is allocated. */
  readonly index: number;
  readonly buffer: SharedArrayBuffer | null;
  readonly offset: number;
  readonly byteLength: number;
  /** The buffer's start address mod 4096 (0 when there is no buffer): where direct reads can land without a copy. */
  readonly pageOffset: number;
}

export const DEFAULT_SLAB_BYTES = 64 * 2 ** 20;

export interface SlotAllocatorOptions {
  /** Bytes of one slot (the caller rounds it to the alignment it needs; slot offsets are multiples of it). */
  slotBytes: number;
  budgetBytes: number;
  backing?: Backing;
  /** Target slab size; a slot larger than this gets a slab of its own. */
  slabBytes?: number;
}

export class SlotAllocator {
  readonly slotBytes: number;
  readonly budgetBytes: number;
  readonly backing: Backing;
  /** floor(budget / slotBytes): the most slots that fit in the budget. */
  readonly maxSlots: number;
  private readonly slotsPerSlab: number;
  private readonly slots: Slot[] = []; // every slot created so far, by index
  private readonly free: number[] = []; // indices, used as a stack (reuse the most recently freed: warm pages)
  private readonly isFree: Uint8Array;
  private slabs = 0;
  private sharedBytes = 0;

  constructor(opts: SlotAllocatorOptions) {
    const { slotBytes, budgetBytes } = opts;
    if (!Number.isSafeInteger(slotBytes) || slotBytes <= 0) throw new RangeError(`bad slot size ${slotBytes}`);
    if (!Number.isSafeInteger(budgetBytes) || budgetBytes < 0) throw new RangeError(`bad budget ${budgetBytes}`);
    this.slotBytes = slotBytes;
    this.budgetBytes = budgetBytes;
    this.backing = opts.backing ?? 'shared';
    this.maxSlots = Math.floor(budgetBytes / slotBytes);
    this.slotsPerSlab = Math.max(1, Math.floor((opts.slabBytes ?? DEFAULT_SLAB_BYTES) / slotBytes));
    this.isFree = new Uint8Array(this.maxSlots);
  }

  // Invariant (checkInvariants): usedSlots + freeSlots == createdSlots, and
  // createdSlots * slotBytes == allocatedBytes <= maxSlots * slotBytes <= budgetBytes.

  /** Slots created so far (in use or free). */
  get createdSlots(): number { return this.slots.length; }
  get freeSlots(): number { return this.free.length; }
  get usedSlots(): number { return this.slots.length - this.free.length; }
  /** Bytes of all slabs created so far (counted in 'none' mode too, as if allocated). */
  get allocatedBytes(): number { return this.slots.length * this.slotBytes; }
  /** Bytes of SharedArrayBuffer actually allocated (0 with backing 'none'). */
  get sharedArrayBufferBytes(): number { return this.sharedBytes; }
  get slabCount(): number { return this.slabs; }

  /** True when alloc() would succeed without a free(). */
  canAlloc(): boolean {
    return this.free.length > 0 || this.slots.length < this.maxSlots;
  }

  /** A free slot, growing by one slab when none is free and the budget allows; undefined when full. */
  alloc(): Slot | undefined {
    if (this.free.length === 0 && this.slots.length < this.maxSlots) this.grow();
    const index = this.free.pop();
    if (index === undefined) return undefined;
    this.isFree[index] = 0;
    return this.slots[index]!;
  }

  release(slot: Slot): void {
    if (this.slots[slot.index] !== slot || this.isFree[slot.index]) throw new Error(`slot ${slot.index} freed twice or not from this allocator`);
    this.isFree[slot.index] = 1;
    this.free.push(slot.index);
  }

  private grow(): void {
    const count = Math.min(this.slotsPerSlab, this.maxSlots - this.slots.length);
    const bytes = count * this.slotBytes;
    let buffer: SharedArrayBuffer | null = null;
    let pageOffset = 0;
    if (this.backing === 'shared') {
      try {
        buffer = new SharedArrayBuffer(bytes);
      } catch (err) {
        throw new UsageError(`cannot allocate ${formatBytes(bytes)} for the RAM expert cache: ${err instanceof Error ? err.message : String(err)}`,
          'give a smaller --ram-cache');
      }
      this.sharedBytes += bytes;
      pageOffset = pageOffsetOf(new Uint8Array(buffer, 0, 1));
    }
    this.slabs++;
    // Push in reverse so the stack hands out the slab's slots in address order.
    const first = this.slots.length;
    for (let i = 0; i < count; i++) {
      this.slots.push({ index: first + i, buffer, offset: i * this.slotBytes, byteLength: this.slotBytes, pageOffset });
    }
    for (let i = count - 1; i >= 0; i--) {
      this.free.push(first + i);
      this.isFree[first + i] = 1;
    }
  }

  /** Throws if the accounting is inconsistent (for tests and debug checks). */
  checkInvariants(): void {
    const fail = (what: string) => { throw new Error(`slot allocator invariant broken: ${what}`); };
    if (this.usedSlots < 0) fail('more free slots than created');
    if (this.allocatedBytes > this.maxSlots * this.slotBytes || this.maxSlots * this.slotBytes > this.budgetBytes) fail('allocated past the budget');
    if (this.sharedBytes !== (this.backing === 'shared' ? this.allocatedBytes : 0)) fail('SharedArrayBuffer bytes differ from slot bytes');
    let free = 0;
    for (let i = 0; i < this.slots.length; i++) free += this.isFree[i]!;
    if (free !== this.free.length) fail('free list and free marks differ');
  }
}
