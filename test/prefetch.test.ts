// Prefetching the next layer's predicted experts (OffloadOptions.prefetch): the cache's prefetch()
// counts no hit or miss, leaves no pin, never evicts a pinned expert or one still being read, and a
// failed prefetch throws nowhere; with it on, logits stay bit-identical to the resident engine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel, type Model } from '../src/engine/model.js';
import { GGUFFile } from '../src/model/gguf.js';
import { ExpertLocator, EXPERT_MATRICES } from '../src/experts/locator.js';
import { HostCache, matrixView, uniformExpertSizes, type HostEntry } from '../src/experts/host-cache.js';
import type { ExpertOffload } from '../src/experts/offload.js';
import { FileAccessError } from '../src/model/errors.js';

const FIXTURES = fileURLToPath(new URL('../../fixtures/', import.meta.url));
const PROMPT = [1, 17, 42, 99, 5, 230, 64, 8, 120, 33, 77, 2];
const DECODE = [50, 9, 180, 3, 61];

// Slots of 320 bytes (matrices of 100, 100, 60 bytes padded to 64), 2 layers of 8 experts.
const BYTES = { gate: 100, up: 100, down: 60 };
const SLOT = 320;
const fill = async (e: HostEntry): Promise<void> => { matrixView(e, 'gate').fill(e.key); };
const noLoad = async (): Promise<void> => { throw new Error('a hit must not load'); };

/** A loader whose reads finish (or fail) when the test says so. */
function gatedLoader(): { load: (e: HostEntry) => Promise<void>; finish: (err?: Error) => void; started: number } {
  const pending: { e: HostEntry; resolve: () => void; reject: (err: Error) => void }[] = [];
  const g = {
    started: 0,
    load: (e: HostEntry) => new Promise<void>((resolve, reject) => { g.started++; pending.push({ e, resolve, reject }); }),
    finish: (err?: Error) => {
      for (const p of pending.splice(0)) {
        if (err) p.reject(err);
        else { matrixView(p.e, 'gate').fill(p.e.key); p.resolve(); }
      }
    },
  };
  return g;
}

test('prefetch counts no hit or miss and no pin; a later lookup is a hit and counts it used', async () => {
  const cache = new HostCache({ budgetBytes: 4 * SLOT, experts: uniformExpertSizes(2, 8, BYTES) });
  const gate = gatedLoader();
  assert.equal(cache.prefetch(1, 3, gate.load), true);
  assert.equal(cache.prefetch(1, 3, gate.load), false, 'already loading: no second read');
  assert.equal(gate.started, 1);
  assert.equal(cache.pinnedCount, 0);
  assert.deepEqual([cache.stats().total.hits, cache.stats().total.misses], [0, 0]);
  // a lookup while the read runs joins it (a hit, no second load) and waits for it
  const got = cache.pinOrLoad(1, 3, noLoad);
  assert.ok(got instanceof Promise);
  gate.finish();
  const entry = await got;
  assert.equal(matrixView(entry, 'gate')[0], entry.key);
  cache.release(entry);
  const s = cache.stats();
  assert.deepEqual([s.total.hits, s.total.misses], [1, 0]);
  assert.deepEqual(s.prefetch.total, { issued: 1, used: 1, wasted: 0, bytes: 260 });
  assert.deepEqual(s.prefetch.layers[1], { issued: 1, used: 1, wasted: 0, bytes: 260 });
  // a second lookup is an ordinary hit, not a second use
  cache.release(await cache.pinOrLoad(1, 3, noLoad));
  assert.equal(cache.stats().prefetch.total.used, 1);
  cache.checkInvariants();
});

