// The native causal attention and SwiGLU (native/src/attention.cc) against their plain TypeScript
// references (causalAttentionReference, silu), on both kernel paths, plus argument checking; attention
// split over threads (bit-identical for any count); f16 K/V (the f16 KV cache) against the reference and
// against f32 attention on the same (widened) values, and storeF16 against f32ToF16; the MoE combine (native/src/moe-combine.cc) against
// moeCombineReference bit for bit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { causalAttention, causalAttentionReference, type AttentionShape } from '../src/engine/attention.js';
import { silu } from '../src/experts/ffn.js';
import { native, setKernelPath, swiglu, cpuFeatures, sumBytes, parkThreads, moeCombine, storeF16 } from '../src/native/index.js';
import { f16ToF32, f32ToF16 } from '../src/model/quant/f16.js';
import { moeCombineReference } from '../src/engine/moe-layer.js';
import { mulberry32 } from '../src/engine/prng.js';

function randomFloats(count: number, seed: number, scale = 1): Float32Array {
  const next = mulberry32(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = (next() * 2 - 1) * scale;
  return out;
}

const paths: ('auto' | 'portable')[] = cpuFeatures().avx2 ? ['auto', 'portable'] : ['portable'];

function eachPath(body: () => void): void {
  try {
    for (const p of paths) {
      setKernelPath(p);
      body();
    }
  } finally {
    setKernelPath('auto');
  }
}

// Attention tolerance: both the native paths and the reference compute dot products, softmax and the
// weighted sums in f64 and differ only in summation order and FMA rounding (~1e-15 relative to the
// sums), so after rounding to f32 they may differ by one f32 ulp where the f64 value sits next to a
// rounding boundary: 2^-23 relative, doubled for margin; the absolute term covers results that cancel to ~0.
const ATTN_REL = 2 ** -22;
const ATTN_ABS = 1e-12;

function assertAttentionClose(actual: Float32Array, expected: Float32Array, what: string): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!, e = expected[i]!;
    assert.ok(Number.isFinite(a), `${what} [${i}] not finite: ${a}`);
    assert.ok(Math.abs(a - e) <= ATTN_REL * Math.abs(e) + ATTN_ABS, `${what} [${i}] ${a} vs ${e}`);
  }
}

const shapes: { name: string; shape: AttentionShape }[] = [
  { name: 'MHA 16x128', shape: { nHead: 16, nHeadKv: 16, headDim: 128 } },
  { name: 'GQA group 2, 64', shape: { nHead: 8, nHeadKv: 4, headDim: 64 } },
  { name: 'GQA group 4, 128', shape: { nHead: 8, nHeadKv: 2, headDim: 128 } },
  { name: 'GQA group 2, odd 40', shape: { nHead: 4, nHeadKv: 2, headDim: 40 } },
  { name: 'GQA group 4, odd 72', shape: { nHead: 4, nHeadKv: 1, headDim: 72 } },
  { name: 'tiny headDim 7', shape: { nHead: 3, nHeadKv: 1, headDim: 7 } },
];

test('native causal attention matches the f64 reference (GQA groups 1/2/4, head dims 7..128, start 0 and >0, 1 and 37 tokens)', () => {
  let seed = 1;
  for (const { name, shape } of shapes) {
    for (const [start, nTokens] of [[0, 1], [0, 37], [5, 1], [23, 37], [150, 1]] as const) {
      const { nHead, nHeadKv, headDim } = shape;
      const positions = start + nTokens;
      // q scaled up so that some softmaxes are peaked and some flat.
      const q = randomFloats(nTokens * nHead * headDim, seed++, 4);
      const keys = randomFloats(positions * nHeadKv * headDim, seed++);
      const values = randomFloats(positions * nHeadKv * headDim, seed++);
      const expected = causalAttentionReference(q, keys, values, start, nTokens, shape, new Float32Array(q.length));
      eachPath(() => {
        const out = causalAttention(q, keys, values, start, nTokens, shape, new Float32Array(q.length));
        assertAttentionClose(out, expected, `${name} start ${start} n ${nTokens}`);
      });
    }
  }
});

