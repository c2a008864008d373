// Sampler: hand-computed distributions for each filter, greedy, seeded determinism and frequencies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Prng, Sampler, argmax, logSoftmax, topEntries, type SamplerOptions } from '../src/engine/sampler.js';

const OFF: SamplerOptions = { temperature: 1, topK: 0, topP: 1, minP: 0 };
const probs = [0.5, 0.3, 0.2];
const logits = Float32Array.from(probs, Math.log);

/** The set of tokens a sampler can produce, from many draws. */
function support(opts: SamplerOptions, l: ArrayLike<number>, draws = 2000): number[] {
  const s = new Sampler({ ...opts, seed: 7 });
  const seen = new Set<number>();
  for (let i = 0; i < draws; i++) seen.add(s.sample(l));
  return [...seen].sort((a, b) => a - b);
}

function frequencies(opts: SamplerOptions, l: ArrayLike<number>, draws: number): number[] {
  const s = new Sampler({ ...opts, seed: 12345 });
  const counts = new Array<number>(l.length).fill(0);
  for (let i = 0; i < draws; i++) counts[s.sample(l)]!++;
  return counts.map((c) => c / draws);
}

test('logSoftmax: log of the plain softmax, sums to 1, shift invariant', () => {
  const lp = logSoftmax(logits);
  probs.forEach((p, i) => assert.ok(Math.abs(lp[i]! - Math.log(p)) < 1e-6));
  const shifted = logSoftmax(logits.map((v) => v + 1000));
  lp.forEach((v, i) => assert.ok(Math.abs(v - shifted[i]!) < 1e-4));
  assert.ok(Math.abs(lp.reduce((a, v) => a + Math.exp(v), 0) - 1) < 1e-12);
  // huge logits do not overflow
  const big = logSoftmax([1e30, 0]);
  assert.equal(big[0], 0);
  assert.equal(big[1], -1e30);
});

test('argmax and topEntries: ties go to the lower id', () => {
  assert.equal(argmax([1, 3, 3, 2]), 1);
  assert.deepEqual(topEntries([1, 3, 3, 2], 3).map((e) => e.id), [1, 2, 3]);
});

test('temperature 0 is greedy argmax whatever the seed', () => {
  for (const seed of [1, 2, 3]) {
    const s = new Sampler({ temperature: 0, topK: 40, topP: 0.95, minP: 0.05, seed });
    assert.equal(s.sample([0.1, 2.5, -1, 2.4]), 1);
  }
});

test('top-k keeps the k most probable', () => {
  assert.deepEqual(support({ ...OFF, topK: 1 }, logits), [0]);
  assert.deepEqual(support({ ...OFF, topK: 2 }, logits), [0, 1]);
  assert.deepEqual(support({ ...OFF, topK: 0 }, logits), [0, 1, 2]);
});

test('top-p keeps the smallest set whose mass reaches p', () => {
  assert.deepEqual(support({ ...OFF, topP: 0.7 }, logits), [0, 1]); // 0.5 < 0.7 <= 0.8
  assert.deepEqual(support({ ...OFF, topP: 0.4 }, logits), [0]); // at least one, 0.5 >= 0.4
  assert.deepEqual(support({ ...OFF, topP: 0.9 }, logits), [0, 1, 2]);
});

test('min-p drops tokens below min_p * p_max', () => {
  assert.deepEqual(support({ ...OFF, minP: 0.5 }, logits), [0, 1]); // threshold 0.25: 0.2 goes
  assert.deepEqual(support({ ...OFF, minP: 0.39 }, logits), [0, 1, 2]); // threshold 0.195
  assert.deepEqual(support({ ...OFF, minP: 0.61 }, logits), [0]); // threshold 0.305
});

test('the same seed gives the same tokens; different seeds differ', () => {
  const draw = (seed: number) => {
    const s = new Sampler({ ...OFF, seed });
    return Array.from({ length: 50 }, () => s.sample(logits));
  };
  assert.deepEqual(draw(42), draw(42));
  assert.notDeepEqual(draw(42), draw(43));
  assert.equal(new Sampler({ ...OFF, seed: 9 }).seed, 9);
});

test('sampled frequencies follow the probabilities (temperature 1, no filters)', () => {
  const f = frequencies(OFF, logits, 20000);
  probs.forEach((p, i) => assert.ok(Math.abs(f[i]! - p) < 0.015, `token ${i}: ${f[i]} vs ${p}`));
});

test('temperature reshapes the distribution: p^(1/T) renormalised', () => {
  const T = 0.5;
  const want = probs.map((p) => p ** (1 / T));
  const sum = want.reduce((a, b) => a + b, 0);
  const f = frequencies({ ...OFF, temperature: T }, logits, 20000);
  want.forEach((w, i) => assert.ok(Math.abs(f[i]! - w / sum) < 0.015, `token ${i}: ${f[i]} vs ${w / sum}`));
});

