// Token sampling like llama.cpp's default chain: top-k -> top-p -> min-p -> temperature -> draw from a
// seeded PRNG. Temperature 0 is greedy argmax. Log-probabilities reported to users come from the plain
// softmax of the logits, before temperature or any filter.
import { randomInt } from 'node:crypto';
import { mulberry32 } from './prng.js';

export interface SamplerOptions {
  /** 0 = greedy. */
  temperature: number;
  /** Keep the k most probable tokens; 0 = off. */
  topK: number;
  /** Keep the smallest set of most probable tokens whose mass reaches p; 1 = off. */
  topP: number;
  /** Drop tokens with p < minP * p_max; 0 = off. */
  minP: number;
  /** PRNG seed (u32); random when absent. */
  seed?: number;
}

/** The sampler's random source: uniform numbers in [0, 1) from a seed (see prng.ts). */
export class Prng {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
}

/** log softmax of `n` logits from `offset`, in double (log-sum-exp with the max subtracted). */
export function logSoftmax(logits: ArrayLike<number>, offset = 0, n = logits.length - offset): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, logits[offset + i]!);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(logits[offset + i]! - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = logits[offset + i]! - lse;
  return out;
}

/** Index of the largest value (ties: lowest index). */
export function argmax(v: ArrayLike<number>, offset = 0, n = v.length - offset): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (v[offset + i]! > v[offset + best]!) best = i;
  return best;
}

/** The n largest entries, sorted by value descending (ties: lower id first). */
export function topEntries(values: ArrayLike<number>, n: number): { id: number; value: number }[] {
  if (n <= 0) return [];
  return candidatesByValue(values, 0, values.length, n).map((id) => ({ id, value: values[id]! }));
}

/**
 * Ids of the `limit` largest values among values[offset .. offset+n) (ids relative to offset), sorted
 * descending, ties by lower id. limit <= 0 means all. A bounded insertion keeps small limits cheap on
 * large vocabularies.
 */
function candidatesByValue(values: ArrayLike<number>, offset: number, n: number, limit: number): number[] {
  const better = (a: number, b: number) => values[offset + a]! > values[offset + b]! || (values[offset + a] === values[offset + b] && a < b);
  if (limit <= 0 || limit >= n) {
    const ids = Array.from({ length: n }, (_, i) => i);
    return ids.sort((a, b) => (better(a, b) ? -1 : better(b, a) ? 1 : 0));
  }
  const top: number[] = [];
  for (let i = 0; i < n; i++) {
    if (top.length === limit && !better(i, top[limit - 1]!)) continue;
    let j = top.length === limit ? limit - 1 : top.length;
    while (j > 0 && better(i, top[j - 1]!)) {
      top[j] = top[j - 1]!;
      j--;
    }
    top[j] = i;
  }
  return top;
}

export class Sampler {
  readonly options: Readonly<SamplerOptions>;
  readonly seed: number;
  private readonly rng: Prng;

  constructor(options: SamplerOptions) {
    this.options = { ...options };
    this.seed = options.seed ?? randomInt(0, 2 ** 32);
    this.rng = new Prng(this.seed);
  }

  /** Picks a token from one row of `n` logits starting at `offset`. */
  sample(logits: ArrayLike<number>, offset = 0, n = logits.length - offset): number {
    const { temperature, topK } = this.options;
    if (temperature <= 0) return argmax(logits, offset, n);
    // A small top-k gives its candidates in order at little cost; without one, nothing is sorted.
    if (topK > 0 && topK < n) return this.sampleOrdered(candidatesByValue(logits, offset, n, topK), logits, offset);
    return this.sampleUnordered(logits, offset, n);
  }

  /** The chain over candidate ids sorted most probable first. */
  private sampleOrdered(candidates: number[], logits: ArrayLike<number>, offset: number): number {
    const { temperature, topP, minP } = this.options;
    // Filters see the untempered distribution (as in llama.cpp).
    let ids = candidates;
    const logit = (id: number) => logits[offset + id]!;
    const maxLogit = logit(ids[0]!);
    let probs = ids.map((id) => Math.exp(logit(id) - maxLogit));
    const norm = (ps: number[]) => {
      const s = ps.reduce((a, b) => a + b, 0);
      return ps.map((p) => p / s);
    };
    probs = norm(probs);

    if (topP < 1) {
      let mass = 0;
      let keep = ids.length;
      for (let i = 0; i < ids.length; i++) {
        mass += probs[i]!;
        if (mass >= topP) {
          keep = i + 1;
          break;
        }
      }
      ids = ids.slice(0, keep);
      probs = norm(probs.slice(0, keep));
    }
    if (minP > 0) {
      const threshold = minP * probs[0]!;
      let keep = 1;
      while (keep < ids.length && probs[keep]! >= threshold) keep++;
      ids = ids.slice(0, keep);
    }

    // Temperature, then draw from the softmax of the surviving candidates.
    const weights = ids.map((id) => Math.exp((logit(id) - maxLogit) / temperature));
    const total = weights.reduce((a, b) => a + b, 0);
    let u = this.rng.next() * total;
    for (let i = 0; i < ids.length; i++) {
      u -= weights[i]!;
      if (u < 0) return ids[i]!;
    }
    return ids[ids.length - 1]!;
  }

