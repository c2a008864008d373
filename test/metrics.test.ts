// SRP / SCH / LRU / LFU / MIN against hand-computed vectors: the worked example of ../shared/metrics.md
// and small cases worked out by hand in the comments below.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { routingFromArrays } from '../src/trace/routing.js';
import { srp, sch, policyHitRates, sharedCacheReplay, expertUsage } from '../src/trace/metrics.js';

const close = (actual: number, expected: number, what: string) =>
  assert.ok(Math.abs(actual - expected) < 5e-7, `${what}: ${actual} != ${expected}`);

// metrics.md worked example: one sequence, 6 tokens, E = 4, k = 2, two layers.
const layer0 = [[0, 1], [0, 1], [0, 2], [3, 1], [0, 1], [2, 3]];
const layer1 = [[2, 3], [2, 3], [2, 3], [1, 0], [2, 3], [2, 0]];
const worked = routingFromArrays([layer0.map((sel, t) => [sel, layer1[t]!])], 4);

test('worked example: SRP per layer and model level', () => {
  const m2 = srp(worked, 2);
  close(m2.layers[0]!, 0.769231, 'SRP(2) layer 0');
  close(m2.layers[1]!, 0.8, 'SRP(2) layer 1');
  close(m2.model, 0.784314, 'SRP(2) model');
  // Layer 0, m = 2: the best threshold is c = 1 with M = 20, P = 32, A = 20, so group size P/A = 1.6.
  assert.equal(m2.threshold.layers[0], 1);
  close(m2.groupSize.layers[0]!, 32 / 20, 'group size layer 0');
  const m3 = srp(worked, 3);
  close(m3.layers[0]!, 0.708333, 'SRP(3) layer 0');
  close(m3.layers[1]!, 0.75, 'SRP(3) layer 1');
  close(m3.model, 0.729167, 'SRP(3) model');
});

test('worked example: SCH per layer and model level', () => {
  const want1 = [[0.25, 0.5, 0.75, 1.0], [0.25, 0.583333, 0.833333, 1.0]];
  for (let C = 1; C <= 4; C++) {
    const r = sch(worked, 1, C);
    close(r.layers[0]!, want1[0]![C - 1]!, `SCH(1, ${C}) layer 0`);
    close(r.layers[1]!, want1[1]![C - 1]!, `SCH(1, ${C}) layer 1`);
  }
  const want2: Record<number, [number, number]> = { 2: [0.583333, 0.666667], 3: [0.833333, 0.916667] };
  for (const [C, [a, b]] of Object.entries(want2)) {
    const r = sch(worked, 2, Number(C));
    close(r.layers[0]!, a, `SCH(2, ${C}) layer 0`);
    close(r.layers[1]!, b, `SCH(2, ${C}) layer 1`);
  }
  const wantModel = [0.291667, 0.541667, 0.791667];
  for (let C = 1; C <= 3; C++) close(sch(worked, 1, C).model, wantModel[C - 1]!, `SCH(1, ${C}) model`);
});

// One layer, k = 1, so a sequence is a list of expert ids.
const oneLayer = (...seqs: number[][]) => routingFromArrays(seqs.map((s) => s.map((e) => [[e]])));

