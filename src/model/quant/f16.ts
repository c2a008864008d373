// Scalar conversions between f32 and the 16-bit float formats ggml stores: IEEE half (f16) and bfloat16.
// The f32 -> f16/bf16 directions round to nearest, ties to even, like ggml on x86 (F16C) does.

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** f16 -> f32 lookup: every half is exactly representable as f32, so a 64K table is exact and fast. */
const F16_TABLE: Float32Array = buildF16Table();

function decodeF16(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24; // zero and subnormals
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1024 + frac) * 2 ** (exp - 25);
}

function buildF16Table(): Float32Array {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) t[h] = decodeF16(h);
  return t;
}

/** Bits of an IEEE half -> its value. */
export function f16ToF32(h: number): number {
  return F16_TABLE[h & 0xffff]!;
}

/** f32 value -> bits of the nearest IEEE half (ties to even; overflow -> inf; NaN stays NaN, quiet). */
export function f32ToF16(x: number): number {
  f32Scratch[0] = x;
  const bits = u32Scratch[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) {
    // inf stays inf; NaN keeps its top payload bits and is made quiet, as F16C does
    return mant ? sign | 0x7e00 | (mant >>> 13) : sign | 0x7c00;
  }
  const e = exp - 127 + 15; // biased half exponent
  if (e >= 0x1f) return sign | 0x7c00; // too big: inf
  if (e <= 0) {
    // half subnormal (or zero): value = mant24 * 2^(exp-150), half unit = 2^-24
    if (e < -10) return sign; // below half the smallest subnormal: rounds to zero
    const m = mant | 0x800000; // implicit bit
    const shift = 14 - e; // 1 - e + 13
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (h & 1))) h++;
    return sign | h; // a carry into bit 10 becomes the smallest normal, which is right
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++; // a carry may round up into inf: right too
  return sign | h;
}

/** Bits of a bfloat16 -> its value. */
export function bf16ToF32(b: number): number {
  u32Scratch[0] = (b & 0xffff) << 16;
  return f32Scratch[0]!;
}

/** f32 value -> bfloat16 bits, like ggml_compute_fp32_to_bf16: NaN -> quiet NaN, else ties to even. */
export function f32ToBf16(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 64) & 0xffff;
  return ((u + (0x7fff + ((u >>> 16) & 1))) >>> 16) & 0xffff;
}

/** The little-endian IEEE half stored at byte `o` of `b`, as its value (how ggml blocks keep scales). */
export function readF16(b: Uint8Array, o: number): number {
  return f16ToF32(b[o]! | (b[o + 1]! << 8));
}

/** Stores `x` as a little-endian IEEE half at byte `o` of `b` (inverse of readF16). */
export function writeF16(b: Uint8Array, o: number, x: number): void {
  const h = f32ToF16(x);
  b[o] = h & 0xff;
  b[o + 1] = h >>> 8;
}
