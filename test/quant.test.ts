// Block formats: hand-built blocks decoded to hand-computed values, hand-chosen inputs quantized to
// hand-computed bytes, f16/bf16 special values against known bit patterns, round-trip error bounds
// derived from each format, and the errors callers get for bad input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { GGMLType, GGML_TYPE_INFO } from '../src/model/ggml-types.js';
import { UnsupportedError } from '../src/model/errors.js';
import {
  bf16ToF32, canDequantize, canQuantize, dequantize, dequantizeRows, f16ToF32, f32ToBf16, f32ToF16, quantize,
} from '../src/model/quant/index.js';
import { mulberry32 as rng } from '../src/engine/prng.js';

const EPS16 = 2 ** -11; // relative rounding error of an f16 scale


function randomValues(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (r() * 2 - 1) * scale * (1 + 3 * r() * r()); // uneven spread
  return x;
}

function f32Bits(x: number): number {
  return new Uint32Array(new Float32Array([x]).buffer)[0]!;
}
function fromBits(u: number): number {
  return new Float32Array(new Uint32Array([u]).buffer)[0]!;
}
function putF16(b: Uint8Array, o: number, h: number): void {
  b[o] = h & 0xff;
  b[o + 1] = h >> 8;
}
function getF16(b: Uint8Array, o: number): number {
  return f16ToF32(b[o]! | (b[o + 1]! << 8));
}

// ---------------------------------------------------------------- f16 / bf16

test('f16 decode: known bit patterns', () => {
  assert.equal(f16ToF32(0x3c00), 1);
  assert.equal(f16ToF32(0xc000), -2);
  assert.equal(f16ToF32(0x3800), 0.5);
  assert.equal(f16ToF32(0x7bff), 65504); // largest finite half
  assert.equal(f16ToF32(0x0400), 2 ** -14); // smallest normal
  assert.equal(f16ToF32(0x0001), 2 ** -24); // smallest subnormal
  assert.equal(f16ToF32(0x03ff), 1023 * 2 ** -24); // largest subnormal
  assert.equal(f16ToF32(0x3555), 1365 * 2 ** -12); // 0x155 = 341; (1024+341)/4096
  assert.equal(f16ToF32(0x7c00), Infinity);
  assert.equal(f16ToF32(0xfc00), -Infinity);
  assert.ok(Number.isNaN(f16ToF32(0x7e00)));
  assert.ok(Number.isNaN(f16ToF32(0x7c01)));
  assert.ok(Object.is(f16ToF32(0x8000), -0));
});

test('f16 encode: exact values, ties to even, overflow, subnormals, NaN', () => {
  assert.equal(f32ToF16(1), 0x3c00);
  assert.equal(f32ToF16(-2), 0xc000);
  assert.equal(f32ToF16(65504), 0x7bff);
  assert.equal(f32ToF16(0), 0x0000);
  assert.equal(f32ToF16(-0), 0x8000);
  assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00); // halfway between 0x3c00 and 0x3c01: even wins
  assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02); // halfway between 0x3c01 and 0x3c02: even wins
  assert.equal(f32ToF16(1 + 2 ** -11 + 2 ** -20), 0x3c01); // just above halfway rounds up
  assert.equal(f32ToF16(65519), 0x7bff); // below the midpoint to 65536
  assert.equal(f32ToF16(65520), 0x7c00); // midpoint, even neighbour is 65536 = inf
  assert.equal(f32ToF16(1e10), 0x7c00);
  assert.equal(f32ToF16(-Infinity), 0xfc00);
  assert.equal(f32ToF16(2 ** -24), 0x0001);
  assert.equal(f32ToF16(2 ** -25), 0x0000); // half of the smallest subnormal: tie to even (0)
  assert.equal(f32ToF16(3 * 2 ** -25), 0x0002); // 1.5 units: tie to even (2)
  assert.equal(f32ToF16(fromBits(f32Bits(2 ** -25) + 1)), 0x0001); // just above half a unit
  assert.equal(f32ToF16(2 ** -14 - 2 ** -25), 0x0400); // tie between 0x03ff and 0x0400 -> even, a normal
  assert.equal(f32ToF16(1e-10), 0x0000);
  assert.equal(f32ToF16(-1e-10), 0x8000);
  assert.equal(f32ToF16(NaN), 0x7e00);
  assert.equal(f32ToF16(fromBits(0x7f800001)) & 0x7e00, 0x7e00); // signalling NaN comes out quiet
  // every finite half survives a round trip
  for (let h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) === 0x7c00) continue;
    assert.equal(f32ToF16(f16ToF32(h)), h);
  }
});

