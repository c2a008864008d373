import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../src/model/errors.js';
import { HostCache, expertKey, matrixView, minimumBudget, slotLayout, slotView, uniformExpertSizes, type HostEntry } from '../src/experts/host-cache.js';
import { SlotAllocator } from '../src/experts/slab.js';
import { formatBytes } from '../src/experts/size.js';
import { mulberry32 } from '../src/engine/prng.js';

// Hand layout: gate 100 bytes at 0 (padded to 128), up 100 at 128 (padded to 256), down 60 at 256
// (padded to 320): a slot is 320 bytes, an expert 260.
const BYTES = { gate: 100, up: 100, down: 60 };
const SLOT = 320;


/** Fills each matrix with bytes derived from (key, matrix), so a hit can check its weights survived. */
function fillPattern(entry: HostEntry): void {
  (['gate', 'up', 'down'] as const).forEach((m, mi) => {
    const v = matrixView(entry, m);
    for (let i = 0; i < v.length; i++) v[i] = (entry.key * 31 + mi * 7 + i) & 0xff;
  });
}
function checkPattern(entry: HostEntry): void {
  (['gate', 'up', 'down'] as const).forEach((m, mi) => {
    const v = matrixView(entry, m);
    for (let i = 0; i < v.length; i++) if (v[i] !== ((entry.key * 31 + mi * 7 + i) & 0xff)) assert.fail(`expert ${entry.key} ${m} byte ${i} overwritten`);
  });
}
const patternLoad = async (e: HostEntry) => { fillPattern(e); };

test('slotLayout pads each matrix to 64 bytes', () => {
  const l = slotLayout({ gate: { byteLength: 100 }, up: { byteLength: 100 }, down: { byteLength: 60 } });
  assert.deepEqual(l.matrices, { gate: { offset: 0, byteLength: 100 }, up: { offset: 128, byteLength: 100 }, down: { offset: 256, byteLength: 60 } });
  assert.equal(l.slotBytes, SLOT);
  assert.equal(l.expertBytes, 260);
  assert.equal(minimumBudget(SLOT, 8), 2560);
  assert.equal(expertKey(2, 5, 8), 21);
});

test('LRU order on a hand-worked sequence (capacity 3)', async () => {
  const cache = new HostCache({ budgetBytes: 3 * SLOT + SLOT - 1, experts: uniformExpertSizes(1, 8, BYTES) });
  assert.equal(cache.capacity, 3);
  const seq = [0, 1, 2, 0, 3, 1, 4, 0, 3];
  // cap 3: 0m 1m 2m | 0 hit (order 1,2,0) | 3 m evicts 1 | 1 m evicts 2 | 4 m evicts 0 | 0 m evicts 3 | 3 m evicts 1
  const wantHits = [false, false, false, true, false, false, false, false, false];
  const hits: boolean[] = [];
  for (const x of seq) {
    const before = cache.stats().total.hits;
    const e = await cache.getOrLoad(0, x, patternLoad);
    checkPattern(e);
    hits.push(cache.stats().total.hits > before);
    cache.release(e);
    cache.checkInvariants();
  }
  assert.deepEqual(hits, wantHits);
  assert.deepEqual([0, 1, 2, 3, 4].map((x) => cache.has(0, x)), [true, false, false, true, true]);
  const s = cache.stats();
  assert.deepEqual(s.total, { hits: 1, misses: 8, evictions: 5, insertedBytes: 8 * 260, failedLoads: 0 });
  assert.deepEqual(s.layers[0], s.total);
});

