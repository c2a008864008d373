// ggml's 256-value super-block formats (Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K): decoders and ports of the
// reference quantizers (quantize_row_*_ref with their helpers make_qkx2_quants, make_qx_quants,
// make_q3_quants). Every float operation of the C code is rounded to f32 (Math.fround), in the same
// order, so the bytes match ggml's; ggml-base is built without FMA contraction, so no fused ops here.
// Decoders multiply small integers by f16/f32 scales (exact products) and subtract a min (one rounding),
// so they give ggml's values exactly.
import { readF16, writeF16 } from './f16.js';
import type { BlockDecoder, BlockEncoder } from './legacy.js';

const fr = Math.fround;
const QK_K = 256;
const GROUP_MAX_EPS = fr(1e-15);

/** C's a*b + c in f32, not fused: two roundings (checked against llama.cpp's bytes; FMA does not match). */
function mad(a: number, b: number, c: number): number {
  return fr(fr(a * b) + c);
}
const scratchF = new Float32Array(1);
const scratchU = new Uint32Array(scratchF.buffer);

/** ggml's nearest_int: adds 1.5*2^23 in f32 and reads the mantissa (round half to even). */
export function nearestInt(v: number): number {
  scratchF[0] = v + 12582912;
  return (scratchU[0]! & 0x007fffff) - 0x00400000;
}

const clamp = (v: number, lo: number, hi: number) => (v < lo ? lo : v > hi ? hi : v);
const int8 = (v: number) => (v << 24) >> 24;

/** The 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes at `o` (get_scale_min_k4). */
function scaleMinK4(q: Uint8Array, o: number, j: number): [number, number] {
  if (j < 4) return [q[o + j]! & 63, q[o + j + 4]! & 63];
  return [
    (q[o + j + 4]! & 0x0f) | ((q[o + j - 4]! >> 6) << 4),
    (q[o + j + 4]! >> 4) | ((q[o + j]! >> 6) << 4),
  ];
}

/** Packs eight 6-bit scales and mins into 12 bytes at `o` (inverse of scaleMinK4). */
function packScaleMinK4(out: Uint8Array, o: number, ls: Uint8Array, lm: Uint8Array): void {
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      out[o + j] = ls[j]!;
      out[o + j + 4] = lm[j]!;
    } else {
      out[o + j + 4] = (ls[j]! & 0x0f) | ((lm[j]! & 0x0f) << 4);
      out[o + j - 4]! |= (ls[j]! >> 4) << 6;
      out[o + j]! |= (lm[j]! >> 4) << 6;
    }
  }
}

// ------------------------------------------------------------------ quantizer helpers (ggml ports)

interface ScaleMin { scale: number; min: number }

/**
 * make_qkx2_quants: fits x[off..off+n) ~ scale*L - min with L in [0, nmax], weighted, trying nstep+1
 * scale candidates around nmax/(max-min). Writes L[lOff..] and returns the scale and the (positive) min.
 */
