// ggml's 32-value block formats (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1): decoders and the reference quantizers
// (quantize_row_*_ref). Quantizers round every intermediate to f32 (Math.fround) so the bytes match
// ggml's C code bit for bit. Decoders need no care: each value is an exact product (a small integer
// times an f16 scale) plus at most one f32 rounding when the block has a min, so FMA or not gives the
// same f32 as ggml.
import { readF16, writeF16 } from './f16.js';

const fr = Math.fround;
const QK = 32;

export type BlockDecoder = (src: Uint8Array, nBlocks: number, out: Float32Array) => void;
/** Encoders write into a zero-filled `out` (some only OR bits in). */
export type BlockEncoder = (src: Float32Array, nBlocks: number, out: Uint8Array) => void;

function readU32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function writeU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

/** C roundf: halves round away from zero. */
export function roundAway(x: number): number {
  return x < 0 ? -Math.round(-x) : Math.round(x);
}

/** The value with the largest magnitude, keeping its sign (first one wins on ties, as in ggml). */
function signedAbsMax(x: Float32Array, start: number, n: number): number {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < n; j++) {
    const v = x[start + j]!;
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  return max;
}

function absMax(x: Float32Array, start: number, n: number): number {
  let amax = 0;
  for (let j = 0; j < n; j++) amax = Math.max(amax, Math.abs(x[start + j]!));
  return amax;
}

// ---- Q4_0: d f16, qs[16]; byte j = value j (low nibble) | value j+16 (high nibble); x = (q - 8) * d

export const decodeQ4_0: BlockDecoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, y = 0; i < nBlocks; i++, o += 18, y += QK) {
    const d = readF16(src, o);
    for (let j = 0; j < 16; j++) {
      const q = src[o + 2 + j]!;
      out[y + j] = ((q & 0x0f) - 8) * d;
      out[y + j + 16] = ((q >> 4) - 8) * d;
    }
  }
};

export const encodeQ4_0: BlockEncoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, x = 0; i < nBlocks; i++, o += 18, x += QK) {
    const d = fr(signedAbsMax(src, x, QK) / -8);
    const id = d ? fr(1 / d) : 0;
    writeF16(out, o, d);
    for (let j = 0; j < 16; j++) {
      const x0 = fr(src[x + j]! * id);
      const x1 = fr(src[x + 16 + j]! * id);
      const q0 = Math.min(15, Math.trunc(fr(x0 + 8.5)));
      const q1 = Math.min(15, Math.trunc(fr(x1 + 8.5)));
      out[o + 2 + j] = q0 | (q1 << 4);
    }
  }
};

// ---- Q4_1: d f16, m f16, qs[16] (as Q4_0); x = q * d + m

export const decodeQ4_1: BlockDecoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, y = 0; i < nBlocks; i++, o += 20, y += QK) {
    const d = readF16(src, o);
    const m = readF16(src, o + 2);
    for (let j = 0; j < 16; j++) {
      const q = src[o + 4 + j]!;
      out[y + j] = (q & 0x0f) * d + m;
      out[y + j + 16] = (q >> 4) * d + m;
    }
  }
};

function minMax(x: Float32Array, start: number, n: number): [number, number] {
  let min = Infinity; // ggml starts from +-FLT_MAX; same result for finite input
  let max = -Infinity;
  for (let j = 0; j < n; j++) {
    const v = x[start + j]!;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return [min, max];
}

export const encodeQ4_1: BlockEncoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, x = 0; i < nBlocks; i++, o += 20, x += QK) {
    const [min, max] = minMax(src, x, QK);
    const d = fr(fr(max - min) / 15);
    const id = d ? fr(1 / d) : 0;
    writeF16(out, o, d);
    writeF16(out, o + 2, min);
    for (let j = 0; j < 16; j++) {
      const x0 = fr(fr(src[x + j]! - min) * id);
      const x1 = fr(fr(src[x + 16 + j]! - min) * id);
      const q0 = Math.min(15, Math.trunc(fr(x0 + 0.5)));
      const q1 = Math.min(15, Math.trunc(fr(x1 + 0.5)));
      out[o + 4 + j] = q0 | (q1 << 4);
    }
  }
};

// ---- Q5_0: d f16, qh u32 (bit j = 5th bit of value j), qs[16] (low 4 bits as Q4_0); x = (q - 16) * d

export const decodeQ5_0: BlockDecoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, y = 0; i < nBlocks; i++, o += 22, y += QK) {
    const d = readF16(src, o);
    const qh = readU32(src, o + 2);
    for (let j = 0; j < 16; j++) {
      const q = src[o + 6 + j]!;
      const h0 = ((qh >>> j) << 4) & 0x10;
      const h1 = (qh >>> (j + 12)) & 0x10;
      out[y + j] = (((q & 0x0f) | h0) - 16) * d;
      out[y + j + 16] = (((q >> 4) | h1) - 16) * d;
    }
  }
};