test('pinned experts are never evicted; a full pinned cache errors with the minimum', async () => {
  const cache = new HostCache({ budgetBytes: 2 * SLOT, experts: uniformExpertSizes(2, 8, BYTES) });
  const held = await cache.getOrLoad(0, 0, patternLoad); // pinned
  for (let x = 1; x < 6; x++) {
    cache.release(await cache.getOrLoad(1, x, patternLoad));
    assert.ok(cache.has(0, 0), 'pinned expert evicted');
    cache.checkInvariants();
  }
  checkPattern(held);
  assert.equal(cache.stats().layers[1]!.evictions, 4);
  assert.equal(cache.stats().layers[0]!.evictions, 0);
  const held2 = await cache.getOrLoad(1, 7, patternLoad);
  await assert.rejects(cache.getOrLoad(0, 3, patternLoad), (err: unknown) => {
    assert.ok(err instanceof UsageError);
    assert.ok(err.toLine().endsWith(`minimum for 3 experts in use at once is ${formatBytes(3 * SLOT)}; give --ram-cache ${3 * SLOT} or more`), err.toLine());
    return true;
  });
  cache.checkInvariants();
  // Releasing a pin makes room again; the released expert is the one evicted.
  cache.release(held);
  cache.release(await cache.getOrLoad(0, 3, patternLoad));
  assert.ok(!cache.has(0, 0) && cache.has(1, 7) && cache.has(0, 3));
  cache.release(held2);
  assert.throws(() => cache.release(held2), /not pinned/);
});

test('a budget below one expert, or below the experts in use at once, is a UsageError stating the minimum', () => {
  const experts = uniformExpertSizes(1, 8, BYTES);
  assert.throws(() => new HostCache({ budgetBytes: SLOT - 1, experts }),
    (err: unknown) => err instanceof UsageError && err.message.includes(`the minimum is ${formatBytes(SLOT)}`) && err.toLine().includes(`--ram-cache ${SLOT}`));
  assert.throws(() => new HostCache({ budgetBytes: 3 * SLOT, experts, expertsInUse: 4 }),
    (err: unknown) => err instanceof UsageError && /the 4 experts one layer uses at once/.test(err.message) && err.toLine().includes(`--ram-cache ${4 * SLOT}`));
  assert.throws(() => new HostCache({ budgetBytes: Number.NaN, experts }), UsageError);
  new HostCache({ budgetBytes: 4 * SLOT, experts, expertsInUse: 4 });
});

test('concurrent getOrLoad of one expert shares one load and pins once per caller', async () => {
  const cache = new HostCache({ budgetBytes: 4 * SLOT, experts: uniformExpertSizes(1, 8, BYTES) });
  let calls = 0;
  let finish!: () => void;
  const load = (e: HostEntry) => { calls++; return new Promise<void>((res) => { finish = () => { fillPattern(e); res(); }; }); };
  const a = cache.getOrLoad(0, 5, load);
  const b = cache.getOrLoad(0, 5, load);
  assert.equal(calls, 1);
  assert.equal(cache.acquire(expertKey(0, 5, 8)), undefined, 'acquire must not hand out a loading expert');
  finish();
  const [ea, eb] = await Promise.all([a, b]);
  assert.equal(ea, eb);
  checkPattern(ea);
  assert.deepEqual(cache.stats().total, { hits: 1, misses: 1, evictions: 0, insertedBytes: 260, failedLoads: 0 });
  assert.equal(cache.acquire(ea.key), ea);
  cache.release(ea); cache.release(ea); cache.release(ea);
  assert.throws(() => cache.release(ea.key), /not pinned/);
});

test('a failed load rejects every waiter and frees the slot', async () => {
  const cache = new HostCache({ budgetBytes: SLOT, experts: uniformExpertSizes(1, 8, BYTES) });
  let fail!: (e: Error) => void;
  const load = () => new Promise<void>((_, rej) => { fail = rej; });
  const waiters = [cache.getOrLoad(0, 1, load), cache.getOrLoad(0, 1, load), cache.getOrLoad(0, 1, load)];
  fail(new Error('disk gone'));
  for (const w of waiters) await assert.rejects(w, /disk gone/);
  assert.equal(cache.size, 0);
  cache.checkInvariants();
  assert.equal(cache.stats().total.failedLoads, 1);
  // The slot is free again (capacity is one expert): another expert loads, and the failed one reloads.
  cache.release(await cache.getOrLoad(0, 2, patternLoad));
  // A loader that throws synchronously is a rejection too, not a crash.
  await assert.rejects(cache.getOrLoad(0, 1, () => { throw new Error('sync throw'); }), /sync throw/);
  const e = await cache.getOrLoad(0, 1, patternLoad);
  checkPattern(e);
  cache.release(e);
  // misses: 1 (failed), 2, 1 (sync throw; evicts 2), 1 again (the slot is free: no eviction)
  assert.deepEqual(cache.stats().total, { hits: 2, misses: 4, evictions: 1, insertedBytes: 4 * 260, failedLoads: 2 });
  cache.checkInvariants();
});