test('native causal attention over a long context (1000 positions) matches the reference', () => {
  const shape = { nHead: 8, nHeadKv: 4, headDim: 128 };
  const start = 999, nTokens = 1;
  const q = randomFloats(shape.nHead * shape.headDim, 101, 6);
  const keys = randomFloats(1000 * shape.nHeadKv * shape.headDim, 102);
  const values = randomFloats(1000 * shape.nHeadKv * shape.headDim, 103);
  const expected = causalAttentionReference(q, keys, values, start, nTokens, shape, new Float32Array(q.length));
  eachPath(() => {
    assertAttentionClose(causalAttention(q, keys, values, start, nTokens, shape, new Float32Array(q.length)), expected, 'long');
  });
});

test('native causal attention honours typed-array offsets and shared memory, and writes only its rows', () => {
  const shape = { nHead: 4, nHeadKv: 2, headDim: 40 };
  const qPlain = randomFloats(3 * 160, 7);
  const kPlain = randomFloats(9 * 80, 8);
  const vPlain = randomFloats(9 * 80, 9);
  const expected = causalAttentionReference(qPlain, kPlain, vPlain, 6, 3, shape, new Float32Array(480));
  // Views at non-zero offsets into bigger (shared) buffers.
  const shared = (a: Float32Array) => {
    const buf = new Float32Array(new SharedArrayBuffer((a.length + 10) * 4));
    const view = buf.subarray(5, 5 + a.length);
    view.set(a);
    return view;
  };
  const outBig = new Float32Array(480 + 20).fill(42);
  const out = outBig.subarray(10, 490);
  eachPath(() => {
    outBig.fill(42);
    causalAttention(shared(qPlain), shared(kPlain), shared(vPlain), 6, 3, shape, out);
    assertAttentionClose(out, expected, 'offsets');
    for (const i of [0, 9, 490, 499]) assert.equal(outBig[i], 42, `out[${i}] outside the result was written`);
  });
});

/** `x` rounded to f16 by the TypeScript converter (independent of the native storeF16), as bits. */
function toF16Bits(x: Float32Array): Uint16Array {
  return Uint16Array.from(x, (v) => f32ToF16(v));
}

/** f16 bits widened to f32. */
function widen(h: Uint16Array): Float32Array {
  return Float32Array.from(h, (b) => f16ToF32(b));
}

// Some K/V bit patterns the f16 decode must get right: zeros, subnormals (smallest, largest, negative),
// the smallest normal, 65504 (the largest finite), 1 and -2.
const F16_SPECIALS = [0x0000, 0x8000, 0x0001, 0x03ff, 0x8001, 0x83ff, 0x0400, 0x7bff, 0xfbff, 0x3c00, 0xc000];

function randomF16(count: number, seed: number): Uint16Array {
  const h = toF16Bits(randomFloats(count, seed));
  F16_SPECIALS.forEach((b, i) => { if (i * 37 < count) h[i * 37] = b; });
  return h;
}

test('native causal attention over f16 K/V matches the reference and equals f32 attention on the widened values bit for bit', () => {
  let seed = 3000;
  for (const { name, shape } of shapes) {
    for (const [start, nTokens] of [[0, 1], [0, 37], [5, 1], [23, 37], [150, 1]] as const) {
      const { nHead, nHeadKv, headDim } = shape;
      const positions = start + nTokens;
      const q = randomFloats(nTokens * nHead * headDim, seed++, 4);
      const keys = randomF16(positions * nHeadKv * headDim, seed++);
      // values carry the specials (65504 included); keys only small ones, so that no softmax is all one-hot
      const values = randomF16(positions * nHeadKv * headDim, seed++);
      for (let i = 0; i < keys.length; i++) if (Math.abs(f16ToF32(keys[i]!)) > 2) keys[i] = 0x3800; // 0.5
      const expected = causalAttentionReference(q, keys, values, start, nTokens, shape, new Float32Array(q.length));
      const wk = widen(keys), wv = widen(values);
      eachPath(() => {
        const out = causalAttention(q, keys, values, start, nTokens, shape, new Float32Array(q.length));
        assertAttentionClose(out, expected, `f16 ${name} start ${start} n ${nTokens}`);
        const f32 = causalAttention(q, wk, wv, start, nTokens, shape, new Float32Array(q.length));
        assert.deepEqual(new Uint32Array(out.buffer), new Uint32Array(f32.buffer), `f16 vs f32 on the same values, ${name} start ${start} n ${nTokens}`);
      });
    }
  }
});

