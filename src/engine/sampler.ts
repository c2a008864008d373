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
    const { temperature, topK, topP, minP } = this.options;
    if (temperature <= 0) return argmax(logits, offset, n);

    // Candidates, most probable first; filters see the untempered distribution (as in llama.cpp).
    let ids = candidatesByValue(logits, offset, n, topK);
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
}