function makeQkx2Quants(
  n: number, nmax: number, x: Float32Array, off: number, w: Float32Array, L: Uint8Array, lOff: number,
  Laux: Uint8Array, rmin: number, rdelta: number, nstep: number, useMad: boolean,
): ScaleMin {
  let min = x[off]!;
  let max = x[off]!;
  let sumW = w[0]!;
  let sumX = fr(sumW * x[off]!);
  for (let i = 1; i < n; i++) {
    const xi = x[off + i]!;
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    sumW = fr(sumW + w[i]!);
    sumX = mad(w[i]!, xi, sumX);
  }
  if (min > 0) min = 0;
  if (max === min) {
    for (let i = 0; i < n; i++) L[lOff + i] = 0;
    return { scale: 0, min: -min };
  }
  let iscale = fr(nmax / fr(max - min));
  let scale = fr(1 / iscale);
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    const l = clamp(nearestInt(fr(iscale * fr(x[off + i]! - min))), 0, nmax);
    L[lOff + i] = l;
    let diff = fr(mad(scale, l, min) - x[off + i]!);
    diff = useMad ? Math.abs(diff) : fr(diff * diff);
    bestError = mad(w[i]!, diff, bestError);
  }
  if (nstep < 1) return { scale, min: -min };
  for (let is = 0; is <= nstep; is++) {
    // min is the best fit so far, so later candidates are spread over max - (that min), as in ggml
    iscale = fr(fr(mad(rdelta, is, rmin) + nmax) / fr(max - min));
    let sumL = 0, sumL2 = 0, sumXL = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[off + i]!;
      const l = clamp(nearestInt(fr(iscale * fr(xi - min))), 0, nmax);
      Laux[i] = l;
      const wl = fr(w[i]! * l);
      sumL = fr(sumL + wl);
      sumL2 = mad(wl, l, sumL2);
      sumXL = mad(wl, xi, sumXL);
    }
    const D = mad(sumW, sumL2, -fr(sumL * sumL));
    if (D > 0) {
      let thisScale = fr(mad(sumW, sumXL, -fr(sumX * sumL)) / D);
      let thisMin = fr(mad(sumL2, sumX, -fr(sumL * sumXL)) / D);
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = fr(sumXL / sumL2);
      }
      let curError = 0;
      for (let i = 0; i < n; i++) {
        let diff = fr(mad(thisScale, Laux[i]!, thisMin) - x[off + i]!);
        diff = useMad ? Math.abs(diff) : fr(diff * diff);
        curError = mad(w[i]!, diff, curError);
      }
      if (curError < bestError) {
        for (let i = 0; i < n; i++) L[lOff + i] = Laux[i]!;
        bestError = curError;
        scale = thisScale;
        min = thisMin;
      }
    }
  }
  return { scale, min: -min };
}

/** Signed value of largest magnitude in x[off..off+n) (first wins) and that magnitude. */
function signedAmax(x: Float32Array, off: number, n: number): [number, number] {
  let max = 0, amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[off + i]!);
    if (ax > amax) { amax = ax; max = x[off + i]!; }
  }
  return [max, amax];
}

/**
 * make_qx_quants with rmse_type 1 and no importance weights (w = x^2): symmetric fit
 * x ~ scale*(L - nmax), L in [0, 2*nmax), trying 19 scales around nmax/max. Writes L, returns scale.
 */
function makeQxQuants(n: number, nmax: number, x: Float32Array, off: number, L: Uint8Array, lOff: number): number {
  const [max, amax] = signedAmax(x, off, n);
  if (amax < GROUP_MAX_EPS) {
    for (let i = 0; i < n; i++) L[lOff + i] = 0;
    return 0;
  }
  let iscale = fr(-nmax / max);
  let sumlx = 0, suml2 = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[off + i]!;
    const l = clamp(nearestInt(fr(iscale * xi)), -nmax, nmax - 1);
    L[lOff + i] = l + nmax;
    const w = fr(xi * xi);
    sumlx = fr(sumlx + fr(fr(w * xi) * l));
    suml2 = fr(suml2 + fr(fr(w * l) * l));
  }
  let scale = suml2 ? fr(sumlx / suml2) : 0;
  let best = fr(scale * sumlx);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    iscale = fr(-fr(nmax + fr(fr(0.1) * is)) / max);
    sumlx = 0;
    suml2 = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[off + i]!;
      const l = clamp(nearestInt(fr(iscale * xi)), -nmax, nmax - 1);
      const w = fr(xi * xi);
      sumlx = fr(sumlx + fr(fr(w * xi) * l));
      suml2 = fr(suml2 + fr(fr(w * l) * l));
    }
    if (suml2 > 0 && fr(sumlx * sumlx) > fr(best * suml2)) {
      for (let i = 0; i < n; i++) {
        L[lOff + i] = nmax + clamp(nearestInt(fr(iscale * x[off + i]!)), -nmax, nmax - 1);
      }
      scale = fr(sumlx / suml2);
      best = fr(scale * sumlx);
    }
  }
  return scale;
}