test('LRU, LFU and MIN, warm and cold, by hand', () => {
  // Cache of 2. Sequence A = 0 0 1 2 0:
  //  t0 0: miss (warm: first use, room) | t1 0: hit | t2 1: miss (warm: room) | t3 2: miss, cache full.
  //  LRU evicts 0 (used at t1, 1 at t2) -> t4 0 misses: cold 1/5, warm 3/5.
  //  LFU evicts 1 (frequency 1 vs 2) -> t4 0 hits: cold 2/5, warm 4/5.
  //  MIN evicts 1 (never used again; 0 comes back at t4) -> t4 hits: cold 2/5, warm 4/5.
  // Sequence B = 0 0 1 2 1: at t3 LRU evicts 0, LFU evicts 1, MIN evicts 0 (never used again).
  //  LRU: t4 1 hits: cold 2/5, warm 4/5. LFU: t4 misses: cold 1/5, warm 3/5. MIN: cold 2/5, warm 4/5.
  const A = oneLayer([0, 0, 1, 2, 0]);
  const B = oneLayer([0, 0, 1, 2, 1]);
  const want = {
    lru: { A: [1, 3], B: [2, 4] },
    lfu: { A: [2, 4], B: [1, 3] },
    belady: { A: [2, 4], B: [2, 4] },
  } as const;
  for (const policy of ['lru', 'lfu', 'belady'] as const) {
    for (const [name, r] of [['A', A], ['B', B]] as const) {
      const h = policyHitRates(r, policy, 2);
      const [cold, warm] = want[policy][name];
      close(h.cold.layers[0]!, cold / 5, `${policy} ${name} cold`);
      close(h.warm.layers[0]!, warm / 5, `${policy} ${name} warm`);
      // One layer: the shared cache is the layer's cache.
      close(h.cold.model, cold / 5, `${policy} ${name} cold model`);
    }
    // Two sequences in one trace: caches restart per sequence, hits and accesses pool.
    const both = policyHitRates(oneLayer([0, 0, 1, 2, 0], [0, 0, 1, 2, 1]), policy, 2);
    const [ca, wa] = want[policy].A;
    const [cb, wb] = want[policy].B;
    close(both.cold.layers[0]!, (ca + cb) / 10, `${policy} pooled cold`);
    close(both.warm.layers[0]!, (wa + wb) / 10, `${policy} pooled warm`);
  }
});

test('cold counting: every first use misses; a cache as large as the id space only misses first uses', () => {
  const r = oneLayer([3, 1, 3, 2, 1, 0, 3]);
  for (const policy of ['lru', 'lfu', 'belady'] as const) {
    const h = policyHitRates(r, policy, 4);
    close(h.cold.layers[0]!, 3 / 7, `${policy} cold`); // 4 distinct ids -> 4 compulsory misses
    close(h.warm.layers[0]!, 1, `${policy} warm`);
  }
});

test('MIN is never beaten by LRU or LFU, and SCH with m = 1 matches LRU on k = 1 traces', () => {
  // Pseudo-random single-layer traces (fixed LCG), several cache sizes.
  let x = 12345;
  const rnd = () => ((x = (x * 1103515245 + 12345) >>> 0) >>> 16) % 9;
  const seqs = [Array.from({ length: 300 }, rnd), Array.from({ length: 120 }, rnd)];
  const r = oneLayer(...seqs);
  for (const C of [1, 2, 3, 5, 8]) {
    const min = policyHitRates(r, 'belady', C);
    for (const p of ['lru', 'lfu'] as const) {
      const h = policyHitRates(r, p, C);
      assert.ok(min.cold.layers[0]! >= h.cold.layers[0]! - 1e-12, `MIN >= ${p} at C=${C}`);
    }
    // With one expert per token, SCH(1, C) is exactly LRU with the pre-filled rule.
    close(sch(r, 1, C).layers[0]!, policyHitRates(r, 'lru', C).warm.layers[0]!, `SCH(1,${C}) = LRU warm`);
    close(sch(r, 1, C).cold.layers[0]!, policyHitRates(r, 'lru', C).cold.layers[0]!, `SCH(1,${C}) cold = LRU cold`);
  }
});

test('sequences shorter than m: SRP ignores them, SCH uses the window that exists', () => {
  // Short sequence 0 1 2 0, cache 2, m = 10 (window = the rest of the sequence). At t2 expert 2 is new
  // and the cache {0, 1} is full: 0 is still wanted (count 1), 1 is not (count 0) -> evict 1, so t3 hits.
  // warm: t0, t1 (room), t3 = 3/4; cold: t3 = 1/4. With m = 1 (LRU) 0 is evicted instead: warm 2/4.
  const short = oneLayer([0, 1, 2, 0]);
  close(sch(short, 10, 2).layers[0]!, 0.75, 'SCH(10, 2)');
  close(sch(short, 10, 2).cold.layers[0]!, 0.25, 'SCH(10, 2) cold');
  close(sch(short, 1, 2).layers[0]!, 0.5, 'SCH(1, 2)');
  assert.ok(Number.isNaN(srp(short, 10).layers[0]!), 'no windows -> NaN');
  assert.ok(Number.isNaN(srp(short, 10).model));
  // A long and a short sequence: SRP equals that of the long one alone.
  const long = [0, 1, 0, 2, 2, 1, 0, 3, 3, 0, 1, 2];
  close(srp(oneLayer(long, [0, 1, 2, 0]), 5).layers[0]!, srp(oneLayer(long), 5).layers[0]!, 'short sequence ignored');
  // m = 1: each window is one token with k = 1 expert; c = 1 predicts exactly: SRP(1) = 1.
  close(srp(oneLayer(long), 1).layers[0]!, 1, 'SRP(1)');
});