/** Independent reference: an array in recency order with pin counts. */
class ReferenceLru {
  order: { key: number; pins: number }[] = [];
  constructor(readonly capacity: number) {}
  /** 'hit' | 'miss' | 'full' (all pinned). Pins the key on success. */
  access(key: number): 'hit' | 'miss' | 'full' {
    const i = this.order.findIndex((e) => e.key === key);
    if (i >= 0) {
      const [e] = this.order.splice(i, 1);
      e!.pins++;
      this.order.push(e!);
      return 'hit';
    }
    if (this.order.length >= this.capacity) {
      const v = this.order.findIndex((e) => e.pins === 0);
      if (v < 0) return 'full';
      this.order.splice(v, 1);
    }
    this.order.push({ key, pins: 1 });
    return 'miss';
  }
  release(key: number): void { this.order.find((e) => e.key === key)!.pins--; }
}

test('1000 random operations: budget never exceeded, pins respected, same decisions as a reference LRU', async () => {
  const rand = mulberry32(12345);
  const layers = 3, experts = 6;
  const budget = 5 * SLOT + 200;
  // Slabs of 2 slots: the budget's 5 slots come as 2 + 2 + 1.
  const cache = new HostCache({ budgetBytes: budget, experts: uniformExpertSizes(layers, experts, BYTES), slabBytes: 2 * SLOT });
  const ref = new ReferenceLru(5);
  const held: HostEntry[] = [];
  let fulls = 0;
  for (let op = 0; op < 1000; op++) {
    if (held.length > 0 && rand() < 0.45) {
      const e = held.splice(Math.floor(rand() * held.length), 1)[0]!;
      cache.release(e);
      ref.release(e.key);
    } else {
      const layer = Math.floor(rand() * layers);
      const expert = Math.floor(rand() * rand() * experts); // skewed toward low ids: some reuse
      const key = expertKey(layer, expert, experts);
      const want = ref.access(key);
      const before = cache.stats().total;
      try {
        const e = await cache.getOrLoad(layer, expert, patternLoad);
        checkPattern(e);
        const after = cache.stats().total;
        assert.equal(after.hits > before.hits ? 'hit' : 'miss', want, `op ${op}`);
        if (rand() < 0.5) held.push(e);
        else { cache.release(e); ref.release(key); }
      } catch (err) {
        assert.ok(err instanceof UsageError, String(err));
        assert.equal(want, 'full', `op ${op}: unexpected ${String(err)}`);
        fulls++;
      }
    }
    cache.checkInvariants();
    assert.ok(cache.allocatedBytes <= budget && cache.sharedArrayBufferBytes <= budget);
    for (const e of held) assert.ok(cache.has(e.layer, e.expert), `op ${op}: pinned expert ${e.key} evicted`);
    assert.deepEqual([...ref.order.map((e) => e.key)].sort((a, b) => a - b),
      Array.from({ length: layers * experts }, (_, k) => k).filter((k) => cache.has(Math.floor(k / experts), k % experts)));
  }
  assert.ok(fulls > 0 && cache.stats().total.evictions > 50 && cache.stats().total.hits > 50, 'the sequence should exercise every path');
  assert.equal(cache.sharedArrayBufferBytes, 5 * SLOT);
});

