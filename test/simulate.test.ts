// `simulate`: LRU through the live HostCache agrees with metrics.ts's LRU; sizes in bytes, percent, experts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { routingFromArrays } from '../src/trace/routing.js';
import { policyHitRates, sharedCacheReplay } from '../src/trace/metrics.js';
import { replayTrace, simulateTrace, type BatchPrefetches, type TraceBatchInfo } from '../src/trace/simulate.js';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'simulate-test-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

// Pseudo-random routing with some locality: 3 layers, 8 experts, top-2, two sequences.
let x = 7;
const rnd = (n: number) => ((x = (x * 1103515245 + 12345) >>> 0) >>> 16) % n;
function token(prev: number[][] | undefined): number[][] {
  return [0, 1, 2].map((l) => {
    const a = prev && rnd(3) ? prev[l]![0]! : rnd(8);
    let b = rnd(8);
    while (b === a) b = rnd(8);
    return [a, b];
  });
}
const seqs: number[][][][] = [[], []];
for (const s of seqs) for (let t = 0; t < 150; t++) s.push(token(s[t - 1]));
const routing = routingFromArrays(seqs, 8);

test('simulate LRU (HostCache) equals metrics.ts LRU cold for the same size; warm and bytes follow', () => {
  for (const perLayer of [1, 2, 3, 5, 8]) {
    const sim = simulateTrace(routing, 'lru', perLayer * 3, 1000);
    const m = policyHitRates(routing, 'lru', perLayer);
    assert.ok(Math.abs(sim.hitRate.cold - m.cold.model) < 1e-12, `C=${perLayer}: ${sim.hitRate.cold} vs ${m.cold.model}`);
    assert.ok(Math.abs(sim.hitRate.warm - m.warm.model) < 1e-12, `warm C=${perLayer}`);
    assert.equal(sim.bytesRead, sim.misses * 1000);
    assert.equal(sim.accesses, 2 * 150 * 3 * 2);
  }
  // Capacities that are not a multiple of the layer count, too.
  for (const cap of [4, 7, 11]) {
    assert.equal(simulateTrace(routing, 'lru', cap, null).hits.cold, sharedCacheReplay(routing, 'lru', cap).cold);
  }
});

test('LFU and MIN: MIN is the best of the three', () => {
  for (const cap of [3, 6, 12]) {
    const min = simulateTrace(routing, 'belady', cap, null).hitRate.cold;
    assert.ok(min >= simulateTrace(routing, 'lru', cap, null).hitRate.cold);
    assert.ok(min >= simulateTrace(routing, 'lfu', cap, null).hitRate.cold);
  }
});

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/moe-offload.js'), ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('CLI: --ram-cache in bytes and percent, --cache-experts; bad values exit 2', () => {
  const p = join(dir, 't.jsonl');
  writeFileSync(p, seqs.flatMap((s, seq) => s.map((experts, pos) => JSON.stringify({ seq, pos, experts }))).join('\n'));
  const run = (...a: string[]) => {
    const r = cli('simulate', '--trace', p, '--json', ...a);
    assert.equal(r.code, 0, r.err);
    return JSON.parse(r.out);
  };
  const byExperts = run('--cache-experts', '2');
  assert.equal(byExperts.capacityExperts, 6);
  assert.ok(Math.abs(byExperts.hitRate.cold - policyHitRates(routing, 'lru', 2).cold.model) < 1e-12);
  // 6 experts of 1 KiB: 6KiB, or 25% of 24 experts.
  const byBytes = run('--ram-cache', '6KiB', '--expert-bytes', '1KiB');
  assert.equal(byBytes.capacityExperts, 6);
  assert.equal(byBytes.bytesRead, byBytes.misses * 1024);
  assert.equal(run('--ram-cache', '25%', '--expert-bytes', '1KiB').capacityExperts, 6);
  assert.equal(run('--ram-cache', '6.5KiB', '--expert-bytes', '1KiB', '--policy', 'belady').capacityExperts, 6);
  const text = cli('simulate', '--trace', p, '--cache-experts', '2');
  assert.match(text.out, /cold/);
  assert.match(text.out, /warm/);
  for (const [args, re] of [
    [['--ram-cache', '1GiB'], /needs the size of an expert/],
    [['--cache-experts', '2', '--policy', 'fifo'], /unknown --policy/],
    [[], /exactly one of/],
    [['--ram-cache', '4KiB', '--cache-experts', '2'], /exactly one of/],
    [['--ram-cache', '12 parsecs', '--expert-bytes', '1KiB'], /--ram-cache/],
    [['--ram-cache', '100B', '--expert-bytes', '1KiB'], /holds no expert/],
    [['--cache-experts', '1.5'], /bad --cache-experts '1\.5': not a whole number/],
    [['--cache-experts', '0'], /bad --cache-experts '0'/],
    [['--cache-experts', '2', '--experts', 'x'], /bad --experts 'x'/],
    [['--cache-experts', '2', '--expert-bytes', '-1'], /bad --expert-bytes '-1'/],
    [['--ram-cache', '150%', '--expert-bytes', '1KiB'], /bad --ram-cache '150%'/],
    // A malformed size is reported even when the trace cannot size the cache.
    [['--ram-cache', '4 GiBs'], /bad --ram-cache '4 GiBs': unknown unit/],
  ] as [string[], RegExp][]) {
    const r = cli('simulate', '--trace', p, ...args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, re);
    assert.equal(r.err.trim().split('\n').length, 1, r.err);
  }
});