test('SRP by hand: multi-sequence pooling of M, P and A', () => {
  // seq 0 = 0 0 1 (k = 1, m = 2): windows {0:2}, {0:1, 1:1}. seq 1 = 2 3: window {2:1, 3:1}.
  // Histogram over pairs: v=2: 1, v=1: 4. A = 6. c=1: M = 6, P = 2*5 = 10 -> F1 = 12/16 = 0.75.
  // c=2: M = 2, P = 2 -> F1 = 4/8 = 0.5. c=0 (E = 4 experts): P = 2*4*3 = 24 -> 12/30. SRP = 0.75.
  const r = oneLayer([0, 0, 1], [2, 3]);
  close(srp(r, 2).layers[0]!, 0.75, 'pooled SRP(2)');
  close(srp(r, 2).groupSize.layers[0]!, 10 / 6, 'group size');
});

test('model-level baselines use one shared cache of C x layers over pooled ids', () => {
  // Two layers, k = 1: layer 0 = 0 1 0 1, layer 1 = 0 0 0 0. Per-layer C = 1 LRU: layer 0 never hits
  // cold, layer 1 hits 3/4. Shared cache of 2 over pooled ids (layer 1's expert 0 is id 2) sees
  // 0 2 1 2 0 2 1 2: misses 0, 2, 1 (evicts 0), hit 2, miss 0 (evicts 1), hit 2, miss 1, hit 2 = 3/8.
  const r = routingFromArrays([[[[0], [0]], [[1], [0]], [[0], [0]], [[1], [0]]]], 2);
  const h = policyHitRates(r, 'lru', 1);
  close(h.cold.layers[0]!, 0, 'layer 0');
  close(h.cold.layers[1]!, 3 / 4, 'layer 1');
  close(h.cold.model, 3 / 8, 'shared');
  const s = sharedCacheReplay(r, 'lru', 2);
  assert.deepEqual([s.cold, s.accesses], [3, 8]);
  assert.deepEqual(expertUsage(r), [[2, 2], [4, 0]]);
});

test('LRU reuse distances give the cold LRU hit rate of every cache size', async () => {
  const { lruReuse, lruHitRateFromReuse } = await import('../src/trace/metrics.js');
  let x = 99;
  const rnd = () => ((x = (x * 1103515245 + 12345) >>> 0) >>> 16) % 6;
  const r = routingFromArrays([0, 1].map(() => Array.from({ length: 80 }, () => [[rnd()], [rnd()]])), 6);
  const reuse = lruReuse(r);
  for (let C = 1; C <= 6; C++) {
    const h = policyHitRates(r, 'lru', C);
    close(lruHitRateFromReuse(reuse.layers[0]!, C), h.cold.layers[0]!, `layer 0 C=${C}`);
    close(lruHitRateFromReuse(reuse.layers[1]!, C), h.cold.layers[1]!, `layer 1 C=${C}`);
    close(lruHitRateFromReuse(reuse.model, 2 * C), h.cold.model, `shared C=${C}`);
  }
  // Hand case: 0 1 0 2 1 -> distances: -, -, 1, -, 2. Cache 2 hits only the 0 (d = 1 < 2).
  const hand = lruReuse(oneLayer([0, 1, 0, 2, 1]));
  assert.equal(hand.model.firstUses, 3);
  close(lruHitRateFromReuse(hand.model, 2), 1 / 5, 'hand');
  close(lruHitRateFromReuse(hand.model, 3), 2 / 5, 'hand 3');
});