test('bf16: decode, ties to even, NaN made quiet', () => {
  assert.equal(bf16ToF32(0x3f80), 1);
  assert.equal(bf16ToF32(0xc040), -3);
  assert.equal(bf16ToF32(0x7f80), Infinity);
  assert.equal(f32ToBf16(1), 0x3f80);
  assert.equal(f32ToBf16(fromBits(0x3f808000)), 0x3f80); // tie, even low bit stays
  assert.equal(f32ToBf16(fromBits(0x3f818000)), 0x3f82); // tie, odd low bit rounds up
  assert.equal(f32ToBf16(fromBits(0x3f808001)), 0x3f81); // above the tie
  assert.equal(f32ToBf16(fromBits(0x7f7fffff)), 0x7f80); // largest f32 rounds up to inf
  assert.equal(f32ToBf16(NaN), 0x7fc0);
  assert.equal(f32ToBf16(fromBits(0x7f800001)), 0x7fc0); // signalling NaN: quiet bit set
  assert.equal(f32ToBf16(fromBits(0xff800001)), 0xffc0);
});

test('F32/F16/BF16 as tensor types: round trips within the format precision', () => {
  const x = randomValues(64, 1, 3);
  assert.deepEqual(dequantize(GGMLType.F32, quantize(GGMLType.F32, x), 64), x);
  const h = dequantize(GGMLType.F16, quantize(GGMLType.F16, x), 64);
  const b = dequantize(GGMLType.BF16, quantize(GGMLType.BF16, x), 64);
  for (let i = 0; i < 64; i++) {
    assert.ok(Math.abs(h[i]! - x[i]!) <= Math.abs(x[i]!) * 2 ** -11 + 2 ** -25); // half an ulp
    assert.ok(Math.abs(b[i]! - x[i]!) <= Math.abs(x[i]!) * 2 ** -8);
  }
  // bytes are little-endian: 1.0 as f16 = 00 3c, as bf16 = 80 3f
  assert.deepEqual([...quantize(GGMLType.F16, new Float32Array([1]))], [0x00, 0x3c]);
  assert.deepEqual([...quantize(GGMLType.BF16, new Float32Array([1]))], [0x80, 0x3f]);
  // f32 from an unaligned buffer
  const raw = new Uint8Array(9);
  raw.set(quantize(GGMLType.F32, new Float32Array([1.5, -2])), 1);
  assert.deepEqual([...dequantize(GGMLType.F32, raw.subarray(1), 2)], [1.5, -2]);
});

// ---------------------------------------------------------------- 32-value blocks, hand-built

test('Q4_0: hand-built block decodes nibble by nibble', () => {
  const b = new Uint8Array(18);
  putF16(b, 0, 0x3c00); // d = 1
  for (let j = 0; j < 16; j++) b[2 + j] = j | ((15 - j) << 4);
  const y = dequantize(GGMLType.Q4_0, b, 32);
  for (let j = 0; j < 16; j++) {
    assert.equal(y[j], j - 8); // low nibble = value j
    assert.equal(y[j + 16], 7 - j); // high nibble = value j+16: (15-j) - 8
  }
});

test('Q4_0: quantizer on values that sit on the grid gives hand-computed bytes', () => {
  // values (k-8)/4 with k = j mod 16: the largest magnitude is -2 (k=0), so d = -2/-8 = 0.25
  const x = new Float32Array(32);
  for (let j = 0; j < 32; j++) x[j] = ((j % 16) - 8) / 4;
  const b = quantize(GGMLType.Q4_0, x);
  assert.equal(b.length, 18);
  assert.equal(b[0]! | (b[1]! << 8), 0x3400); // 0.25
  for (let j = 0; j < 16; j++) assert.equal(b[2 + j], j | (j << 4));
  assert.deepEqual(dequantize(GGMLType.Q4_0, b, 32), x);
  // sign of the scale follows the signed max: largest magnitude +2 gives d = -0.25, q = 8 - 4x
  const y = new Float32Array(32);
  y[0] = 2;
  y[1] = -1;
  const c = quantize(GGMLType.Q4_0, y);
  assert.equal(c[0]! | (c[1]! << 8), 0xb400); // -0.25
  assert.equal(c[2], 0 | (8 << 4)); // value 0: 8 - 8 = 0; value 16 (0.0): 8
  assert.equal(c[3], 12 | (8 << 4)); // value 1: 8 + 4 = 12
  // all zeros: d = 0 / -8 = -0 (f16 0x8000, as in C), every nibble 8
  const z = quantize(GGMLType.Q4_0, new Float32Array(32));
  assert.deepEqual([...z], [0x00, 0x80, ...new Array(16).fill(0x88)]);
});