test('the reference reads f16 K/V as their f32 values', () => {
  const shape = { nHead: 2, nHeadKv: 1, headDim: 8 };
  const q = randomFloats(2 * 16, 3100, 3);
  const keys = randomF16(3 * 8, 3101), values = randomF16(3 * 8, 3102);
  const a = causalAttentionReference(q, keys, values, 1, 2, shape, new Float32Array(32));
  const b = causalAttentionReference(q, widen(keys), widen(values), 1, 2, shape, new Float32Array(32));
  assert.deepEqual(a, b);
});

test('native causal attention over f16 K/V gives the same bits for 1..4 threads, hot and cold', () => {
  const cases = [
    { shape: { nHead: 16, nHeadKv: 16, headDim: 128 }, start: 199, nTokens: 1 },
    { shape: { nHead: 8, nHeadKv: 2, headDim: 128 }, start: 300, nTokens: 1 },   // GQA group 4
    { shape: { nHead: 6, nHeadKv: 3, headDim: 72 }, start: 40, nTokens: 37 },    // a prefill batch, odd dims
  ];
  const streamed = new Uint8Array(64 << 20).fill(1);
  let seed = 3200;
  for (const { shape, start, nTokens } of cases) {
    const positions = start + nTokens;
    const q = randomFloats(nTokens * shape.nHead * shape.headDim, seed++, 4);
    const keys = toF16Bits(randomFloats(positions * shape.nHeadKv * shape.headDim, seed++));
    const values = toF16Bits(randomFloats(positions * shape.nHeadKv * shape.headDim, seed++));
    const expected = causalAttentionReference(q, keys, values, start, nTokens, shape, new Float32Array(q.length));
    eachPath(() => {
      const one = causalAttention(q, keys, values, start, nTokens, shape, new Float32Array(q.length), 1);
      assertAttentionClose(one, expected, `f16 1 thread ${shape.nHead}x${shape.headDim}`);
      for (const threads of [2, 3, 4]) {
        for (const mode of ['hot', 'cold']) {
          if (mode === 'cold') sumBytes(streamed);
          const out = causalAttention(q, keys, values, start, nTokens, shape, new Float32Array(q.length), threads);
          assert.deepEqual(new Uint32Array(out.buffer), new Uint32Array(one.buffer),
            `f16: ${threads} threads (${mode}) differ from 1 thread, ${shape.nHead}x${shape.headDim} at ${start}+${nTokens}`);
        }
      }
    });
  }
});

test('native storeF16 rounds like f32ToF16, bit for bit (specials, ties, subnormals, overflow), at an offset, on any length', () => {
  const specials = [0, -0, 1 / 3, -1 / 3, 0.1, 65504, 65519, 65520, -65520, 1e6, Infinity, -Infinity,
    2 ** -24, 2 ** -25, 3 * 2 ** -25, 2 ** -26, 2 ** -14, 2 ** -14 - 2 ** -24, 1 + 2 ** -11, 1 + 3 * 2 ** -11,
    -(1 + 2 ** -11), 1e-10, 3.4e38, 1.5e-45];
  const random = randomFloats(1000, 3300, 100);
  const tiny = randomFloats(100, 3301, 1e-4);  // half subnormals and small normals
  const src = new Float32Array([...specials, ...random, ...tiny]);
  const expected = Uint16Array.from(src, (v) => f32ToF16(v));
  eachPath(() => {
    for (const n of [0, 1, 7, 8, 9, src.length]) {
      const dst = new Uint16Array(n + 10).fill(0xabcd);
      storeF16(src, dst, 3, n);
      assert.deepEqual(dst.subarray(3, 3 + n), expected.subarray(0, n), `n ${n}`);
      for (const i of [0, 1, 2, n + 3, n + 9]) assert.equal(dst[i], 0xabcd, `dst[${i}] outside [3, ${3 + n}) was written`);
    }
  });
  // NaN stays NaN
  const nan = new Uint16Array(1);
  storeF16(new Float32Array([NaN]), nan, 0, 1);
  assert.ok(Number.isNaN(f16ToF32(nan[0]!)));
});