test('accounting-only mode makes the same hit/miss decisions as the backed cache', async () => {
  const rand = mulberry32(7);
  const layers = 4, experts = 16, k = 4;
  const sizes = uniformExpertSizes(layers, experts, BYTES);
  const budget = 20 * SLOT;
  const backed = new HostCache({ budgetBytes: budget, experts: sizes, expertsInUse: k });
  const none = new HostCache({ budgetBytes: budget, experts: sizes, expertsInUse: k, backing: 'none' });
  const liveHits: boolean[] = [];
  const simHits: boolean[] = [];
  for (let token = 0; token < 200; token++) {
    for (let layer = 0; layer < layers; layer++) {
      const chosen = new Set<number>();
      while (chosen.size < k) chosen.add(Math.floor(experts * rand() ** 2));
      // Live: the layer's k experts are pinned together, then released after compute.
      const entries: HostEntry[] = [];
      for (const e of chosen) {
        const h = backed.stats().total.hits;
        entries.push(await backed.getOrLoad(layer, e, patternLoad));
        liveHits.push(backed.stats().total.hits > h);
      }
      entries.forEach((e) => backed.release(e));
      for (const e of chosen) simHits.push(none.access(layer, e));
    }
  }
  assert.deepEqual(simHits, liveHits);
  assert.deepEqual(none.stats(), backed.stats());
  assert.ok(backed.stats().total.hits > 0 && backed.stats().total.evictions > 0);
  assert.equal(none.sharedArrayBufferBytes, 0);
  assert.equal(none.allocatedBytes, 20 * SLOT);
  assert.throws(() => backed.access(0, 0), /accounting-only/);
  const noWeights = await none.getOrLoad(0, 0, async () => {});
  assert.throws(() => slotView(noWeights), /accounting-only/);
  assert.throws(() => matrixView(noWeights, 'up'), /accounting-only/);
});

test('a backed cache allocates SharedArrayBuffer lazily and never more than its budget', async () => {
  const budget = 10 * 2 ** 20 + 12345; // not a multiple of anything
  const sizes = uniformExpertSizes(2, 64, { gate: 100_000, up: 100_000, down: 100_000 }); // slot 300_096 bytes
  const cache = new HostCache({ budgetBytes: budget, experts: sizes, slabBytes: 2 * 2 ** 20 });
  assert.equal(cache.slotBytes, 300_096);
  assert.equal(cache.sharedArrayBufferBytes, 0);
  cache.release(await cache.getOrLoad(0, 0, async (e) => { slotView(e).fill(7); }));
  // one slab: floor(2 MiB / 300_096) = 6 slots
  assert.equal(cache.sharedArrayBufferBytes, 6 * 300_096);
  for (let l = 0; l < 2; l++) for (let x = 0; x < 64; x++) {
    cache.release(await cache.getOrLoad(l, x, async (e) => { slotView(e).fill(x); }));
    assert.ok(cache.sharedArrayBufferBytes <= budget);
  }
  assert.equal(cache.capacity, Math.floor(budget / 300_096));
  assert.equal(cache.sharedArrayBufferBytes, cache.capacity * 300_096);
  // Slot buffers really are SharedArrayBuffers (workers can read them without a copy).
  const e = cache.acquire(expertKey(1, 63, 64))!;
  assert.ok(e.slot.buffer instanceof SharedArrayBuffer);
  assert.ok(matrixView(e, 'down').every((b) => b === 63));
  cache.release(e);
});

test('slot allocator: double free is caught, slabs are capped by the budget', () => {
  const a = new SlotAllocator({ slotBytes: 64, budgetBytes: 64 * 3 + 10, slabBytes: 128 });
  const s = [a.alloc()!, a.alloc()!, a.alloc()!];
  assert.equal(a.alloc(), undefined);
  assert.equal(a.slabCount, 2);
  assert.equal(a.sharedArrayBufferBytes, 192);
  assert.deepEqual(s.map((x) => [x.index, x.offset]), [[0, 0], [1, 64], [2, 0]]);
  a.release(s[1]!);
  assert.throws(() => a.release(s[1]!), /freed twice/);
  assert.equal(a.alloc(), s[1]);
  a.checkInvariants();
});