test('Q4_1: hand-built block, x = q*d + m', () => {
  const b = new Uint8Array(20);
  putF16(b, 0, 0x3800); // d = 0.5
  putF16(b, 2, 0xbc00); // m = -1
  for (let j = 0; j < 16; j++) b[4 + j] = j | ((15 - j) << 4);
  const y = dequantize(GGMLType.Q4_1, b, 32);
  for (let j = 0; j < 16; j++) {
    assert.equal(y[j], j * 0.5 - 1);
    assert.equal(y[j + 16], (15 - j) * 0.5 - 1);
  }
  // quantizer: min -1, max 6.5 -> d = 7.5/15 = 0.5; x = -1 + q/2 lands on q exactly
  const x = new Float32Array(32);
  for (let j = 0; j < 32; j++) x[j] = -1 + (j % 16) / 2;
  const q = quantize(GGMLType.Q4_1, x);
  assert.equal(q[0]! | (q[1]! << 8), 0x3800);
  assert.equal(q[2]! | (q[3]! << 8), 0xbc00);
  for (let j = 0; j < 16; j++) assert.equal(q[4 + j], j | (j << 4));
});

test('Q5_0: hand-built block, 5th bits from qh', () => {
  const b = new Uint8Array(22);
  putF16(b, 0, 0x3c00); // d = 1
  // qh = 0x80010003: bits 0, 1 (values 0, 1), 16 (value 16), 31 (value 31)
  b[2] = 0x03; b[3] = 0x00; b[4] = 0x01; b[5] = 0x80;
  b[6 + 0] = 0x53; // value 0 low = 3, value 16 low = 5
  b[6 + 1] = 0x0f; // value 1 low = 15, value 17 low = 0
  b[6 + 15] = 0xa2; // value 15 low = 2, value 31 low = 10
  const y = dequantize(GGMLType.Q5_0, b, 32);
  assert.equal(y[0], (3 + 16) - 16);
  assert.equal(y[1], (15 + 16) - 16);
  assert.equal(y[16], (5 + 16) - 16);
  assert.equal(y[17], 0 - 16);
  assert.equal(y[15], 2 - 16);
  assert.equal(y[31], (10 + 16) - 16);
  assert.equal(y[5], -16);
  // quantizer: values k-16 for k = 0..31 with -16 the largest magnitude -> d = 1, q = k
  const x = new Float32Array(32);
  for (let j = 0; j < 32; j++) x[j] = j - 16;
  const q = quantize(GGMLType.Q5_0, x);
  assert.equal(q[0]! | (q[1]! << 8), 0x3c00);
  assert.deepEqual([...q.subarray(2, 6)], [0x00, 0x00, 0xff, 0xff]); // values 16..31 have the 5th bit
  for (let j = 0; j < 16; j++) assert.equal(q[6 + j], j | (j << 4));
});

test('Q5_1: hand-built block, x = q*d + m with 5th bits from qh', () => {
  const b = new Uint8Array(24);
  putF16(b, 0, 0x4000); // d = 2
  putF16(b, 2, 0x3800); // m = 0.5
  b[4] = 0x02; b[6] = 0x01; // qh bit 1 (value 1), bit 16 (value 16)
  b[8 + 1] = 0x07; // value 1 low = 7, value 17 = 0
  b[8 + 0] = 0x40; // value 0 = 0, value 16 low = 4
  const y = dequantize(GGMLType.Q5_1, b, 32);
  assert.equal(y[0], 0.5);
  assert.equal(y[1], 23 * 2 + 0.5);
  assert.equal(y[16], 20 * 2 + 0.5);
  assert.equal(y[17], 0.5);
  // quantizer: min 0, max 31 -> d = 1, q = value
  const x = new Float32Array(32);
  for (let j = 0; j < 32; j++) x[j] = (j * 7) % 32;
  const q = quantize(GGMLType.Q5_1, x);
  assert.equal(q[0]! | (q[1]! << 8), 0x3c00);
  assert.equal(q[2]! | (q[3]! << 8), 0x0000);
  const qh = (q[4]! | (q[5]! << 8) | (q[6]! << 16) | (q[7]! << 24)) >>> 0;
  for (let j = 0; j < 32; j++) {
    const v = x[j]!;
    assert.equal((qh >>> j) & 1, v >> 4);
    assert.equal(j < 16 ? q[8 + j]! & 15 : q[8 + j - 16]! >> 4, v & 15);
  }
});