// SwiGLU tolerance: the AVX2 path works in f32 (an exp within ~2 ulp, then 1 + t, a division and two
// products, each one rounding) so it may be a few f32 ulp (2^-23 ~ 1.2e-7 each) from the f64 formula:
// 1e-6 relative allows ~8. It flushes exp(-|z|) below ~1e-38 to 0, so for z < -87 the result is 0 where
// the f64 value is below |z| * 1e-38 * |u|: the absolute term covers that.
const SWIGLU_REL = 1e-6;
const SWIGLU_ABS = 1e-33;

test('native swiglu matches silu(g) * u in f64, large |z| and zeros included, and leaves values past n alone', () => {
  const specials = [0, -0, 1e-30, -1e-30, 1e-8, -1e-8, 0.5, -0.5, 1, -1, 5, -5, 20, -20, 40, -40, 80, -80,
    87, -87, 88, -88, 90, -90, 100, -100, 1e4, -1e4, 3e38, -3e38];
  const random = randomFloats(1000, 55, 30);
  const gIn = new Float32Array([...specials, ...random]);
  const n = gIn.length; // 1030: not a multiple of 8, so the vector tail is exercised
  const uIn = randomFloats(n, 56, 3);
  uIn[0] = 0; // 0 * 0
  uIn[20] = -1e4; // silu(20) * -1e4
  uIn[28] = 0.5; // 3e38 * 0.5 stays finite in f32
  const expected = Array.from(gIn, (z, i) => silu(z) * uIn[i]!);
  eachPath(() => {
    const g = new Float32Array(n + 5).fill(7);
    g.set(gIn);
    const u = new Float32Array(n + 5).fill(9);
    u.set(uIn);
    swiglu(g, u, n);
    for (let i = 0; i < n; i++) {
      const a = g[i]!, e = expected[i]!;
      const ok = Number.isFinite(e) ? Math.abs(a - e) <= SWIGLU_REL * Math.abs(e) + SWIGLU_ABS : a === e;
      assert.ok(ok, `swiglu z=${gIn[i]} u=${uIn[i]}: ${a} vs ${e}`);
    }
    for (let i = n; i < n + 5; i++) assert.equal(g[i], 7, 'g past n was written');
    assert.deepEqual(u.subarray(0, n), uIn, 'u was modified');
  });
  // Exact values the formula must give: silu(0) = 0, silu(-1e4) * u = -0 * u.
  const g = new Float32Array([0, -1e4, 1e4]);
  swiglu(g, new Float32Array([5, 2, 1]), 3);
  assert.equal(g[0], 0);
  assert.ok(g[1] === 0);
  assert.equal(g[2], 1e4);
});

test('native swiglu works on any length, 0 included', () => {
  for (const n of [0, 1, 7, 8, 9, 17]) {
    eachPath(() => {
      const g = randomFloats(n, n + 1, 10);
      const u = randomFloats(n, n + 2);
      const expected = Array.from(g, (z, i) => silu(z) * u[i]!);
      swiglu(g, u, n);
      for (let i = 0; i < n; i++) assert.ok(Math.abs(g[i]! - expected[i]!) <= SWIGLU_REL * Math.abs(expected[i]!) + SWIGLU_ABS);
    });
  }
});

