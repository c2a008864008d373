// Rotary position embedding on the first n_rot dimensions of each head.
// theta_i = pos * base^(-2i/n_rot) for i < n_rot/2; each pair (a, b) -> (a cos - b sin, a sin + b cos).
// 'normal' (llama) pairs adjacent dimensions (2i, 2i+1); 'neox' pairs (i, i + n_rot/2).
import type { RopeStyle } from '../model/arch/index.js';

export interface RopeParams {
  style: RopeStyle;
  /** Dimensions rotated per head (even, <= headDim); the rest pass through. */
  nRot: number;
  headDim: number;
  base: number;
}

/** cos and sin of theta_i for one position: nRot/2 values each. */
export function ropeAngles(pos: number, nRot: number, base: number): { cos: Float64Array; sin: Float64Array } {
  const half = nRot / 2;
  const cos = new Float64Array(half);
  const sin = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    const theta = pos * Math.pow(base, (-2 * i) / nRot);
    cos[i] = Math.cos(theta);
    sin[i] = Math.sin(theta);
  }
  return { cos, sin };
}

export type RopeAngles = ReturnType<typeof ropeAngles>;

/**
 * Rotates, in place, `nHeads` heads of one token stored contiguously from `offset` in `x`
 * ([head][headDim]), for position `pos`. `angles` may be passed in when the caller already has them
 * for `pos` (q and k of one token share them).
 */
export function applyRope(x: Float32Array, offset: number, nHeads: number, pos: number, p: RopeParams,
  angles: RopeAngles = ropeAngles(pos, p.nRot, p.base)): void {
  const { cos, sin } = angles;
  const half = p.nRot / 2;
  for (let h = 0; h < nHeads; h++) {
    const base = offset + h * p.headDim;
    for (let i = 0; i < half; i++) {
      const ia = p.style === 'normal' ? base + 2 * i : base + i;
      const ib = p.style === 'normal' ? ia + 1 : ia + half;
      const a = x[ia]!;
      const b = x[ib]!;
      x[ia] = a * cos[i]! - b * sin[i]!;
      x[ib] = a * sin[i]! + b * cos[i]!;
    }
  }
}
