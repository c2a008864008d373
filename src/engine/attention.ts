// Causal multi-head attention with grouped-query heads over the KV cache.
import { causalAttention as nativeCausalAttention } from '../native/index.js';
import { f16ToF32 } from '../model/quant/f16.js';
import type { KVArray } from './kv-cache.js';

export interface AttentionShape {
  nHead: number;
  nHeadKv: number;
  headDim: number;
}

/**
 * q: nTokens rows of nHead*headDim (already normed and roped); the tokens sit at positions
 * start..start+nTokens-1. keys/values: [pos][nHeadKv][headDim] for positions 0..start+nTokens-1, both f32
 * or both f16 bits (a Uint16Array, as the f16 KV cache stores them; each value is widened exactly to f32).
 * Token t attends to positions 0..start+t (causal). Query head h reads kv head floor(h / (nHead/nHeadKv)).
 * Scores are scaled by 1/sqrt(headDim) and softmaxed in double. Writes nTokens rows of nHead*headDim to out.
 * `threads` > 1 lets the native kernel split the heads over its thread pool (same bits for any count).
 */
export function causalAttention(q: Float32Array, keys: KVArray, values: KVArray, start: number,
  nTokens: number, s: AttentionShape, out: Float32Array, threads = 1): Float32Array {
  nativeCausalAttention(q, keys, values, start, nTokens, s.nHead, s.nHeadKv, s.headDim, out, threads);
  return out;
}

/** The same computation in plain TypeScript (the reference the native kernel is tested against). */
export function causalAttentionReference(q: Float32Array, kvKeys: KVArray, kvValues: KVArray, start: number,
  nTokens: number, s: AttentionShape, out: Float32Array): Float32Array {
  const { nHead, nHeadKv, headDim } = s;
  const keys = asF32(kvKeys), values = asF32(kvValues);
  const group = nHead / nHeadKv;
  const qRow = nHead * headDim;
  const kvRow = nHeadKv * headDim;
  const scale = 1 / Math.sqrt(headDim);
  const scores = new Float64Array(start + nTokens);
  const acc = new Float64Array(headDim);
  for (let t = 0; t < nTokens; t++) {
    const last = start + t; // inclusive
    for (let h = 0; h < nHead; h++) {
      const qOff = t * qRow + h * headDim;
      const kvHead = Math.floor(h / group);
      let max = -Infinity;
      for (let p = 0; p <= last; p++) {
        const kOff = p * kvRow + kvHead * headDim;
        let dot = 0;
        for (let i = 0; i < headDim; i++) dot += q[qOff + i]! * keys[kOff + i]!;
        const sc = dot * scale;
        scores[p] = sc;
        if (sc > max) max = sc;
      }
      let sum = 0;
      for (let p = 0; p <= last; p++) {
        const e = Math.exp(scores[p]! - max);
        scores[p] = e;
        sum += e;
      }
      acc.fill(0);
      for (let p = 0; p <= last; p++) {
        const w = scores[p]! / sum;
        const vOff = p * kvRow + kvHead * headDim;
        for (let i = 0; i < headDim; i++) acc[i]! += w * values[vOff + i]!;
      }
      for (let i = 0; i < headDim; i++) out[qOff + i] = acc[i]!;
    }
  }
  return out;
}

/** f32 K/V as is; f16 bits widened to f32 values. */
function asF32(a: KVArray): Float32Array {
  if (a instanceof Float32Array) return a;
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = f16ToF32(a[i]!);
  return out;
}