// Prefetch replay, on tiny hand-made traces (one token per batch, k = 1) whose counts are worked out
// by hand below; cache contents are listed least recently used first, "1:3" = layer 1's expert 3.
function tinyReplay(layers: number, experts: number, tokens: number[][], prefetched: Record<number, Partial<BatchPrefetches>>, capacity: number) {
  const routing = routingFromArrays([tokens.map((t) => t.map((e) => [e]))], experts);
  const empty = () => Array.from({ length: layers }, (): number[] => []);
  const info: TraceBatchInfo = {
    batches: new Map([[0, Int32Array.from(tokens, (_, i) => i)]]),
    prefetches: new Map([[0, new Map(Object.entries(prefetched).map(([b, p]) => [Number(b), { read: p.read ?? empty(), cached: p.cached ?? empty() }]))]]),
  };
  return replayTrace(routing, 'lru', capacity, 100, info);
}

test('prefetch replay: a used prefetch is a hit; a wrong one evicts the least recent other-layer entry and is retired unused', async () => {
  // 3 slots. Batch 0 [0, 1], prefetch 1:1: 0:0 misses; 1:1 read into a free slot; its lookup hits (used).
  // Batch 1 [2, 3], prefetch 1:0: 0:2 misses (full: 0:0 1:1 0:2); 1:0 evicts 0:0 (1:1 is of layer 1,
  // spared); 1:3 misses and evicts 1:1; 1:0 is retired unused (wasted): 0:2 1:3.
  // Batch 2 [0, 1], prefetch 1:1: 0:0 misses into the free slot; 1:1 evicts 0:2; its lookup hits.
  const sim = await tinyReplay(2, 4, [[0, 1], [2, 3], [0, 1]], {
    0: { read: [[], [1]] }, 1: { read: [[], [0]] }, 2: { read: [[], [1]] },
  }, 3);
  assert.deepEqual({ hits: sim.hits.cold, misses: sim.misses, prefetch: sim.prefetch }, { hits: 2, misses: 4, prefetch: { issued: 3, used: 2, wasted: 1, skipped: 0 } });
  assert.equal(sim.bytesRead, (4 + 3) * 100, 'misses and prefetch reads each read an expert');
  assert.deepEqual(sim.layerHitRate, [0, 2 / 3]);
});

test('prefetch replay order: a layer\'s unused prefetches are retired before the next layer\'s are read', async () => {
  // 3 layers, 3 slots. Batch 0 [0, 0, 0], prefetches 1:1 (wrong) and 2:0 (right): 0:0 misses, 1:1 read;
  // 1:0 misses (full: 0:0 1:1 1:0); 1:1 retired (0:0 1:0); 2:0 read into the freed slot; its lookup hits.
  // Batch 1 [0, 0, 0]: all three cached, 3 hits. (Retiring after the read would have evicted 0:0.)
  const sim = await tinyReplay(3, 4, [[0, 0, 0], [0, 0, 0]], { 0: { read: [[], [1], [0]] } }, 3);
  assert.deepEqual({ hits: sim.hits.cold, misses: sim.misses, prefetch: sim.prefetch }, { hits: 4, misses: 2, prefetch: { issued: 2, used: 1, wasted: 1, skipped: 0 } });
});

test('prefetch replay: the layer\'s looked-up experts stay pinned while the next layer prefetches', async () => {
  // 2 slots. Batch 0 [0, 1]: 0:0 1:1. Batch 1 [0, 1], prefetch 1:2: 0:0 hits and is pinned; 1:1 is of
  // layer 1: nothing may be evicted, so the recorded read cannot be redone (skipped), as the live cache
  // would not have started it.
  const sim = await tinyReplay(2, 4, [[0, 1], [0, 1]], { 1: { read: [[], [2]] } }, 2);
  assert.deepEqual({ hits: sim.hits.cold, misses: sim.misses, prefetch: sim.prefetch }, { hits: 2, misses: 2, prefetch: { issued: 0, used: 0, wasted: 0, skipped: 1 } });
});

test('prefetch replay: a prefetch of a cached expert marks it recently used', async () => {
  // 2 slots. Batch 0 [0, 1]: 0:0 1:1. Batch 1 [0, 2], 1:1 found cached by prefetch: 0:0 hits (1:1 0:0),
  // the touch makes it 0:0 1:1, so 1:2 evicts 0:0 (1:1 1:2). Batch 2 [0, 1]: 0:0 misses (evicts 1:1),
  // 1:1 misses. Without the touch 1:2 evicts 1:1 (0:0 1:2) and batch 2's 0:0 hits.
  const sim = await tinyReplay(2, 4, [[0, 1], [0, 2], [0, 1]], { 1: { cached: [[], [1]] } }, 2);
  assert.deepEqual(sim.layerHitRate, [1 / 3, 0]);
  assert.deepEqual(sim.prefetch, { issued: 0, used: 0, wasted: 0, skipped: 0 });
  const plain = await tinyReplay(2, 4, [[0, 1], [0, 2], [0, 1]], {}, 2);
  assert.deepEqual(plain.layerHitRate, [2 / 3, 0]);
});

test('without prefetches replayTrace is simulateTrace; other policies ignore prefetches', async () => {
  const tokens = [[0, 1], [2, 3], [0, 1], [1, 2]];
  const routing = routingFromArrays([tokens.map((t) => t.map((e) => [e]))], 4);
  const batches = new Map([[0, Int32Array.from(tokens, (_, i) => i)]]);
  const plain = simulateTrace(routing, 'lru', 3, 100, batches);
  assert.deepEqual(await replayTrace(routing, 'lru', 3, 100, { batches, prefetches: null }), plain);
  assert.equal(plain.prefetch, null);
  const prefetches = new Map([[0, new Map([[1, { read: [[], [0]], cached: [[], []] }]])]]);
  const lfu = await replayTrace(routing, 'lfu', 3, 100, { batches, prefetches });
  assert.deepEqual(lfu, simulateTrace(routing, 'lfu', 3, 100, batches));
  assert.equal(lfu.prefetch, null);
});