test('prefetch evicts only unpinned, finished experts outside the spared layers, and counts unused evictions wasted', async () => {
  const cache = new HostCache({ budgetBytes: 3 * SLOT, experts: uniformExpertSizes(2, 8, BYTES) });
  const pinned = await cache.pinOrLoad(0, 0, fill);
  cache.release(await cache.pinOrLoad(0, 1, fill));
  cache.release(await cache.pinOrLoad(0, 2, fill));
  assert.equal(cache.prefetch(1, 5, fill, [0]), false, 'layer 0 spared, nothing else to evict');
  assert.equal(cache.prefetch(1, 5, fill), true, 'evicts layer 0 expert 1, the least recent unpinned');
  assert.equal(cache.has(0, 1), false);
  assert.equal(cache.has(0, 0), true, 'pinned stays');
  const gate = gatedLoader();
  assert.equal(cache.prefetch(1, 6, gate.load), true, 'evicts layer 0 expert 2');
  assert.equal(cache.prefetch(1, 7, fill), false, 'the rest is pinned or being read');
  await new Promise((r) => setTimeout(r, 1)); // layer 1 expert 5's read completes
  // layer 1 expert 5 is finished and unpinned: a demand miss evicts it, unused
  const kept = await cache.pinOrLoad(1, 0, fill);
  assert.equal(cache.has(1, 5), false);
  assert.deepEqual(cache.stats().prefetch.total, { issued: 2, used: 0, wasted: 1, bytes: 260 });
  // every slot pinned or being read: a demand miss waits for the read, then takes the freed slot
  const waiting = cache.pinOrLoad(1, 1, fill);
  assert.ok(waiting instanceof Promise);
  let done = false;
  void waiting.then(() => { done = true; });
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(done, false, 'cannot evict the slot the prefetch reads into');
  gate.finish();
  const e = await waiting;
  assert.equal(matrixView(e, 'gate')[0], e.key);
  cache.release(e);
  cache.release(kept);
  cache.release(pinned);
  assert.equal(cache.pinnedCount, 0);
  const s = cache.stats().prefetch.total;
  assert.ok(s.used + s.wasted <= s.issued);
  cache.checkInvariants();
});

test('retirePrefetches drops the layer\'s prefetched experts no lookup used, waiting for reads under way', async () => {
  const cache = new HostCache({ budgetBytes: 6 * SLOT, experts: uniformExpertSizes(2, 8, BYTES) });
  cache.prefetch(0, 1, fill);
  cache.prefetch(1, 1, fill);
  cache.prefetch(1, 2, fill);
  const gate = gatedLoader();
  cache.prefetch(1, 3, gate.load);
  await new Promise((r) => setTimeout(r, 1));
  cache.release(await cache.pinOrLoad(1, 1, noLoad)); // used
  cache.retirePrefetches(1);
  assert.deepEqual([cache.has(0, 1), cache.has(1, 1), cache.has(1, 2), cache.has(1, 3)], [true, true, false, true]);
  gate.finish();
  await cache.prefetchesSettled();
  await new Promise((r) => setTimeout(r, 1));
  assert.equal(cache.has(1, 3), false, 'dropped once its read ended');
  assert.deepEqual(cache.stats().prefetch.total, { issued: 4, used: 1, wasted: 2, bytes: 4 * 260 });
  assert.equal(cache.size, 2);
  cache.checkInvariants();
});

test('a failed prefetch throws nowhere, frees its slot, and a later lookup reads again', async () => {
  const cache = new HostCache({ budgetBytes: 2 * SLOT, experts: uniformExpertSizes(2, 8, BYTES) });
  const gate = gatedLoader();
  assert.equal(cache.prefetch(1, 2, gate.load), true);
  gate.finish(new Error('disk gone'));
  await cache.prefetchesSettled();
  assert.equal(cache.has(1, 2), false);
  assert.equal(cache.size, 0);
  assert.deepEqual(cache.stats().prefetch.total, { issued: 1, used: 0, wasted: 1, bytes: 0 });
  assert.equal(cache.stats().total.failedLoads, 1);
  let loads = 0;
  const e = await cache.pinOrLoad(1, 2, (x) => { loads++; return fill(x); });
  assert.equal(loads, 1);
  assert.equal(cache.stats().total.misses, 1);
  cache.release(e);
  // a lookup that joined a prefetch which then fails gets the read's error and keeps no pin
  const g2 = gatedLoader();
  cache.prefetch(1, 4, g2.load);
  const joined = cache.pinOrLoad(1, 4, noLoad);
  g2.finish(new Error('disk gone again'));
  await assert.rejects(Promise.resolve(joined), /disk gone again/);
  assert.equal(cache.pinnedCount, 0);
  cache.checkInvariants();
});

/** Logits of the prompt batch followed by the decode steps. */
async function run(model: Model): Promise<Float32Array[]> {
  const seq = model.newSequence();
  const out = [await seq.eval(PROMPT)];
  for (const t of DECODE) out.push(await seq.eval([t]));
  return out;
}

function oneLayerMinimum(path: string): number {
  const file = GGUFFile.open(path);
  try {
    const loc = new ExpertLocator(file);
    const r = loc.expertRange(0, 0);
    return EXPERT_MATRICES.reduce((s, m) => s + Math.ceil(r[m].byteLength / 64) * 64, 0) * loc.expertUsedCount;
  } finally {
    file.close();
  }
}