test('Q8_0 / Q8_1: hand-built blocks and grid values', () => {
  const b = new Uint8Array(34);
  putF16(b, 0, 0x4000); // d = 2
  for (let j = 0; j < 32; j++) b[2 + j] = (j * 8 - 128) & 0xff; // int8 -128, -120, ..., 120
  const y = dequantize(GGMLType.Q8_0, b, 32);
  for (let j = 0; j < 32; j++) assert.equal(y[j], (j * 8 - 128) * 2);

  // values q/2 with max |q| = 127 -> d = 63.5/127 = 0.5 exactly, and q comes back
  const x = new Float32Array(32);
  for (let j = 0; j < 32; j++) x[j] = (j === 0 ? -127 : j * 4 - 64) / 2;
  const q8 = quantize(GGMLType.Q8_0, x);
  assert.equal(q8[0]! | (q8[1]! << 8), 0x3800);
  for (let j = 0; j < 32; j++) assert.equal((q8[2 + j]! << 24) >> 24, j === 0 ? -127 : j * 4 - 64);

  const q81 = quantize(GGMLType.Q8_1, x);
  assert.equal(q81.length, 36);
  assert.equal(q81[0]! | (q81[1]! << 8), 0x3800);
  let sum = 0;
  for (let j = 0; j < 32; j++) sum += j === 0 ? -127 : j * 4 - 64;
  assert.equal(getF16(q81, 2), sum * 0.5); // s = d * sum(q): here 0.5 * 829, exact in f16
  assert.deepEqual(dequantize(GGMLType.Q8_1, q81, 32), x);
  // roundf rounds halves away from zero: 63.5 -> 64 at d = 1 (x max 127)
  const h = new Float32Array(32);
  h[0] = 127; h[1] = 63.5; h[2] = -63.5; h[3] = 0.5;
  const qh = quantize(GGMLType.Q8_0, h);
  assert.deepEqual([(qh[3]! << 24) >> 24, (qh[4]! << 24) >> 24, (qh[5]! << 24) >> 24], [64, -64, 1]);
});

// ---------------------------------------------------------------- round-trip bounds

/**
 * Largest error the format allows for value j of a block, given the block's inputs `x`. Each bound is
 * half a quantization step (round to nearest), plus what rounding the scale and min to f16 costs
 * (|q| * |d - fp16(d)| <= qmax * d * 2^-11, |m - fp16(m)| <= |m| * 2^-11); Q4_0/Q5_0 clamp the top
 * code (q = 16 or 32 is not representable), so values on the side opposite the signed max may be off
 * by a whole step.
 */
type Bound = (x: Float32Array) => number;

function signedMax(x: Float32Array): number {
  let amax = 0, max = 0;
  for (const v of x) if (Math.abs(v) > amax) { amax = Math.abs(v); max = v; }
  return max;
}
const amaxOf = (x: Float32Array) => Math.max(...[...x].map(Math.abs));
const minOf = (x: Float32Array) => Math.min(...x);
const maxOf = (x: Float32Array) => Math.max(...x);

const LEGACY_BOUNDS: [GGMLType, Bound][] = [
  [GGMLType.Q8_0, (x) => { const d = amaxOf(x) / 127; return d / 2 + 128 * d * EPS16; }],
  [GGMLType.Q8_1, (x) => { const d = amaxOf(x) / 127; return d / 2 + 128 * d * EPS16; }],
  [GGMLType.Q4_0, (x) => { const d = Math.abs(signedMax(x)) / 8; return d + 8 * d * EPS16; }],
  [GGMLType.Q5_0, (x) => { const d = Math.abs(signedMax(x)) / 16; return d + 16 * d * EPS16; }],
  [GGMLType.Q4_1, (x) => {
    const d = (maxOf(x) - minOf(x)) / 15; return d / 2 + 15 * d * EPS16 + Math.abs(minOf(x)) * EPS16;
  }],
  [GGMLType.Q5_1, (x) => {
    const d = (maxOf(x) - minOf(x)) / 31; return d / 2 + 31 * d * EPS16 + Math.abs(minOf(x)) * EPS16;
  }],
];