/**
 * make_q3_quants with do_rmse: symmetric fit x ~ scale*l, l in [-nmax, nmax), refined by up to five
 * passes that move single values to a better level. Writes L (= l + nmax), returns scale.
 */
function makeQ3Quants(n: number, nmax: number, x: Float32Array, off: number, L: Int8Array, lOff: number): number {
  const [max, amax] = signedAmax(x, off, n);
  if (amax < GROUP_MAX_EPS) {
    for (let i = 0; i < n; i++) L[lOff + i] = 0;
    return 0;
  }
  const iscale = fr(-nmax / max);
  let sumlx = 0, suml2 = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[off + i]!;
    const l = clamp(nearestInt(fr(iscale * xi)), -nmax, nmax - 1);
    L[lOff + i] = l;
    const w = fr(xi * xi);
    sumlx = fr(sumlx + fr(fr(w * xi) * l));
    suml2 = fr(suml2 + fr(fr(w * l) * l));
  }
  for (let itry = 0; itry < 5; itry++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[off + i]!;
      const w = fr(xi * xi);
      const li = L[lOff + i]!;
      let slx = fr(sumlx - fr(fr(w * xi) * li));
      if (slx > 0) {
        let sl2 = fr(suml2 - fr(fr(w * li) * li));
        const newL = clamp(nearestInt(fr(fr(xi * sl2) / slx)), -nmax, nmax - 1);
        if (newL !== li) {
          slx = fr(slx + fr(fr(w * xi) * newL));
          sl2 = fr(sl2 + fr(fr(w * newL) * newL));
          if (sl2 > 0 && fr(fr(slx * slx) * suml2) > fr(fr(sumlx * sumlx) * sl2)) {
            L[lOff + i] = newL;
            sumlx = slx;
            suml2 = sl2;
            changed++;
          }
        }
      }
    }
    if (!changed) break;
  }
  for (let i = 0; i < n; i++) L[lOff + i] = L[lOff + i]! + nmax;
  return suml2 > 0 ? fr(sumlx / suml2) : 0;
}

// ------------------------------------------------------------------ Q8_K: d f32, qs int8[256], bsums int16[16]

export const decodeQ8_K: BlockDecoder = (src, nBlocks, out) => {
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  for (let i = 0, o = 0, y = 0; i < nBlocks; i++, o += 292, y += QK_K) {
    const d = dv.getFloat32(o, true);
    for (let j = 0; j < QK_K; j++) out[y + j] = int8(src[o + 4 + j]!) * d;
  }
};

export const encodeQ8_K: BlockEncoder = (src, nBlocks, out) => {
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (let i = 0, o = 0, x = 0; i < nBlocks; i++, o += 292, x += QK_K) {
    const [max, amax] = signedAmax(src, x, QK_K);
    if (!amax) continue; // all zero: d = 0, qs and bsums 0 (out starts zeroed)
    const iscale = fr(-127 / max);
    for (let j = 0; j < QK_K; j++) out[o + 4 + j] = Math.min(127, nearestInt(fr(iscale * src[x + j]!))) & 0xff;
    for (let j = 0; j < 16; j++) {
      let sum = 0;
      for (let l = 0; l < 16; l++) sum += int8(out[o + 4 + 16 * j + l]!);
      dv.setInt16(o + 260 + 2 * j, sum, true);
    }
    dv.setFloat32(o, fr(1 / iscale), true);
  }
};

// ------------------------------------------------------------------ Q4_K: d, dmin f16, scales[12], qs[128]