test('filters renormalise the survivors: top-k 2 gives 5/8 and 3/8', () => {
  const f = frequencies({ ...OFF, topK: 2 }, logits, 20000);
  assert.ok(Math.abs(f[0]! - 0.625) < 0.015);
  assert.ok(Math.abs(f[1]! - 0.375) < 0.015);
  assert.equal(f[2], 0);
});

test('Prng: uniform in [0, 1), roughly mean 1/2', () => {
  const r = new Prng(1);
  let sum = 0;
  for (let i = 0; i < 10000; i++) {
    const u = r.next();
    assert.ok(u >= 0 && u < 1);
    sum += u;
  }
  assert.ok(Math.abs(sum / 10000 - 0.5) < 0.02);
});

/**
 * The chain written out the plain way, as a reference: sort every token (most probable first, ties by
 * lower id), top-k, top-p on the softmax, min-p on the renormalised survivors, then one uniform draw
 * walked down the sorted survivors' tempered weights. One PRNG number per draw, none when greedy.
 */
const sortedIds = new WeakMap<ArrayLike<number>, number[]>(); // the test reuses each vector: sort it once
class ReferenceSampler {
  private readonly rng: Prng;
  constructor(private readonly o: SamplerOptions & { seed: number }) {
    this.rng = new Prng(o.seed);
  }

  sample(logits: ArrayLike<number>): number {
    const { temperature, topK, topP, minP } = this.o;
    const n = logits.length;
    let order = sortedIds.get(logits);
    if (!order) {
      order = Array.from({ length: n }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
      sortedIds.set(logits, order);
    }
    if (temperature <= 0) return order[0]!;
    let ids = topK > 0 ? order.slice(0, topK) : order;
    const max = logits[ids[0]!]!;
    const softmax = (sel: number[]) => {
      const e = sel.map((id) => Math.exp(logits[id]! - max));
      const s = e.reduce((a, b) => a + b, 0);
      return e.map((v) => v / s);
    };
    if (topP < 1) {
      const p = softmax(ids);
      let mass = 0;
      let keep = 0;
      while (keep < ids.length && mass < topP) mass += p[keep++]!;
      ids = ids.slice(0, Math.max(keep, 1));
    }
    if (minP > 0) {
      const p = softmax(ids);
      ids = ids.filter((_, i) => p[i]! >= minP * p[0]!);
    }
    const w = ids.map((id) => Math.exp((logits[id]! - max) / temperature));
    let u = this.rng.next() * w.reduce((a, b) => a + b, 0);
    for (let i = 0; i < ids.length; i++) {
      u -= w[i]!;
      if (u < 0) return ids[i]!;
    }
    return ids[ids.length - 1]!;
  }
}

test('every filter combination draws the same tokens as the plain sorted reference, seed for seed', () => {
  let x = 2024;
  const rnd = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 2 ** 32;
  // Logit vectors of many sizes: smooth, peaked (one or a few dominant tokens), with many ties
  // (values on a coarse grid), and with masked (-Infinity) tokens.
  const vectors: Float32Array[] = [];
  for (let v = 0; v < 24; v++) {
    const n = 1 + Math.floor(rnd() * (v % 4 === 0 ? 3000 : 400));
    const kind = v % 4;
    vectors.push(Float32Array.from({ length: n }, () => {
      const g = (rnd() + rnd() + rnd() - 1.5) * 4;
      if (kind === 1) return rnd() < 0.01 ? g + 12 : g;
      if (kind === 2) return Math.round(g * 2) / 2;
      if (kind === 3 && rnd() < 0.3) return -Infinity;
      return g;
    }));
  }
  vectors.push(Float32Array.from({ length: 40000 }, () => (rnd() - 0.5) * 20));
  let draws = 0;
  for (const topK of [0, 1, 40]) {
    for (const topP of [1, 0.9]) {
      for (const minP of [0, 0.05]) {
        for (const temperature of [0, 0.7, 1]) {
          vectors.forEach((l, v) => {
            const opts = { temperature, topK, topP, minP, seed: 1000 * v + topK };
            const s = new Sampler(opts);
            const ref = new ReferenceSampler(opts);
            for (let d = 0; d < (l.length > 10000 ? 3 : 8); d++) {
              assert.equal(s.sample(l), ref.sample(l), `vector ${v} (n ${l.length}), ${JSON.stringify(opts)}, draw ${d}`);
              draws++;
            }
          });
        }
      }
    }
  }
  assert.ok(draws > 5000);
});

test('a row inside a larger buffer samples as the row alone', () => {
  const row = Float32Array.from({ length: 500 }, (_, i) => Math.sin(i * 1.7) * 3);
  const buf = new Float32Array(1500).fill(50);
  buf.set(row, 500);
  for (const topK of [0, 40]) {
    const opts = { temperature: 1, topK, topP: 0.9, minP: 0.05, seed: 3 };
    const a = new Sampler(opts);
    const b = new Sampler(opts);
    for (let d = 0; d < 20; d++) assert.equal(a.sample(buf, 500, 500), b.sample(row));
  }
});