for (const [type, bound] of LEGACY_BOUNDS) {
  const name = GGML_TYPE_INFO[type]!.name;
  test(`${name}: quantize -> dequantize stays within the format's error bound`, () => {
    const n = 32 * 64;
    const x = randomValues(n, 7 + type, 2.5);
    const bytes = quantize(type, x);
    assert.equal(bytes.length, (n / 32) * GGML_TYPE_INFO[type]!.typeSize);
    const y = dequantize(type, bytes, n);
    for (let blk = 0; blk < n / 32; blk++) {
      const xb = x.subarray(blk * 32, blk * 32 + 32);
      const tol = bound(xb) * (1 + 1e-6);
      for (let j = 0; j < 32; j++) {
        const err = Math.abs(y[blk * 32 + j]! - xb[j]!);
        assert.ok(err <= tol, `${name} block ${blk} value ${j}: error ${err} > bound ${tol}`);
      }
    }
  });
}

// ---------------------------------------------------------------- errors and helpers

test('unsupported types and bad sizes give clear errors', () => {
  assert.throws(() => dequantize(GGMLType.IQ2_XXS, new Uint8Array(66), 256), (e: unknown) =>
    e instanceof UnsupportedError && /iq2_xxs/.test(e.message));
  assert.throws(() => quantize(GGMLType.IQ4_NL, new Float32Array(32)), UnsupportedError);
  assert.throws(() => dequantize(999 as GGMLType, new Uint8Array(4), 1), UnsupportedError);
  assert.equal(canDequantize(GGMLType.IQ1_S), false);
  assert.equal(canQuantize(GGMLType.Q8_0), true);
  assert.throws(() => dequantize(GGMLType.Q8_0, new Uint8Array(34), 33), /not a whole number of 32-value blocks/);
  assert.throws(() => dequantize(GGMLType.Q4_0, new Uint8Array(35), 64), /need 36 bytes but only 35/);
  assert.throws(() => quantize(GGMLType.Q4_0, new Float32Array(31)), /not a whole number/);
  assert.throws(() => dequantize(GGMLType.F16, new Uint8Array(4), 2, new Float32Array(1)), /output holds 1/);
});

test('dequantizeRows decodes rows back to back; dequantize fills a given output', () => {
  const x = randomValues(96, 3);
  const b = quantize(GGMLType.Q8_0, x);
  const all = dequantize(GGMLType.Q8_0, b, 96);
  assert.deepEqual(dequantizeRows(GGMLType.Q8_0, b, 3, 32), all);
  assert.throws(() => dequantizeRows(GGMLType.Q8_0, b, 2, 48), /not a whole number/);
  const out = new Float32Array(100).fill(7);
  assert.equal(dequantize(GGMLType.Q8_0, b, 96, out), out);
  assert.deepEqual(out.subarray(0, 96), all);
  assert.equal(out[96], 7);
});

// ---------------------------------------------------------------- 256-value super-blocks, hand-built

/** The 6-bit (scale, min) pairs used below and their 12 packed bytes, worked out by hand from the layout:
 *  j<4: sc = b[j]&63, m = b[j+4]&63; j>=4: sc = (b[j+4]&15) | (b[j-4]>>6)<<4, m = (b[j+4]>>4) | (b[j]>>6)<<4. */
const K4_SC = [1, 2, 3, 4, 42, 17, 63, 0];
const K4_M = [0, 2, 4, 6, 53, 1, 32, 63];
const K4_BYTES = [0x81, 0x42, 0xc3, 0x04, 0xc0, 0x02, 0x84, 0xc6, 0x5a, 0x11, 0x0f, 0xf0];

test('Q4_K: hand-built block, packed 6-bit scales and mins, nibble halves of each 64 values', () => {
  const b = new Uint8Array(144);
  putF16(b, 0, 0x3c00); // d = 1
  putF16(b, 2, 0x3800); // dmin = 0.5
  b.set(K4_BYTES, 4);
  for (let i = 0; i < 128; i++) b[16 + i] = (i & 15) | ((15 - (i & 15)) << 4);
  const y = dequantize(GGMLType.Q4_K, b, 256);
  for (let c = 0; c < 4; c++) {
    for (let l = 0; l < 32; l++) {
      const lo = 64 * c + l, hi = 64 * c + 32 + l; // low nibbles: first 32 values of the chunk
      assert.equal(y[lo], K4_SC[2 * c]! * (l & 15) - 0.5 * K4_M[2 * c]!, `value ${lo}`);
      assert.equal(y[hi], K4_SC[2 * c + 1]! * (15 - (l & 15)) - 0.5 * K4_M[2 * c + 1]!, `value ${hi}`);
    }
  }
  assert.equal(y[128 + 5], 42 * 5 - 26.5); // sub-block 4: scale 42 and min 53 come from the split bits
  assert.equal(y[255], 0 * 0 - 31.5); // sub-block 7: scale 0, min 63
});