export const decodeQ4_K: BlockDecoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, y = 0; i < nBlocks; i++, o += 144, y += QK_K) {
    const d = readF16(src, o);
    const dmin = readF16(src, o + 2);
    for (let c = 0; c < 4; c++) {
      const [sc1, m1] = scaleMinK4(src, o + 4, 2 * c);
      const [sc2, m2] = scaleMinK4(src, o + 4, 2 * c + 1);
      const d1 = d * sc1, mm1 = dmin * m1, d2 = d * sc2, mm2 = dmin * m2;
      const q = o + 16 + 32 * c;
      const yc = y + 64 * c;
      for (let l = 0; l < 32; l++) {
        out[yc + l] = d1 * (src[q + l]! & 0x0f) - mm1;
        out[yc + 32 + l] = d2 * (src[q + l]! >> 4) - mm2;
      }
    }
  }
};

/** Shared body of the Q4_K and Q5_K reference quantizers: 6-bit scales/mins, codes in L[0..256). */
function quantizeScalesMinsK(
  src: Float32Array, x: number, nmax: number, rmin: number, rdelta: number, nstep: number,
  out: Uint8Array, o: number, L: Uint8Array,
): void {
  const weights = new Float32Array(32);
  const Laux = new Uint8Array(32);
  const scales = new Float32Array(8);
  const mins = new Float32Array(8);
  let maxScale = 0, maxMin = 0;
  for (let j = 0; j < 8; j++) {
    let sumX2 = 0;
    for (let l = 0; l < 32; l++) sumX2 = mad(src[x + 32 * j + l]!, src[x + 32 * j + l]!, sumX2);
    const avX = fr(Math.sqrt(fr(sumX2 / 32)));
    for (let l = 0; l < 32; l++) weights[l] = fr(avX + Math.abs(src[x + 32 * j + l]!));
    const r = makeQkx2Quants(32, nmax, src, x + 32 * j, weights, L, 32 * j, Laux, rmin, rdelta, nstep, false);
    scales[j] = r.scale;
    mins[j] = r.min;
    if (scales[j]! > maxScale) maxScale = scales[j]!;
    if (mins[j]! > maxMin) maxMin = mins[j]!;
  }
  const invScale = maxScale > 0 ? fr(63 / maxScale) : 0;
  const invMin = maxMin > 0 ? fr(63 / maxMin) : 0;
  const ls = new Uint8Array(8);
  const lm = new Uint8Array(8);
  for (let j = 0; j < 8; j++) {
    ls[j] = Math.min(63, nearestInt(fr(invScale * scales[j]!)) & 0xff);
    lm[j] = Math.min(63, nearestInt(fr(invMin * mins[j]!)) & 0xff);
  }
  packScaleMinK4(out, o + 4, ls, lm);
  writeF16(out, o, fr(maxScale / 63));
  writeF16(out, o + 2, fr(maxMin / 63));
  const dAll = readF16(out, o);
  const dminAll = readF16(out, o + 2);
  for (let j = 0; j < 8; j++) {
    const [sc, m] = scaleMinK4(out, o + 4, j);
    const d = fr(dAll * sc);
    if (!d) continue;
    const dm = fr(dminAll * m);
    for (let ii = 0; ii < 32; ii++) {
      L[32 * j + ii] = clamp(nearestInt(fr(fr(src[x + 32 * j + ii]! + dm) / d)), 0, nmax);
    }
  }
}

export const encodeQ4_K: BlockEncoder = (src, nBlocks, out) => {
  const L = new Uint8Array(QK_K);
  for (let i = 0, o = 0, x = 0; i < nBlocks; i++, o += 144, x += QK_K) {
    quantizeScalesMinsK(src, x, 15, -1, fr(0.1), 20, out, o, L);
    for (let c = 0; c < 4; c++) {
      for (let l = 0; l < 32; l++) out[o + 16 + 32 * c + l] = L[64 * c + l]! | (L[64 * c + 32 + l]! << 4);
    }
  }
};

// ------------------------------------------------------------------ Q5_K: d, dmin f16, scales[12], qh[32], qs[128]

