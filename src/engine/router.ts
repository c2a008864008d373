// MoE router: softmax over all experts, the k most probable (ties: lower id first), optionally
// renormalised so the k weights sum to 1.

export interface Route {
  /** Selected expert ids, most probable first. */
  experts: number[];
  /** Their weights, in the same order. */
  weights: number[];
}

/** Softmax of `n` logits starting at `offset` (max subtracted first), in double. */
export function softmax(logits: ArrayLike<number>, offset = 0, n = logits.length - offset): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, logits[offset + i]!);
  const p = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    p[i] = Math.exp(logits[offset + i]! - max);
    sum += p[i]!;
  }
  for (let i = 0; i < n; i++) p[i]! /= sum;
  return p;
}

/** Routes one token from its router logits (nExpert values from `offset`). */
export function route(logits: ArrayLike<number>, offset: number, nExpert: number, k: number, normalize: boolean): Route {
  const probs = softmax(logits, offset, nExpert);
  const experts: number[] = [];
  const taken = new Uint8Array(nExpert);
  for (let j = 0; j < k; j++) {
    let best = -1;
    for (let e = 0; e < nExpert; e++) {
      if (!taken[e] && (best < 0 || probs[e]! > probs[best]!)) best = e; // strict >: ties keep the lower id
    }
    taken[best] = 1;
    experts.push(best);
  }
  let weights = experts.map((e) => probs[e]!);
  if (normalize) {
    const sum = weights.reduce((a, b) => a + b, 0);
    weights = weights.map((w) => w / sum);
  }
  return { experts, weights };
}