  /**
   * The same chain over all n tokens without sorting them: top-p's cut and the draw are found by
   * cumulative-weight selection in the sorted order (the same token a walk down the sorted list gives),
   * min-p is a threshold. Expected O(n) instead of a sort of the whole vocabulary per token.
   */
  private sampleUnordered(logits: ArrayLike<number>, offset: number, n: number): number {
    const { temperature, topP, minP } = this.options;
    const ids = new Int32Array(n);
    for (let i = 0; i < n; i++) ids[i] = i;
    const maxLogit = logits[offset + argmax(logits, offset, n)]!;
    const order = new CumulativeOrder(logits, offset, ids);
    let count = n;
    if (topP < 1 || minP > 0) {
      // Untempered probabilities, unnormalised: the best token has weight exp(0) = 1.
      const e = new Float64Array(n);
      let sum = 0;
      for (let i = 0; i < n; i++) sum += e[i] = Math.exp(logits[offset + i]! - maxLogit);
      if (topP < 1) {
        // The most probable tokens whose mass reaches topP: the select leaves them in ids[0 .. cut].
        count = order.select(e, count, topP * sum, true) + 1;
        sum = 0;
        for (let i = 0; i < count; i++) sum += e[i]!;
      }
      if (minP > 0) {
        const threshold = minP * (1 / sum);
        let kept = 0;
        for (let i = 0; i < count; i++) {
          if (e[i]! / sum >= threshold) {
            ids[kept] = ids[i]!;
            kept++;
          }
        }
        count = kept;
      }
    }
    const w = new Float64Array(count);
    let total = 0;
    for (let i = 0; i < count; i++) total += w[i] = Math.exp((logits[offset + ids[i]!]! - maxLogit) / temperature);
    return ids[order.select(w, count, this.rng.next() * total, false)]!;
  }
}

/**
 * Cumulative-weight selection over ids[0 .. count) in the sampler's order (value descending, ties by
 * lower id) without sorting: quickselect partitions around a pivot and goes to the side where the
 * running sum crosses the target. Moves ids and their weights together.
 */
class CumulativeOrder {
  constructor(private readonly values: ArrayLike<number>, private readonly offset: number, private readonly ids: Int32Array) {}

  private better(a: number, b: number): boolean {
    const va = this.values[this.offset + a]!;
    const vb = this.values[this.offset + b]!;
    return va > vb || (va === vb && a < b);
  }

  private swap(w: Float64Array, i: number, j: number): void {
    const ids = this.ids;
    const id = ids[i]!;
    ids[i] = ids[j]!;
    ids[j] = id;
    const t = w[i]!;
    w[i] = w[j]!;
    w[j] = t;
  }

  /**
   * Position of the first entry, in sorted order, at which the running sum of weights exceeds `target`
   * (reaches it, with `reach`); afterwards ids[0 .. position) are exactly the entries before it in that
   * order. Past the end (rounding) it is the last entry.
   */
  select(w: Float64Array, count: number, target: number, reach: boolean): number {
    const ids = this.ids;
    const crossed = (sum: number, t: number) => (reach ? sum >= t : sum > t);
    let lo = 0;
    let hi = count;
    let t = target;
    while (hi - lo > 16) {
      // Median of three as the pivot, moved to hi - 1.
      const mid = (lo + hi) >>> 1;
      const a = ids[lo]!;
      const b = ids[mid]!;
      const c = ids[hi - 1]!;
      const p = this.better(a, b) !== this.better(a, c) ? lo : this.better(b, a) !== this.better(b, c) ? mid : hi - 1;
      this.swap(w, p, hi - 1);
      const pivot = ids[hi - 1]!;
      let store = lo;
      let mass = 0;
      for (let i = lo; i < hi - 1; i++) {
        if (this.better(ids[i]!, pivot)) {
          this.swap(w, i, store);
          mass += w[store]!;
          store++;
        }
      }
      this.swap(w, store, hi - 1);
      if (store > lo && crossed(mass, t)) {
        hi = store;
        continue;
      }
      t -= mass;
      if (crossed(w[store]!, t)) return store;
      t -= w[store]!;
      lo = store + 1;
    }
    // A few left: sort them (insertion) and walk.
    for (let i = lo + 1; i < hi; i++) {
      for (let j = i; j > lo && this.better(ids[j]!, ids[j - 1]!); j--) this.swap(w, j, j - 1);
    }
    for (let i = lo; i < hi; i++) {
      if (crossed(w[i]!, t)) return i;
      t -= w[i]!;
    }
    return Math.max(hi - 1, 0);
  }
}