test('Q5_K: hand-built block, 5th bits from qh (bit 2c for the low half of chunk c, 2c+1 for the high)', () => {
  const b = new Uint8Array(176);
  putF16(b, 0, 0x3c00);
  putF16(b, 2, 0x3800);
  b.set(K4_BYTES, 4);
  b[16 + 3] = 0b00000100; // qh[3] bit 2: value 64*1 + 3 = 67 gets +16
  b[16 + 31] = 0b10000000; // qh[31] bit 7: value 64*3 + 32 + 31 = 255 gets +16
  b[16 + 0] = 0b00000011; // qh[0] bits 0, 1: values 0 and 32
  b[48 + 32 + 3] = 0x27; // chunk 1 byte 3: value 67 low nibble 7, value 99 high nibble 2
  const y = dequantize(GGMLType.Q5_K, b, 256);
  assert.equal(y[67], 3 * (7 + 16) - 0.5 * 4); // sub-block 2
  assert.equal(y[99], 4 * 2 - 0.5 * 6); // sub-block 3, no high bit
  assert.equal(y[255], 0 * 16 - 0.5 * 63);
  assert.equal(y[0], 1 * 16 - 0);
  assert.equal(y[32], 2 * 16 - 0.5 * 2);
  assert.equal(y[1], 0);
  assert.equal(y[130], 0 - 0.5 * 53);
});

test('Q6_K: hand-built block, 4+2 bit codes, int8 scales per 16 values, d last', () => {
  const b = new Uint8Array(210);
  putF16(b, 208, 0x3800); // d = 0.5
  for (let s = 0; s < 16; s++) b[192 + s] = (s - 8) & 0xff; // scales -8..7
  b[0] = 0x21; // value 0 low nibble 1, value 64 low nibble 2
  b[128] = 0xe4; // qh[0]: value 0 bits 00, value 32 bits 01, value 64 bits 10, value 96 bits 11
  b[127] = 0xf0; // ql[127] high nibble: value 128 + 96 + 31 = 255
  b[128 + 63] = 0xc0; // qh[63] bits 6-7: value 255
  const y = dequantize(GGMLType.Q6_K, b, 256);
  assert.equal(y[0], 0.5 * -8 * (1 - 32));
  assert.equal(y[32], 0.5 * -6 * (16 - 32));
  assert.equal(y[64], 0.5 * -4 * (2 + 32 - 32));
  assert.equal(y[96], 0.5 * -2 * (48 - 32));
  assert.equal(y[255], 0.5 * 7 * (63 - 32));
  for (const v of [1, 16, 100, 128, 200, 254]) assert.equal(y[v], 0.5 * ((v >> 4) - 8) * -32, `value ${v}`);
});

test('Q3_K: hand-built block, 16 packed 6-bit scales minus 32, hmask bit set = no -4', () => {
  const b = new Uint8Array(110);
  putF16(b, 108, 0x3c00); // d = 1
  // stored scales u = 32 everywhere except u0 = 0, u1 = 63, u5 = 33, u9 = 20, u15 = 47 (hand-packed)
  b.set([0x00, 0x4f, 0x00, 0x00, 0x00, 0x01, 0x00, 0xf0, 0xa8, 0x9b, 0xaa, 0xaa], 96);
  const s = new Array(16).fill(0);
  s[0] = -32; s[1] = 31; s[5] = 1; s[9] = -12; s[15] = 15;
  b[32 + 0] = 0x03; b[0] = 0x01; // value 0: q 3, high bit set -> 3
  b[32 + 16] = 0x21; // value 16: bits 0-1 = 1, no high bit -> -3; value 80: bits 4-5 = 2
  b[16] = 0x04; // hmask[16] bit 2: value 80 -> 2
  b[32 + 63] = 0xc2; // value 159 (bits 0-1 = 2), value 255 (bits 6-7 = 3)
  b[31] = 0x90; // hmask[31] bits 4 and 7: values 159 and 255
  const y = dequantize(GGMLType.Q3_K, b, 256);
  assert.equal(y[0], -32 * 3);
  assert.equal(y[16], 31 * -3);
  assert.equal(y[80], 1 * 2);
  assert.equal(y[159], -12 * 2);
  assert.equal(y[255], 15 * 3);
  for (const v of [1, 17, 81, 150, 254]) assert.equal(y[v], s[v >> 4] * -4, `value ${v}`);
});