function offloadOf(model: Model): ExpertOffload {
  return (model as unknown as { offload: ExpertOffload }).offload;
}

for (const name of ['qwen2moe-q4_0', 'olmoe-q4_k']) {
  test(`${name}: with prefetch, logits are bit-identical to resident ones at 50% and the one-layer minimum, threads 1 and 2`, async () => {
    const path = join(FIXTURES, `${name}.gguf`);
    const resident = await loadModel(path);
    const want = await run(resident);
    await resident.close();
    let issued = 0;
    for (const ramCache of ['50%', oneLayerMinimum(path)]) {
      for (const threads of [1, 2]) {
        const model = await loadModel(path, { offload: { ramCache, threads, prefetch: true } });
        try {
          const got = await run(model);
          got.forEach((g, i) => assert.deepEqual(g, want[i], `${ramCache} threads ${threads}: step ${i} differs`));
          const off = offloadOf(model);
          await off.cache.prefetchesSettled();
          const s = model.expertStats()!;
          assert.equal(off.cache.pinnedCount, 0, 'no pins left');
          off.cache.checkInvariants();
          assert.ok(off.cache.allocatedBytes <= s.ramCacheBytes);
          const p = s.prefetch;
          assert.ok(p.used + p.wasted <= p.issued, JSON.stringify(p));
          // every read is a demand miss's or a prefetch's
          assert.equal(s.total.reads, s.total.misses + p.issued);
          assert.equal(p.bytes, p.issued * s.total.bytesRead / s.total.reads, 'a prefetch reads one expert');
          issued += p.issued;
        } finally {
          await model.close();
        }
      }
    }
    assert.ok(issued > 0, 'some budget must prefetch');
  });
}

test('with prefetch off nothing is predicted or prefetched', async () => {
  const model = await loadModel(join(FIXTURES, 'qwen2moe-q4_0.gguf'), { offload: { ramCache: '50%', threads: 1, prefetch: false } });
  try {
    await run(model);
    assert.deepEqual(model.expertStats()!.prefetch, { issued: 0, used: 0, wasted: 0, bytes: 0 });
  } finally {
    await model.close();
  }
});

test('a prefetch read failing (file truncated after load) rejects nowhere; the demand read reports its clear error', async () => {
  const unhandled: unknown[] = [];
  const onUnhandled = (err: unknown): void => { unhandled.push(err); };
  process.on('unhandledRejection', onUnhandled);
  const dir = mkdtempSync(join(tmpdir(), 'moe-offload-prefetch-'));
  try {
    const path = join(dir, 'copy.gguf');
    copyFileSync(join(FIXTURES, 'olmoe-q4_0.gguf'), path);
    // Cut the file where layer 1's experts start, so layer 0 reads fine and layer 1's (prefetched) reads fail.
    const file = GGUFFile.open(path);
    let cut: number;
    try {
      const loc = new ExpertLocator(file);
      const starts = (l: number) => Array.from({ length: loc.expertCount }, (_, e) => EXPERT_MATRICES.map((m) => loc.locate(l, e, m)));
      cut = Math.min(...starts(1).flat().map((r) => r.offset));
      const layer0End = Math.max(...starts(0).flat().map((r) => r.offset + r.byteLength));
      assert.ok(layer0End <= cut, 'the fixture stores layer 0 experts before layer 1 experts');
    } finally {
      file.close();
    }
    const model = await loadModel(path, { offload: { ramCache: '100%', threads: 2, prefetch: true } });
    try {
      truncateSync(path, cut);
      await assert.rejects(model.newSequence().eval(PROMPT), (err: Error) => {
        assert.ok(err instanceof FileAccessError, String(err));
        assert.match(err.message, /cannot load layer 1 expert \d+: unexpected end of file reading .*copy\.gguf/);
        return true;
      });
      const off = offloadOf(model);
      await off.cache.prefetchesSettled();
      await new Promise((r) => setTimeout(r, 20));
      assert.ok(model.expertStats()!.prefetch.issued > 0, 'layer 1 was prefetched');
      assert.equal(off.cache.pinnedCount, 0);
      off.cache.checkInvariants();
    } finally {
      await model.close();
    }
    assert.deepEqual(unhandled, []);
  } finally {
    process.off('unhandledRejection', onUnhandled);
    rmSync(dir, { recursive: true, force: true });
  }
});