// A plain SCH straight from metrics.md's rules, for checking the optimised one: the cache is an array,
// and at every eviction each candidate's window count is recounted from the trace itself.
// rows[t] = token t's ids in processing order. Returns warm and cold hits.
function plainSch(rows: number[][], m: number, C: number): { warm: number; cold: number } {
  const cache: number[] = [];
  const lastUse = new Map<number, number>();
  const used = new Set<number>();
  let warm = 0;
  let cold = 0;
  let clock = 0;
  for (let t = 0; t < rows.length; t++) {
    const row = rows[t]!;
    const before = new Set(cache);
    for (const e of row) {
      if (before.has(e)) {
        warm++;
        cold++;
      } else if (!used.has(e)) {
        if (used.size < C) warm++;
        used.add(e);
      }
    }
    row.forEach((e, j) => {
      lastUse.set(e, ++clock);
      if (cache.includes(e)) return;
      cache.push(e);
      if (cache.length <= C) return;
      // Window of tokens t .. t + m - 1, without the selections processed so far (token t up to j).
      const remaining = (x: number): number => {
        let n = row.slice(j + 1).filter((y) => y === x).length;
        for (let u = t + 1; u < Math.min(t + m, rows.length); u++) n += rows[u]!.filter((y) => y === x).length;
        return n;
      };
      let victim = -1;
      for (const x of cache) {
        if (x === e) continue;
        if (victim < 0 || remaining(x) < remaining(victim)
          || (remaining(x) === remaining(victim) && lastUse.get(x)! < lastUse.get(victim)!)) victim = x;
      }
      cache.splice(cache.indexOf(victim), 1);
    });
  }
  return { warm, cold };
}

test('SCH equals a plain replay of the metrics.md rules on random traces (hit counts exactly)', () => {
  let x = 4242;
  const rnd = (n: number) => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 8) % n;
  // [layers, experts, k, sequence lengths, m values, C values]
  const cases: [number, number, number, number[], number[], number[]][] = [
    [1, 6, 1, [40, 25], [1, 2, 3, 7], [1, 2, 3, 6, 8]],
    [2, 8, 2, [30, 1, 12], [1, 3, 5, 40], [1, 2, 4, 7, 8, 9]],
    [3, 12, 3, [50], [1, 2, 6, 16], [3, 5, 8, 12, 20]],
    [2, 16, 4, [35, 20], [2, 4, 9], [4, 6, 10, 16]],
  ];
  for (const [L, E, k, lengths, ms, Cs] of cases) {
    // Selections with locality (each of the previous token's experts kept with probability 1/2), so
    // window counts above 1 and every eviction branch occur.
    const seqs = lengths.map((n) => {
      const prev: number[][] = Array.from({ length: L }, () => []);
      return Array.from({ length: n }, () => Array.from({ length: L }, (_, l) => {
        const sel = prev[l]!.filter(() => rnd(2) === 0).slice(0, k);
        while (sel.length < k) {
          const e = rnd(E);
          if (!sel.includes(e)) sel.push(e);
        }
        for (let i = sel.length - 1; i > 0; i--) {
          const j = rnd(i + 1);
          [sel[i], sel[j]] = [sel[j]!, sel[i]!];
        }
        return (prev[l] = sel);
      }));
    });
    const r = routingFromArrays(seqs, E);
    const accesses = lengths.reduce((a, n) => a + n, 0) * k;
    for (const m of ms) {
      for (const C of Cs) {
        const got = sch(r, m, C);
        const total = (rowsOf: (tok: number[][]) => number[], cap: number) => {
          let warm = 0;
          let cold = 0;
          for (const s of seqs) {
            const h = plainSch(s.map(rowsOf), m, cap);
            warm += h.warm;
            cold += h.cold;
          }
          return { warm, cold };
        };
        // Equal rates over the same access count = equal hit counts (the same integer division).
        const what = `L=${L} E=${E} k=${k} m=${m} C=${C}`;
        for (let l = 0; l < L; l++) {
          const want = total((tok) => tok[l]!, C);
          assert.equal(got.layers[l], want.warm / accesses, `${what} layer ${l} warm`);
          assert.equal(got.cold.layers[l], want.cold / accesses, `${what} layer ${l} cold`);
        }
        const want = total((tok) => tok.flatMap((sel, l) => sel.map((e) => l * E + e)), C * L);
        assert.equal(got.model, want.warm / (accesses * L), `${what} model warm`);
        assert.equal(got.cold.model, want.cold / (accesses * L), `${what} model cold`);
      }
    }
  }
});