test('Q2_K: hand-built block, scale low nibble / min high nibble, 2-bit codes by 32-value stripes', () => {
  const b = new Uint8Array(84);
  for (let j = 0; j < 16; j++) b[j] = j | ((15 - j) << 4);
  b.fill(0xe4, 16, 80); // every byte: shift 0 -> 0, 2 -> 1, 4 -> 2, 6 -> 3
  putF16(b, 80, 0x3c00); // d = 1
  putF16(b, 82, 0x3800); // dmin = 0.5
  const y = dequantize(GGMLType.Q2_K, b, 256);
  for (let v = 0; v < 256; v++) {
    const sub = v >> 4, q = (v >> 5) & 3; // 32-value stripe k of each 128 uses bits 2k..2k+1
    assert.equal(y[v], sub * q - 0.5 * (15 - sub), `value ${v}`);
  }
});

test('Q8_K: f32 scale, int8 codes, bsums = sums of 16 codes', () => {
  const b = new Uint8Array(292);
  new DataView(b.buffer).setFloat32(0, 0.25, true);
  for (let j = 0; j < 256; j++) b[4 + j] = (j - 128) & 0xff;
  const y = dequantize(GGMLType.Q8_K, b, 256);
  for (let j = 0; j < 256; j++) assert.equal(y[j], 0.25 * (j - 128));
  // integers with -127 the largest magnitude: iscale = -127/-127 = 1, codes are the values, d = 1
  const x = new Float32Array(256);
  for (let j = 0; j < 256; j++) x[j] = ((j * 37) % 255) - 127;
  x[5] = -127;
  const q = quantize(GGMLType.Q8_K, x);
  const dv = new DataView(q.buffer);
  assert.equal(dv.getFloat32(0, true), 1);
  for (let j = 0; j < 256; j++) assert.equal(dv.getInt8(4 + j), x[j]);
  for (let g = 0; g < 16; g++) {
    let sum = 0;
    for (let l = 0; l < 16; l++) sum += x[16 * g + l]!;
    assert.equal(dv.getInt16(260 + 2 * g, true), sum);
  }
});

test('K-quants: an all-zero super-block quantizes to all-zero bytes and back to zeros', () => {
  for (const type of [GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.Q8_K]) {
    const q = quantize(type, new Float32Array(256));
    assert.equal(q.length, GGML_TYPE_INFO[type]!.typeSize);
    assert.ok(q.every((v) => v === 0), GGML_TYPE_INFO[type]!.name);
    assert.ok(dequantize(type, q, 256).every((v) => v === 0));
  }
});

// ---------------------------------------------------------------- K-quant round trips: nearest level

/**
 * The levels each value may take, read from a block by the layout (as in the hand-built tests):
 * value = step * q - offset for integer q in [qlo, qhi]. ggml's K quantizers finish by re-rounding every
 * value to the nearest level of its sub-block (sub-blocks whose step is 0 keep the codes of the fit), so
 * the round-trip error of each value is at most half a step when it lies inside the levels' range and
 * exactly its distance to the end level when it lies outside: the nearest-level error.
 */
function kLevels(type: GGMLType, b: Uint8Array, v: number): { step: number; offset: number; qlo: number; qhi: number } {
  const sm = (o: number, j: number): [number, number] => j < 4
    ? [b[o + j]! & 63, b[o + j + 4]! & 63]
    : [(b[o + j + 4]! & 15) | ((b[o + j - 4]! >> 6) << 4), (b[o + j + 4]! >> 4) | ((b[o + j]! >> 6) << 4)];
  switch (type) {
    case GGMLType.Q4_K:
    case GGMLType.Q5_K: {
      const [sc, m] = sm(4, v >> 5);
      return { step: getF16(b, 0) * sc, offset: getF16(b, 2) * m, qlo: 0, qhi: type === GGMLType.Q4_K ? 15 : 31 };
    }
    case GGMLType.Q2_K: {
      const s = b[v >> 4]!;
      return { step: getF16(b, 80) * (s & 15), offset: getF16(b, 82) * (s >> 4), qlo: 0, qhi: 3 };
    }
    case GGMLType.Q3_K: {
      const j = v >> 4;
      const u = (j < 8 ? b[96 + j]! & 15 : b[96 + j - 8]! >> 4) | (((b[104 + (j & 3)]! >> (2 * (j >> 2))) & 3) << 4);
      return { step: getF16(b, 108) * (u - 32), offset: 0, qlo: -4, qhi: 3 };
    }
    case GGMLType.Q6_K:
      return { step: getF16(b, 208) * ((b[192 + (v >> 4)]! << 24) >> 24), offset: 0, qlo: -32, qhi: 31 };
    default:
      throw new Error('not a K-quant');
  }
}