export const decodeQ5_K: BlockDecoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, y = 0; i < nBlocks; i++, o += 176, y += QK_K) {
    const d = readF16(src, o);
    const dmin = readF16(src, o + 2);
    const qh = o + 16;
    for (let c = 0; c < 4; c++) {
      const [sc1, m1] = scaleMinK4(src, o + 4, 2 * c);
      const [sc2, m2] = scaleMinK4(src, o + 4, 2 * c + 1);
      const d1 = d * sc1, mm1 = dmin * m1, d2 = d * sc2, mm2 = dmin * m2;
      const u1 = 1 << (2 * c), u2 = 2 << (2 * c);
      const q = o + 48 + 32 * c;
      const yc = y + 64 * c;
      for (let l = 0; l < 32; l++) {
        const h = src[qh + l]!;
        out[yc + l] = d1 * ((src[q + l]! & 0x0f) + (h & u1 ? 16 : 0)) - mm1;
        out[yc + 32 + l] = d2 * ((src[q + l]! >> 4) + (h & u2 ? 16 : 0)) - mm2;
      }
    }
  }
};

export const encodeQ5_K: BlockEncoder = (src, nBlocks, out) => {
  const L = new Uint8Array(QK_K);
  for (let i = 0, o = 0, x = 0; i < nBlocks; i++, o += 176, x += QK_K) {
    quantizeScalesMinsK(src, x, 31, -0.5, fr(0.1), 15, out, o, L);
    for (let c = 0; c < 4; c++) {
      const m1 = 1 << (2 * c), m2 = 2 << (2 * c);
      for (let j = 0; j < 32; j++) {
        let l1 = L[64 * c + j]!;
        let l2 = L[64 * c + 32 + j]!;
        if (l1 > 15) { l1 -= 16; out[o + 16 + j]! |= m1; }
        if (l2 > 15) { l2 -= 16; out[o + 16 + j]! |= m2; }
        out[o + 48 + 32 * c + j] = l1 | (l2 << 4);
      }
    }
  }
};

// ------------------------------------------------------------------ Q6_K: ql[128], qh[64], scales int8[16], d f16

export const decodeQ6_K: BlockDecoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, y = 0; i < nBlocks; i++, o += 210, y += QK_K) {
    const d = readF16(src, o + 208);
    for (let c = 0; c < 2; c++) {
      const ql = o + 64 * c, qh = o + 128 + 32 * c, sc = o + 192 + 8 * c, yc = y + 128 * c;
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const h = src[qh + l]!;
        const a = src[ql + l]!, b = src[ql + 32 + l]!;
        out[yc + l] = d * int8(src[sc + is]!) * (((a & 0x0f) | ((h & 3) << 4)) - 32);
        out[yc + 32 + l] = d * int8(src[sc + is + 2]!) * (((b & 0x0f) | (((h >> 2) & 3) << 4)) - 32);
        out[yc + 64 + l] = d * int8(src[sc + is + 4]!) * (((a >> 4) | (((h >> 4) & 3) << 4)) - 32);
        out[yc + 96 + l] = d * int8(src[sc + is + 6]!) * (((b >> 4) | (((h >> 6) & 3) << 4)) - 32);
      }
    }
  }
};

