// Block formats: hand-built blocks decoded to hand-computed values, hand-chosen inputs quantized to
// hand-computed bytes, f16/bf16 special values against known bit patterns, round-trip error bounds
// derived from each format, and the errors callers get for bad input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { GGMLType, GGML_TYPE_INFO } from '../src/model/ggml-types.js';
import { UnsupportedError } from '../src/model/errors.js';
import {
  bf16ToF32, canDequantize, canQuantize, dequantize, dequantizeRows, f16ToF32, f32ToBf16, f32ToF16, quantize,
} from '../src/model/quant/index.js';

const EPS16 = 2 ** -11; // relative rounding error of an f16 scale

/** Deterministic pseudo-random numbers (mulberry32), so failures reproduce. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

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

// ---------------------------------------------------------------- llama.cpp-produced vectors

const VECTOR_DIR = new URL('../../test/vectors/quant/', import.meta.url);
void existsSync; void readFileSync; void VECTOR_DIR;