test('native causalAttention and swiglu reject bad arguments with TypeError/RangeError naming the problem', () => {
  const a = native();
  const f = (n: number) => new Float32Array(n);
  // 2 tokens, start 1, 4 heads over 2 kv heads of 8: q/out 64, keys/values 3 * 16 = 48.
  const ok = () => a.causalAttention(f(64), f(48), f(48), 1, 2, 4, 2, 8, f(64));
  ok();
  assert.throws(() => (a.causalAttention as (...x: unknown[]) => void)(f(64), f(48)), TypeError);
  assert.throws(() => a.causalAttention(new Float64Array(64) as unknown as Float32Array, f(48), f(48), 1, 2, 4, 2, 8, f(64)), { name: 'TypeError', message: /q must be a Float32Array/ });
  assert.throws(() => a.causalAttention(f(64), f(48), f(48), 1, 2, 4, 2, 8, [] as unknown as Float32Array), { name: 'TypeError', message: /out must be/ });
  assert.throws(() => a.causalAttention(f(63), f(48), f(48), 1, 2, 4, 2, 8, f(64)), { name: 'RangeError', message: /q has 63 values, need 64/ });
  assert.throws(() => a.causalAttention(f(64), f(47), f(48), 1, 2, 4, 2, 8, f(64)), { name: 'RangeError', message: /keys has 47 values, need 48/ });
  assert.throws(() => a.causalAttention(f(64), f(48), f(40), 1, 2, 4, 2, 8, f(64)), { name: 'RangeError', message: /values has 40/ });
  assert.throws(() => a.causalAttention(f(64), f(48), f(48), 1, 2, 4, 2, 8, f(60)), { name: 'RangeError', message: /out has 60/ });
  assert.throws(() => a.causalAttention(f(64), f(48), f(48), 1, 2, 4, 3, 8, f(64)), { name: 'RangeError', message: /nHead 4 is not a multiple of nHeadKv 3/ });
  assert.throws(() => a.causalAttention(f(64), f(48), f(48), -1, 2, 4, 2, 8, f(64)), { name: 'RangeError', message: /start/ });
  assert.throws(() => a.causalAttention(f(64), f(48), f(48), 1.5, 2, 4, 2, 8, f(64)), { name: 'RangeError', message: /start/ });
  assert.throws(() => a.causalAttention(f(64), f(48), f(48), 1, 2, 0, 2, 8, f(64)), { name: 'RangeError', message: /nHead must/ });
  assert.throws(() => a.causalAttention(f(64), f(48), f(48), 1, 2, 4, 2, 0, f(64)), { name: 'RangeError', message: /headDim/ });
  assert.throws(() => a.causalAttention(f(64), f(48), f(48), 1, 2, 4, 2, '8' as unknown as number, f(64)), { name: 'RangeError', message: /headDim/ });
  // f16 K/V: both Uint16Array, sizes in values
  const h = (n: number) => new Uint16Array(n);
  a.causalAttention(f(64), h(48), h(48), 1, 2, 4, 2, 8, f(64));
  assert.throws(() => a.causalAttention(f(64), h(48), f(48), 1, 2, 4, 2, 8, f(64)), { name: 'TypeError', message: /values must be a Float32Array, or a Uint16Array/ });
  assert.throws(() => a.causalAttention(f(64), f(48), h(48), 1, 2, 4, 2, 8, f(64)), { name: 'TypeError', message: /values must be/ });
  assert.throws(() => a.causalAttention(f(64), new Int16Array(48) as unknown as Uint16Array, h(48), 1, 2, 4, 2, 8, f(64)), { name: 'TypeError', message: /keys must be/ });
  assert.throws(() => a.causalAttention(f(64), h(47), h(48), 1, 2, 4, 2, 8, f(64)), { name: 'RangeError', message: /keys has 47 values, need 48/ });
  assert.throws(() => a.causalAttention(f(64), h(48), h(24), 1, 2, 4, 2, 8, f(64)), { name: 'RangeError', message: /values has 24 values/ });

  a.storeF16(f(4), h(4), 0, 4);
  assert.throws(() => (a.storeF16 as (...x: unknown[]) => void)(f(4), h(4)), TypeError);
  assert.throws(() => a.storeF16(h(4) as unknown as Float32Array, h(4), 0, 4), { name: 'TypeError', message: /src must be a Float32Array/ });
  assert.throws(() => a.storeF16(f(4), f(4) as unknown as Uint16Array, 0, 4), { name: 'TypeError', message: /dst must be a Uint16Array/ });
  assert.throws(() => a.storeF16(f(3), h(4), 0, 4), { name: 'RangeError', message: /src has 3 values, need 4/ });
  assert.throws(() => a.storeF16(f(4), h(5), 2, 4), { name: 'RangeError', message: /dst has 5 values, need 6/ });
  assert.throws(() => a.storeF16(f(4), h(4), -1, 4), { name: 'RangeError', message: /at must be/ });
  assert.throws(() => a.storeF16(f(4), h(4), 0, 1.5), { name: 'RangeError', message: /n must be/ });

  a.swiglu(f(4), f(4), 4);
  assert.throws(() => (a.swiglu as (...x: unknown[]) => void)(f(4), f(4)), TypeError);
  assert.throws(() => a.swiglu(f(4), new Int32Array(4) as unknown as Float32Array, 4), { name: 'TypeError', message: /u must be a Float32Array/ });
  assert.throws(() => a.swiglu(f(3), f(4), 4), { name: 'RangeError', message: /g has 3 values, need 4/ });
  assert.throws(() => a.swiglu(f(4), f(2), 4), { name: 'RangeError', message: /u has 2 values/ });
  assert.throws(() => a.swiglu(f(4), f(4), -1), { name: 'RangeError', message: /n must be/ });
  assert.throws(() => a.swiglu(f(4), f(4), NaN), { name: 'RangeError', message: /n must be/ });
});