export const encodeQ5_0: BlockEncoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, x = 0; i < nBlocks; i++, o += 22, x += QK) {
    const d = fr(signedAbsMax(src, x, QK) / -16);
    const id = d ? fr(1 / d) : 0;
    writeF16(out, o, d);
    let qh = 0;
    for (let j = 0; j < 16; j++) {
      const x0 = fr(src[x + j]! * id);
      const x1 = fr(src[x + 16 + j]! * id);
      const q0 = Math.min(31, Math.trunc(fr(x0 + 16.5)));
      const q1 = Math.min(31, Math.trunc(fr(x1 + 16.5)));
      out[o + 6 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
      qh |= ((q0 & 0x10) >> 4) << j;
      qh |= ((q1 & 0x10) >> 4) << (j + 16);
    }
    writeU32(out, o + 2, qh >>> 0);
  }
};

// ---- Q5_1: d f16, m f16, qh u32, qs[16]; x = q * d + m

export const decodeQ5_1: BlockDecoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, y = 0; i < nBlocks; i++, o += 24, y += QK) {
    const d = readF16(src, o);
    const m = readF16(src, o + 2);
    const qh = readU32(src, o + 4);
    for (let j = 0; j < 16; j++) {
      const q = src[o + 8 + j]!;
      const h0 = ((qh >>> j) << 4) & 0x10;
      const h1 = (qh >>> (j + 12)) & 0x10;
      out[y + j] = ((q & 0x0f) | h0) * d + m;
      out[y + j + 16] = ((q >> 4) | h1) * d + m;
    }
  }
};

export const encodeQ5_1: BlockEncoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, x = 0; i < nBlocks; i++, o += 24, x += QK) {
    const [min, max] = minMax(src, x, QK);
    const d = fr(fr(max - min) / 31);
    const id = d ? fr(1 / d) : 0;
    writeF16(out, o, d);
    writeF16(out, o + 2, min);
    let qh = 0;
    for (let j = 0; j < 16; j++) {
      // ggml casts to uint8_t without clamping here (unlike Q4_1); the value never exceeds 31.5
      const q0 = Math.trunc(fr(fr(fr(src[x + j]! - min) * id) + 0.5)) & 0xff;
      const q1 = Math.trunc(fr(fr(fr(src[x + 16 + j]! - min) * id) + 0.5)) & 0xff;
      out[o + 8 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
      qh |= ((q0 & 0x10) >> 4) << j;
      qh |= ((q1 & 0x10) >> 4) << (j + 16);
    }
    writeU32(out, o + 4, qh >>> 0);
  }
};

// ---- Q8_0: d f16, qs int8[32]; x = q * d

export const decodeQ8_0: BlockDecoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, y = 0; i < nBlocks; i++, o += 34, y += QK) {
    const d = readF16(src, o);
    for (let j = 0; j < QK; j++) out[y + j] = ((src[o + 2 + j]! << 24) >> 24) * d;
  }
};

export const encodeQ8_0: BlockEncoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, x = 0; i < nBlocks; i++, o += 34, x += QK) {
    const d = fr(absMax(src, x, QK) / 127);
    const id = d ? fr(1 / d) : 0;
    writeF16(out, o, d);
    for (let j = 0; j < QK; j++) out[o + 2 + j] = roundAway(fr(src[x + j]! * id)) & 0xff;
  }
};

// ---- Q8_1: d f16, s f16 (= d * sum of qs), qs int8[32]; x = q * d

export const decodeQ8_1: BlockDecoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, y = 0; i < nBlocks; i++, o += 36, y += QK) {
    const d = readF16(src, o);
    for (let j = 0; j < QK; j++) out[y + j] = ((src[o + 4 + j]! << 24) >> 24) * d;
  }
};

export const encodeQ8_1: BlockEncoder = (src, nBlocks, out) => {
  for (let i = 0, o = 0, x = 0; i < nBlocks; i++, o += 36, x += QK) {
    const d = fr(absMax(src, x, QK) / 127);
    const id = d ? fr(1 / d) : 0;
    writeF16(out, o, d);
    let sum = 0;
    for (let j = 0; j < QK; j++) {
      const q = roundAway(fr(src[x + j]! * id));
      out[o + 4 + j] = q & 0xff;
      sum += q;
    }
    writeF16(out, o + 2, fr(sum * d));
  }
};