/** Loose sanity bounds on rms error / rms value: for data spread evenly over a sub-block's range r with
 *  k levels, rms error ~ (r/(k-1))/sqrt(12) and rms value ~ r/sqrt(12), so ~1/(k-1); about twice that. */
const K_MAX_REL_RMS: Partial<Record<number, number>> = {
  [GGMLType.Q2_K]: 0.45, [GGMLType.Q3_K]: 0.25, [GGMLType.Q4_K]: 0.12, [GGMLType.Q5_K]: 0.06, [GGMLType.Q6_K]: 0.03,
};

for (const type of [GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]) {
  const name = GGML_TYPE_INFO[type]!.name;
  test(`${name}: quantize -> dequantize puts every value on its nearest level`, () => {
    const n = 256 * 6;
    const x = randomValues(n, 100 + type, 1.5);
    const bytes = quantize(type, x);
    const y = dequantize(type, bytes, n);
    const bs = GGML_TYPE_INFO[type]!.typeSize;
    let checked = 0;
    for (let v = 0; v < n; v++) {
      const blk = bytes.subarray(Math.floor(v / 256) * bs, Math.floor(v / 256 + 1) * bs);
      const { step, offset, qlo, qhi } = kLevels(type, blk, v % 256);
      if (step === 0) continue; // codes left from the fit: nothing to check against
      const lo = Math.min(step * qlo, step * qhi) - offset, hi = Math.max(step * qlo, step * qhi) - offset;
      const xv = x[v]!;
      const nearest = xv < lo ? lo - xv : xv > hi ? xv - hi : Math.abs(step) / 2;
      const err = Math.abs(y[v]! - xv);
      assert.ok(err <= nearest * (1 + 1e-5) + 1e-6 * Math.abs(xv),
        `${name} value ${v}: error ${err} > nearest-level bound ${nearest}`);
      checked++;
    }
    assert.ok(checked > n * 0.9, `only ${checked} values had a nonzero step`);
    // and the fit is useful: rms error well below the rms of the data
    let e2 = 0, x2 = 0;
    for (let v = 0; v < n; v++) { e2 += (y[v]! - x[v]!) ** 2; x2 += x[v]! ** 2; }
    const maxRel = K_MAX_REL_RMS[type]!;
    assert.ok(Math.sqrt(e2 / x2) < maxRel, `${name}: relative rms error ${Math.sqrt(e2 / x2)}`);
  });
}

test('Q8_K: round trip within half a step (d = max|x|/127, no f16 rounding of d)', () => {
  const x = randomValues(512, 9, 4);
  const y = dequantize(GGMLType.Q8_K, quantize(GGMLType.Q8_K, x), 512);
  for (let blk = 0; blk < 2; blk++) {
    const d = amaxOf(x.subarray(256 * blk, 256 * blk + 256)) / 127;
    for (let j = 0; j < 256; j++) {
      const v = 256 * blk + j;
      assert.ok(Math.abs(y[v]! - x[v]!) <= d / 2 * (1 + 1e-5), `value ${v}`);
    }
  }
});

// ---------------------------------------------------------------- llama.cpp-produced vectors

// test/llamacpp-vectors.test.ts checks every type's reference quantizer and dequantizer against ggml.
// Here: the activation quantizers (Q8_0, Q8_1, Q8_K) against the bytes ggml's CPU backend made of dot_x.
const VECTOR_DIR = new URL('../../test/vectors/quant/', import.meta.url);

test('Q8_0 / Q8_1 / Q8_K quantize activations to the bytes ggml made (vec_dot_type of each vector)', (t) => {
  if (!existsSync(VECTOR_DIR)) return t.skip('no test/vectors/quant');
  let compared = 0;
  for (const f of readdirSync(VECTOR_DIR).filter((n) => n.endsWith('.json'))) {
    const v = JSON.parse(readFileSync(new URL(f, VECTOR_DIR), 'utf8')) as {
      vec_dot_type?: string; vec_dot_ggml_type?: number; dot_x?: number[]; dot_x_bytes_hex?: string;
    };
    if (!v.dot_x || !v.dot_x_bytes_hex || !v.vec_dot_type?.startsWith('q8')) continue;
    const got = Buffer.from(quantize(v.vec_dot_ggml_type as GGMLType, Float32Array.from(v.dot_x))).toString('hex');
    assert.equal(got, v.dot_x_bytes_hex, `${f}: ${v.vec_dot_type}`);
    compared++;
  }
  assert.ok(compared > 0);
});