// Sizes past the native threshold for using more threads (256 KiB of K/V read per extra thread), so
// that 2..4 threads really split the heads.
test('native causal attention gives the same bits for 1..4 threads, hot and with the K/V cold, and after the pool sleeps', () => {
  const cases = [
    { shape: { nHead: 16, nHeadKv: 16, headDim: 128 }, start: 199, nTokens: 1 },   // 3.2 MB: up to 12 threads
    { shape: { nHead: 8, nHeadKv: 2, headDim: 128 }, start: 300, nTokens: 1 },    // GQA group 4
    { shape: { nHead: 6, nHeadKv: 3, headDim: 72 }, start: 40, nTokens: 37 },     // a prefill batch, odd dims
    { shape: { nHead: 4, nHeadKv: 1, headDim: 40 }, start: 3, nTokens: 2 },       // below the threshold
  ];
  const streamed = new Uint8Array(64 << 20).fill(1);  // read between calls so the K/V come from DRAM (filled: untouched pages would all be the one zero page)
  let seed = 500;
  for (const { shape, start, nTokens } of cases) {
    const positions = start + nTokens;
    const q = randomFloats(nTokens * shape.nHead * shape.headDim, seed++, 4);
    const keys = randomFloats(positions * shape.nHeadKv * shape.headDim, seed++);
    const values = randomFloats(positions * shape.nHeadKv * shape.headDim, seed++);
    const expected = causalAttentionReference(q, keys, values, start, nTokens, shape, new Float32Array(q.length));
    eachPath(() => {
      const one = causalAttention(q, keys, values, start, nTokens, shape, new Float32Array(q.length), 1);
      assertAttentionClose(one, expected, `1 thread ${shape.nHead}x${shape.headDim}`);
      for (const threads of [2, 3, 4]) {
        for (const mode of ['hot', 'cold', 'parked']) {
          if (mode === 'cold') sumBytes(streamed);
          if (mode === 'parked') parkThreads();
          const out = causalAttention(q, keys, values, start, nTokens, shape, new Float32Array(q.length), threads);
          assert.deepEqual(new Uint32Array(out.buffer), new Uint32Array(one.buffer),
            `${threads} threads (${mode}) differ from 1 thread, ${shape.nHead}x${shape.headDim} at ${start}+${nTokens}`);
        }
      }
    });
  }
});

test('native causalAttention rejects a bad thread count', () => {
  const f = (n: number) => new Float32Array(n);
  const a = native();
  for (const bad of [0, -1, 1.5, 257, NaN]) {
    assert.throws(() => a.causalAttention(f(64), f(48), f(48), 1, 2, 4, 2, 8, f(64), bad), { name: 'RangeError', message: /threads/ });
  }
});

// Random routing like the MoE layer's: every token picks k distinct experts with weights in (0, 1)
// (some exactly 1, some tiny), each used expert's outputs are rows of one buffer in job order.
function randomCombine(nTokens: number, k: number, nEmbd: number, seed: number) {
  const next = mulberry32(seed);
  const nExpert = k + 1 + Math.floor(next() * 8);
  const rowsOf: number[][] = Array.from({ length: nExpert }, () => []);  // rowsOf[e] = (t * k + slot) it serves
  const weights = new Float32Array(nTokens * k);
  for (let t = 0; t < nTokens; t++) {
    const experts = Array.from({ length: nExpert }, (_, e) => e).sort(() => next() - 0.5).slice(0, k);
    experts.forEach((e, slot) => {
      rowsOf[e]!.push(t * k + slot);
      const r = next();
      weights[t * k + slot] = r < 0.05 ? 1 : r < 0.1 ? 1e-30 * next() : next();
    });
  }
  const pad = 3;  // rows start past some unrelated values, as in a shared output buffer
  const ys = randomFloats(pad + nTokens * k * nEmbd, seed + 1, 50);
  const offsets = new Int32Array(nTokens * k);
  let row = 0;
  for (const slots of rowsOf) for (const s of slots) offsets[s] = pad + nEmbd * row++;
  return { ys, offsets, weights };
}