export const encodeQ6_K: BlockEncoder = (src, nBlocks, out) => {
  const L = new Uint8Array(QK_K);
  const scales = new Float32Array(16);
  for (let i = 0, o = 0, x = 0; i < nBlocks; i++, o += 210, x += QK_K) {
    let maxScale = 0, maxAbsScale = 0;
    for (let ib = 0; ib < 16; ib++) {
      const s = makeQxQuants(16, 32, src, x + 16 * ib, L, 16 * ib);
      scales[ib] = s;
      if (Math.abs(s) > maxAbsScale) { maxAbsScale = Math.abs(s); maxScale = s; }
    }
    if (maxAbsScale < GROUP_MAX_EPS) continue; // all-zero block: every byte 0 (out starts zeroed)
    const iscale = fr(-128 / maxScale);
    writeF16(out, o + 208, fr(1 / iscale));
    const dAll = readF16(out, o + 208);
    for (let ib = 0; ib < 16; ib++) out[o + 192 + ib] = Math.min(127, nearestInt(fr(iscale * scales[ib]!))) & 0xff;
    for (let j = 0; j < 16; j++) {
      const d = fr(dAll * int8(out[o + 192 + j]!));
      if (!d) continue;
      for (let ii = 0; ii < 16; ii++) L[16 * j + ii] = clamp(nearestInt(fr(src[x + 16 * j + ii]! / d)), -32, 31) + 32;
    }
    for (let c = 0; c < 2; c++) {
      const ql = o + 64 * c, qh = o + 128 + 32 * c, Lc = 128 * c;
      for (let l = 0; l < 32; l++) {
        const q1 = L[Lc + l]!, q2 = L[Lc + l + 32]!, q3 = L[Lc + l + 64]!, q4 = L[Lc + l + 96]!;
        out[ql + l] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
        out[ql + 32 + l] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
        out[qh + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
      }
    }
  }
};

// ------------------------------------------------------------------ Q2_K: scales[16], qs[64], d f16, dmin f16

export const decodeQ2_K: BlockDecoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, y = 0; i < nBlocks; i++, o += 84, y += QK_K) {
    const d = readF16(src, o + 80);
    const dmin = readF16(src, o + 82);
    for (let c = 0; c < 2; c++) {
      const q = o + 16 + 32 * c;
      for (let j = 0; j < 4; j++) {
        const shift = 2 * j;
        for (let half = 0; half < 2; half++) {
          const sub = 8 * c + 2 * j + half; // 16-value sub-block index
          const sc = src[o + sub]!;
          const dl = d * (sc & 0x0f), ml = dmin * (sc >> 4);
          const yo = y + 16 * sub;
          const qo = q + 16 * half;
          for (let l = 0; l < 16; l++) out[yo + l] = dl * ((src[qo + l]! >> shift) & 3) - ml;
        }
      }
    }
  }
};

export const encodeQ2_K: BlockEncoder = (src, nBlocks, out) => {
  const L = new Uint8Array(QK_K);
  const Laux = new Uint8Array(16);
  const weights = new Float32Array(16);
  const scales = new Float32Array(16);
  const mins = new Float32Array(16);
  for (let i = 0, o = 0, x = 0; i < nBlocks; i++, o += 84, x += QK_K) {
    let maxScale = 0, maxMin = 0;
    for (let j = 0; j < 16; j++) {
      for (let l = 0; l < 16; l++) weights[l] = Math.abs(src[x + 16 * j + l]!);
      const r = makeQkx2Quants(16, 3, src, x + 16 * j, weights, L, 16 * j, Laux, -0.5, fr(0.1), 15, true);
      scales[j] = r.scale;
      mins[j] = r.min;
      if (r.scale > maxScale) maxScale = r.scale;
      if (r.min > maxMin) maxMin = r.min;
    }
    if (maxScale > 0) {
      const iscale = fr(15 / maxScale);
      for (let j = 0; j < 16; j++) out[o + j] = nearestInt(fr(iscale * scales[j]!)) & 0xff;
      writeF16(out, o + 80, fr(maxScale / 15));
    } // else scales and d stay 0
    if (maxMin > 0) {
      const iscale = fr(15 / maxMin);
      for (let j = 0; j < 16; j++) out[o + j] = (out[o + j]! | (nearestInt(fr(iscale * mins[j]!)) << 4)) & 0xff;
      writeF16(out, o + 82, fr(maxMin / 15));
    }
    const dAll = readF16(out, o + 80);
    const dminAll = readF16(out, o + 82);
    for (let j = 0; j < 16; j++) {
      const d = fr(dAll * (out[o + j]! & 0x0f));
      if (!d) continue;
      const dm = fr(dminAll * (out[o + j]! >> 4));
      for (let ii = 0; ii < 16; ii++) {
        L[16 * j + ii] = clamp(nearestInt(fr(fr(src[x + 16 * j + ii]! + dm) / d)), 0, 3);
      }
    }
    for (let c = 0; c < 2; c++) {
      for (let l = 0; l < 32; l++) {
        const b = 128 * c + l;
        out[o + 16 + 32 * c + l] = L[b]! | (L[b + 32]! << 2) | (L[b + 64]! << 4) | (L[b + 96]! << 6);
      }
    }
  }
};