test('native moeCombine equals moeCombineReference bit for bit (k 1..8, 1..37 tokens, widths around the vector size)', () => {
  let seed = 900;
  for (const k of [1, 2, 3, 4, 5, 6, 7, 8]) {
    for (const nTokens of [1, 2, 5, 37]) {
      for (const nEmbd of [1, 7, 8, 9, 64, 131]) {
        const { ys, offsets, weights } = randomCombine(nTokens, k, nEmbd, seed += 2);
        const expected = moeCombineReference(ys, offsets, weights, nTokens, k, nEmbd, new Float32Array(nTokens * nEmbd));
        eachPath(() => {
          const out = new Float32Array(nTokens * nEmbd + 2).fill(42);
          moeCombine(ys, offsets, weights, nTokens, k, nEmbd, out);
          assert.deepEqual(new Uint32Array(out.buffer, 0, nTokens * nEmbd), new Uint32Array(expected.buffer),
            `k ${k} tokens ${nTokens} nEmbd ${nEmbd}`);
          assert.deepEqual([out[nTokens * nEmbd], out[nTokens * nEmbd + 1]], [42, 42], 'wrote past the rows');
        });
      }
    }
  }
});

test('moeCombineReference rounds each product and each sum to f32, in selection order', () => {
  // Hand-computed: slot order matters in f32: (2^24 + 1) + (-2^24) = 0 after rounding 2^24 + 1 to 2^24,
  // while (-2^24) + 1 + 2^24 = 1 (exact). Products: 3 * 1/3 rounds in f32 (0x3f800000 exactly 1).
  const ys = new Float32Array([2 ** 24, 1, -(2 ** 24), 3]);
  const w = new Float32Array([1, 1, 1]);
  const out = new Float32Array(1);
  moeCombineReference(ys, new Int32Array([0, 1, 2]), w, 1, 3, 1, out);
  assert.equal(out[0], 0);
  moeCombineReference(ys, new Int32Array([2, 1, 0]), w, 1, 3, 1, out);
  assert.equal(out[0], 1);
  moeCombine(ys, new Int32Array([2, 1, 0]), w, 1, 3, 1, out);
  assert.equal(out[0], 1);
  moeCombine(ys, new Int32Array([0, 1, 2]), w, 1, 3, 1, out);
  assert.equal(out[0], 0);
  moeCombine(ys, new Int32Array([3]), new Float32Array([1 / 3]), 1, 1, 1, out);
  assert.equal(out[0], Math.fround(3 * Math.fround(1 / 3)));
});

test('native moeCombine rejects bad arguments, rows outside ys included', () => {
  const f = (n: number) => new Float32Array(n);
  const a = native();
  a.moeCombine(f(8), new Int32Array([0, 4]), f(2), 1, 2, 4, f(4));
  assert.throws(() => (a.moeCombine as (...x: unknown[]) => void)(f(8)), TypeError);
  assert.throws(() => a.moeCombine(f(8), new Uint32Array(2) as unknown as Int32Array, f(2), 1, 2, 4, f(4)), { name: 'TypeError', message: /offsets must be an Int32Array/ });
  assert.throws(() => a.moeCombine(f(8), new Int32Array([0, 5]), f(2), 1, 2, 4, f(4)), { name: 'RangeError', message: /offsets\[1\] = 5/ });
  assert.throws(() => a.moeCombine(f(8), new Int32Array([-1, 0]), f(2), 1, 2, 4, f(4)), { name: 'RangeError', message: /offsets\[0\]/ });
  assert.throws(() => a.moeCombine(f(8), new Int32Array([0]), f(2), 1, 2, 4, f(4)), { name: 'RangeError', message: /need nTokens \* k = 2/ });
  assert.throws(() => a.moeCombine(f(8), new Int32Array([0, 4]), f(2), 1, 2, 4, f(3)), { name: 'RangeError', message: /out is shorter/ });
  assert.throws(() => a.moeCombine(f(8), new Int32Array([0, 4]), f(2), 1, 0, 4, f(4)), { name: 'RangeError', message: /k must be/ });
});