// ------------------------------------------------------------------ Q3_K: hmask[32], qs[64], scales[12], d f16

/** The 16 signed 6-bit scales of a Q3_K block (12 packed bytes at `o`), each already minus 32. */
function q3kScale(b: Uint8Array, o: number, j: number): number {
  const low = j < 8 ? b[o + j]! & 0x0f : b[o + j - 8]! >> 4;
  const high = (b[o + 8 + (j & 3)]! >> (2 * (j >> 2))) & 3;
  return (low | (high << 4)) - 32;
}

export const decodeQ3_K: BlockDecoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, y = 0; i < nBlocks; i++, o += 110, y += QK_K) {
    const dAll = readF16(src, o + 108);
    for (let v0 = 0; v0 < QK_K; v0 += 16) {
      const dl = dAll * q3kScale(src, o + 96, v0 >> 4);
      for (let k = 0; k < 16; k++) {
        const v = v0 + k; // value v: 2 bits in qs[32*(v>>7) + (v&31)] at shift 2*((v>>5)&3), 3rd bit in hmask
        const lo = (src[o + 32 + 32 * (v >> 7) + (v & 31)]! >> (2 * ((v >> 5) & 3))) & 3;
        const hi = (src[o + (v & 31)]! >> (v >> 5)) & 1;
        out[y + v] = dl * (lo - (hi ? 0 : 4));
      }
    }
  }
};

export const encodeQ3_K: BlockEncoder = (src, nBlocks, out) => {
  const L = new Int8Array(QK_K);
  const scales = new Float32Array(16);
  for (let i = 0, o = 0, x = 0; i < nBlocks; i++, o += 110, x += QK_K) {
    let maxScale = 0, amax = 0;
    for (let j = 0; j < 16; j++) {
      scales[j] = makeQ3Quants(16, 4, src, x + 16 * j, L, 16 * j);
      const s = Math.abs(scales[j]!);
      if (s > amax) { amax = s; maxScale = scales[j]!; }
    }
    if (maxScale) {
      const iscale = fr(-32 / maxScale);
      for (let j = 0; j < 16; j++) {
        let l = clamp(int8(nearestInt(fr(iscale * scales[j]!))), -32, 31) + 32;
        if (j < 8) out[o + 96 + j] = l & 0x0f;
        else out[o + 96 + j - 8]! |= (l & 0x0f) << 4;
        l >>= 4;
        out[o + 96 + 8 + (j % 4)]! |= l << (2 * (j >> 2));
      }
      writeF16(out, o + 108, fr(1 / iscale));
    }
    const dAll = readF16(out, o + 108);
    for (let j = 0; j < 16; j++) {
      const d = fr(dAll * q3kScale(out, o + 96, j));
      if (!d) continue;
      for (let ii = 0; ii < 16; ii++) {
        L[16 * j + ii] = clamp(nearestInt(fr(src[x + 16 * j + ii]! / d)), -4, 3) + 4;
      }
    }
    for (let j = 0; j < QK_K; j++) {
      if (L[j]! > 3) {
        out[o + (j & 31)]! |= 1 << (j >> 5);
        L[j] = L[j]! - 4;
      }
    }
    for (let c = 0; c < 2; c++) {
      for (let l = 0; l < 32; l++) {
        const b = 128 * c + l;
        out[o + 32 + 32 * c + l] = L[b]! | (L[b + 32]! << 2) | (L[b + 64]! << 4) | (L[b + 96]! << 6);
      }
    }
  }
};
