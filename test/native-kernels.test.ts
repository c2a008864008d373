// Native matmul kernels: hand-computed products, agreement with the TypeScript block-format reference,
// portable vs AVX2 paths, thread-count and batch independence, and argument checking.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GGMLType, GGML_TYPE_INFO, typeName } from '../src/model/ggml-types.js';
import {
  bf16ToF32, canDequantize, canQuantize, dequantize, f16ToF32, f32ToBf16, f32ToF16, quantize,
} from '../src/model/quant/index.js';
import { cpuFeatures, kernelPath, matmul, matmulSameInput, setKernelPath, sumBytes } from '../src/native/index.js';
import { mulberry32 as rng } from '../src/engine/prng.js';

const TYPES: GGMLType[] = [
  GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
  GGMLType.Q5_1, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
];

// Byte offsets of the f16 scale fields (d, m / dmin) inside one block, per ggml-common.h.
const SCALE_OFFSETS: Partial<Record<GGMLType, number[]>> = {
  [GGMLType.Q8_0]: [0], [GGMLType.Q4_0]: [0], [GGMLType.Q4_1]: [0, 2], [GGMLType.Q5_0]: [0],
  [GGMLType.Q5_1]: [0, 2], [GGMLType.Q2_K]: [80, 82], [GGMLType.Q3_K]: [108], [GGMLType.Q4_K]: [0, 2],
  [GGMLType.Q5_K]: [0, 2], [GGMLType.Q6_K]: [208],
};

type VecDotType = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q8_1' | 'q8_K';
function vecDotType(type: GGMLType): VecDotType {
  switch (type) {
    case GGMLType.F32: return 'f32';
    case GGMLType.F16: return 'f16';
    case GGMLType.BF16: return 'bf16';
    case GGMLType.Q4_1: case GGMLType.Q5_1: return 'q8_1';
    case GGMLType.Q4_0: case GGMLType.Q5_0: case GGMLType.Q8_0: return 'q8_0';
    default: return 'q8_K';
  }
}


function normals(n: number, rand: () => number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = scale * Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
  }
  return out;
}

function setF16(buf: Uint8Array, at: number, value: number): void {
  const h = f32ToF16(value);
  buf[at] = h & 0xff;
  buf[at + 1] = h >>> 8;
}

/**
 * Random weights: for block types, random bytes (every bit pattern of the quants) with sane f16 scales;
 * where the TS quantizer exists, half the time quantized normals instead (realistic blocks).
 */
function randomWeights(type: GGMLType, rows: number, cols: number, rand: () => number): Uint8Array {
  const info = GGML_TYPE_INFO[type]!;
  const offsets = SCALE_OFFSETS[type];
  if (!offsets || (canQuantize(type) && rand() < 0.5)) {
    return quantize(type, normals(rows * cols, rand, 0.1));
  }
  const bytes = new Uint8Array(rows * cols / info.blockSize * info.typeSize);
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(rand() * 256);
  for (let b = 0; b < bytes.length; b += info.typeSize) {
    for (const o of offsets) setF16(bytes, b + o, (rand() - 0.3) * 0.02);
  }
  return bytes;
}

// ---- the activation row as the kernel sees it after conversion to the vec-dot type

function roundTripQ8(type: GGMLType.Q8_0 | GGMLType.Q8_1, x: Float32Array): { values: Float32Array; s: Float32Array } {
  const blocks = quantize(type, x);
  const values = dequantize(type, blocks, x.length);
  const s = new Float32Array(x.length / 32);
  if (type === GGMLType.Q8_1) {
    for (let b = 0; b < s.length; b++) s[b] = f16ToF32(blocks[36 * b + 2]! | (blocks[36 * b + 3]! << 8));
  }
  return { values, s };
}

// Q8_K per ggml's quantize_row_q8_K_ref: the signed value of largest magnitude maps to -127, rounding
// half to even, d = 1/iscale kept in f32.
function roundTripQ8K(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let b = 0; b < x.length; b += 256) {
    let amax = 0;
    let max = 0;
    for (let i = 0; i < 256; i++) {
      if (Math.abs(x[b + i]!) > amax) { amax = Math.abs(x[b + i]!); max = x[b + i]!; }
    }
    if (amax === 0) continue;
    const iscale = Math.fround(-127 / max);
    const d = Math.fround(1 / iscale);
    for (let i = 0; i < 256; i++) {
      const v = Math.fround(iscale * x[b + i]!);
      let q = Math.round(v);
      if (Math.abs(v - Math.trunc(v)) === 0.5) q = 2 * Math.round(v / 2); // half to even
      out[b + i] = Math.fround(d * Math.min(127, q));
    }
  }
  return out;
}

interface Reference { values: Float64Array; scale: Float64Array }

/**
 * Independent reference: dequantize(W) with the TS block-format code, dotted in float64 with the
 * activation after the same vec-dot-type conversion. For Q4_1/Q5_1 ggml uses the Q8_1 block's stored
 * s = f16(d * sum(q)) for the min term, so the reference does too: sum (w - m) * x + m * s per block.
 * scale[t*rows+r] = sum |w_i * x_i|, the size that float rounding errors are relative to.
 */
function reference(type: GGMLType, w: Uint8Array, rows: number, cols: number, x: Float32Array,
  nTokens: number): Reference {
  const wf = dequantize(type, w, rows * cols);
  const info = GGML_TYPE_INFO[type]!;
  const vdt = vecDotType(type);
  const values = new Float64Array(rows * nTokens);
  const scale = new Float64Array(rows * nTokens);
  for (let t = 0; t < nTokens; t++) {
    const xt = x.subarray(t * cols, (t + 1) * cols);
    let xq: Float32Array<ArrayBufferLike>;
    let s: Float32Array<ArrayBufferLike> = new Float32Array(0);
    switch (vdt) {
      case 'f32': xq = xt; break;
      case 'f16': xq = xt.map((v) => f16ToF32(f32ToF16(v))); break;
      case 'bf16': xq = xt.map((v) => bf16ToF32(f32ToBf16(v))); break;
      case 'q8_0': xq = roundTripQ8(GGMLType.Q8_0, xt).values; break;
      case 'q8_1': ({ values: xq, s } = roundTripQ8(GGMLType.Q8_1, xt)); break;
      case 'q8_K': xq = roundTripQ8K(xt); break;
    }
    for (let r = 0; r < rows; r++) {
      let sum = 0;
      let abs = 0;
      for (let c = 0; c < cols; c++) {
        const p = wf[r * cols + c]! * xq[c]!;
        abs += Math.abs(p);
        if (vdt !== 'q8_1') sum += p;
      }
      if (vdt === 'q8_1') {
        for (let b = 0; b < cols / 32; b++) {
          const blk = (r * cols) / 32 + b;
          const m = f16ToF32(w[blk * info.typeSize + 2]! | (w[blk * info.typeSize + 3]! << 8));
          for (let i = 0; i < 32; i++) sum += (wf[r * cols + 32 * b + i]! - m) * xq[32 * b + i]!;
          sum += m * s[b]!;
        }
      }
      values[t * rows + r] = sum;
      scale[t * rows + r] = abs;
    }
  }
  return { values, scale };
}

function run(type: GGMLType, w: Uint8Array, rows: number, cols: number, x: Float32Array, nTokens: number,
  threads = 1): Float32Array {
  const out = new Float32Array(rows * nTokens);
  matmul(type, w, rows, cols, x, nTokens, out, threads);
  return out;
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  return Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength),
    Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

test('hand-computed products for F32, Q8_0 and Q4_0', () => {
  for (const path of ['portable', 'avx2', 'auto'] as const) {
    setKernelPath(path);
    // F32: 2 rows x 3 cols, 2 tokens.
    const wf = new Float32Array([1, 2, 3, -1, 0.5, 4]);
    const out = run(GGMLType.F32, new Uint8Array(wf.buffer), 2, 3, new Float32Array([1, 1, 1, 2, -1, 0.25]), 2);
    assert.deepEqual([...out], [6, 3.5, 0.75, -1.5], path);

    // Q8_0, d = 1: q_i = i - 16. x = (127, 1, ..., 1) quantizes exactly (amax 127 -> d = 1).
    // dot = -16 * 127 + sum_{i=1..31} (i - 16) = -2032.
    const q8 = new Uint8Array(34);
    setF16(q8, 0, 1);
    for (let i = 0; i < 32; i++) q8[2 + i] = (i - 16) & 0xff;
    const x = new Float32Array(32).fill(1);
    x[0] = 127;
    assert.deepEqual([...run(GGMLType.Q8_0, q8, 1, 32, x, 1)], [-2032], path);

    // Q4_0, d = 0.5: every byte 0x9a -> low nibble 10 (value 2) for i < 16, high nibble 9 (value 1) after.
    // x = (127, 1, ...): 0.5 * (2 * 127 + 2 * 15 + 1 * 16) = 150.
    const q4 = new Uint8Array(18).fill(0x9a);
    setF16(q4, 0, 0.5);
    assert.deepEqual([...run(GGMLType.Q4_0, q4, 1, 32, x, 1)], [150], path);
  }
  setKernelPath('auto');
});

const ROWS = [1, 3, 17, 33];
// 11 blocks: the SIMD kernels take 32-value blocks in groups of 8, so this covers a group plus a tail.
const BLOCKS = [1, 2, 3, 11];
const TOKENS = [1, 2, 5];

for (const type of TYPES) {
  const name = typeName(type);
  test(`${name}: native matches the TS reference, both paths, any thread count`, (t) => {
    const info = GGML_TYPE_INFO[type]!;
    const haveRef = canDequantize(type);
    if (!haveRef) t.diagnostic(`no TS dequantize for ${name} yet: reference comparison skipped`);
    const rand = rng(type * 7919 + 1);
    let worstRef = 0;
    for (const rows of ROWS) {
      for (const blocks of BLOCKS) {
        // Float types: odd lengths, so the SIMD tails are exercised.
        const cols = blocks * (info.blockSize === 1 ? 67 : info.blockSize);
        const w = randomWeights(type, rows, cols, rand);
        for (const nTokens of TOKENS) {
          const x = normals(nTokens * cols, rand);
          if (nTokens === 5) x.fill(0, cols, 2 * cols); // an all-zero activation row (scale 0 blocks)
          const where = `${name} rows=${rows} cols=${cols} nTokens=${nTokens}`;

          setKernelPath('portable');
          const portable = run(type, w, rows, cols, x, nTokens);
          setKernelPath('auto');
          const auto = run(type, w, rows, cols, x, nTokens);

          const ref = haveRef ? reference(type, w, rows, cols, x, nTokens) : undefined;
          let maxAbs = 0;
          for (const v of portable) maxAbs = Math.max(maxAbs, Math.abs(v));
          for (let i = 0; i < auto.length; i++) {
            // (a) The paths sum the same exact per-block integer dot products, but in a different float
            // order (AVX2 keeps 8 lanes), so they agree to float rounding relative to sum |w x|.
            const size = ref ? ref.scale[i]! : maxAbs;
            assert.ok(Math.abs(auto[i]! - portable[i]!) <= 1e-5 * size + 1e-6,
              `${where} out[${i}]: avx2 ${auto[i]} vs portable ${portable[i]}`);
            // (b) Against the float64 reference: |diff| <= 1e-4 * sum_i |w_i x_i| + 1e-6.
            if (ref) {
              const diff = Math.abs(auto[i]! - ref.values[i]!);
              worstRef = Math.max(worstRef, diff / (ref.scale[i]! + 1e-30));
              assert.ok(diff <= 1e-4 * ref.scale[i]! + 1e-6,
                `${where} out[${i}]: native ${auto[i]} vs reference ${ref.values[i]} (scale ${ref.scale[i]})`);
              assert.ok(Math.abs(portable[i]! - ref.values[i]!) <= 1e-4 * ref.scale[i]! + 1e-6,
                `${where} out[${i}]: portable ${portable[i]} vs reference ${ref.values[i]}`);
            }
          }
          // (c) Each row is computed by one thread with the same code: bit-identical for any count.
          for (const threads of [2, 3]) {
            assert.ok(sameBits(run(type, w, rows, cols, x, nTokens, threads), auto), `${where} threads=${threads}`);
          }
          // A token's result does not depend on the batch it came in.
          for (let tk = 0; tk < nTokens; tk++) {
            const alone = run(type, w, rows, cols, x.subarray(tk * cols, (tk + 1) * cols), 1);
            assert.ok(sameBits(alone, auto.subarray(tk * rows, (tk + 1) * rows)), `${where} token ${tk} alone`);
          }
        }
      }
    }
    if (haveRef) t.diagnostic(`worst |native - ref| / sum|w x| = ${worstRef.toExponential(2)}`);
  });
}

// llama.cpp-produced vectors (see test/vectors/README.md): one 512-value row per type, its ggml bytes, an
// activation row and ggml's CPU vec_dot of the two (AVX2 build). Our result may differ only by float
// summation order: |diff| <= 1e-6 * sum |w_i x_i| (w dequantized by llama.cpp) + 1e-6.
const VECTORS = new URL('../../test/vectors/quant/', import.meta.url);
test('matches llama.cpp vec_dot on its vectors', (t) => {
  if (!existsSync(VECTORS)) {
    t.skip('test/vectors/quant not present');
    return;
  }
  let checked = 0;
  for (const file of readdirSync(VECTORS).filter((f) => f.endsWith('.json')).sort()) {
    const v = JSON.parse(readFileSync(new URL(file, VECTORS), 'utf8')) as {
      ggml_type: GGMLType; n: number; bytes_hex: string; dequant: number[]; dot_x?: number[]; dot?: number;
    };
    if (v.dot_x === undefined || v.dot === undefined) continue;
    const w = new Uint8Array(Buffer.from(v.bytes_hex, 'hex'));
    const x = Float32Array.from(v.dot_x);
    let size = 0;
    for (let i = 0; i < v.n; i++) size += Math.abs(v.dequant[i]! * x[i]!);
    for (const path of ['portable', 'auto'] as const) {
      setKernelPath(path);
      const got = run(v.ggml_type, w, 1, v.n, x, 1)[0]!;
      assert.ok(Math.abs(got - v.dot) <= 1e-6 * size + 1e-6, `${file} ${path}: ${got} vs llama.cpp ${v.dot}`);
    }
    checked++;
  }
  setKernelPath('auto');
  t.diagnostic(`${checked} vectors checked`);
});

test('long rows (the SIMD path prefetches from 4096 values) agree with the portable path', () => {
  const rand = rng(11);
  const rows = 3, cols = 4096 + 256 * 3;
  for (const type of TYPES) {
    const w = randomWeights(type, rows, cols, rand);
    const x = normals(cols, rand);
    const ref = reference(type, w, rows, cols, x, 1);
    setKernelPath('portable');
    const portable = run(type, w, rows, cols, x, 1);
    setKernelPath('auto');
    const auto = run(type, w, rows, cols, x, 1);
    for (let r = 0; r < rows; r++) {
      assert.ok(Math.abs(auto[r]! - portable[r]!) <= 1e-5 * ref.scale[r]! + 1e-6, `${typeName(type)} row ${r}`);
    }
  }
});

test('buffers on SharedArrayBuffer and at byte offsets', () => {
  const rand = rng(5);
  const rows = 5, cols = 64;
  const w = randomWeights(GGMLType.Q4_0, rows, cols, rand);
  const x = normals(cols, rand);
  const expected = run(GGMLType.Q4_0, w, rows, cols, x, 1);
  const sab = new SharedArrayBuffer(4096);
  const ws = new Uint8Array(sab, 3, w.length);
  ws.set(w);
  const xs = new Float32Array(sab, 1024, cols);
  xs.set(x);
  const outs = new Float32Array(sab, 2048, rows);
  matmul(GGMLType.Q4_0, ws, rows, cols, xs, 1, outs, 2);
  assert.ok(sameBits(outs, expected));
});

test('bad arguments throw and do not crash', () => {
  const w = new Uint8Array(2 * 18);
  const x = new Float32Array(64);
  const out = new Float32Array(4);
  const ok = (): void => matmul(GGMLType.Q4_0, w, 2, 32, x, 2, out);
  ok();
  assert.throws(() => matmul(GGMLType.Q4_0, w, 3, 32, x, 1, out), RangeError); // w too short
  assert.throws(() => matmul(GGMLType.Q4_0, w, 2, 32, x, 3, new Float32Array(6)), RangeError); // x too short
  assert.throws(() => matmul(GGMLType.Q4_0, w, 2, 32, x, 2, new Float32Array(3)), RangeError); // out too short
  assert.throws(() => matmul(GGMLType.Q4_0, w, 1, 30, x, 1, out), /multiple of the block size/);
  assert.throws(() => matmul(GGMLType.IQ2_XXS, w, 1, 256, x, 1, out), RangeError);
  assert.throws(() => matmul(GGMLType.Q4_0, w, 0, 32, x, 1, out), RangeError);
  assert.throws(() => matmul(GGMLType.Q4_0, w, 1.5, 32, x, 1, out), RangeError);
  assert.throws(() => matmul(GGMLType.Q4_0, w, 2, 32, x, 2, out, 0), RangeError);
  assert.throws(() => matmul(GGMLType.Q4_0, x as unknown as Uint8Array, 1, 32, x, 1, out), TypeError);
  assert.throws(() => matmul(GGMLType.Q4_0, w, 1, 32, new Float64Array(32) as unknown as Float32Array, 1, out),
    TypeError);
  assert.throws(() => setKernelPath('fast' as 'auto'), RangeError);
  ok(); // still works afterwards
});

test('sumBytes adds every byte on both paths', () => {
  const rand = rng(9);
  const buf = new Uint8Array(1000 + 77);
  for (let i = 0; i < buf.length; i++) buf[i] = Math.floor(rand() * 256);
  for (const path of ['portable', 'auto'] as const) {
    setKernelPath(path);
    for (const view of [buf, buf.subarray(3), buf.subarray(5, 5 + 129), buf.subarray(0, 0)]) {
      let expected = 0;
      for (const b of view) expected += b;
      assert.equal(sumBytes(view), expected, `${path} length ${view.length}`);
    }
  }
  setKernelPath('auto');
  assert.throws(() => sumBytes(new Float32Array(4) as unknown as Uint8Array), TypeError);
});

test('Q4_0: the AVX-512 VNNI path (auto where the CPU has it) gives the AVX2 path\'s bits', () => {
  // Both sum the same exact integer block dot products and scale them with the same float operations.
  // Where the CPU lacks AVX-512 VNNI both runs take the AVX2 (or portable) path and trivially agree.
  const rand = rng(13);
  for (const cols of [32 * 11, 256 * 3 + 64, 4096 + 256 * 2 + 32]) {
    const rows = 5;
    const w = randomWeights(GGMLType.Q4_0, rows, cols, rand);
    for (const nTokens of [1, 3]) {
      const x = normals(nTokens * cols, rand);
      setKernelPath('avx2');
      const avx2 = run(GGMLType.Q4_0, w, rows, cols, x, nTokens);
      setKernelPath('auto');
      const auto = run(GGMLType.Q4_0, w, rows, cols, x, nTokens, 2);
      assert.ok(sameBits(auto, avx2), `cols=${cols} nTokens=${nTokens}`);
      const ref = reference(GGMLType.Q4_0, w, rows, cols, x, nTokens);
      for (let i = 0; i < auto.length; i++) {
        assert.ok(Math.abs(auto[i]! - ref.values[i]!) <= 1e-4 * ref.scale[i]! + 1e-6, `cols=${cols} out[${i}]`);
      }
    }
  }
  setKernelPath('auto');
});

test('Q4_0: several tokens give each token the bits of a one-token product (1-9 tokens, odd shapes, 1 and 3 threads)', () => {
  // The multi-token path shares each unpacked weight group between tokens but must keep every (row, token)
  // output's float operations, so results cannot depend on nTokens, the tiling or the thread split.
  const rand = rng(29);
  const shapes = [[13, 32 * 7], [7, 256 * 2 + 96], [11, 256 * 5], [3, 256], [9, 4096 + 256 + 64]] as const;
  for (const path of ['auto', 'avx2'] as const) {
    setKernelPath(path);
    for (const [rows, cols] of shapes) {
      const w = randomWeights(GGMLType.Q4_0, rows, cols, rand);
      const x = normals(9 * cols, rand);
      const single: Float32Array[] = [];
      for (let t = 0; t < 9; t++) single.push(run(GGMLType.Q4_0, w, rows, cols, x.subarray(t * cols, (t + 1) * cols), 1));
      for (let nTokens = 1; nTokens <= 9; nTokens++) {
        for (const threads of [1, 3]) {
          const out = run(GGMLType.Q4_0, w, rows, cols, x.subarray(0, nTokens * cols), nTokens, threads);
          for (let t = 0; t < nTokens; t++) {
            assert.ok(sameBits(out.subarray(t * rows, (t + 1) * rows), single[t]!),
              `${path} rows=${rows} cols=${cols} nTokens=${nTokens} threads=${threads} token ${t}`);
          }
        }
      }
    }
  }
  setKernelPath('auto');
});

test('cpuFeatures and the chosen kernel path agree', () => {
  const f = cpuFeatures();
  for (const k of ['avx2', 'fma', 'f16c', 'avx512'] as const) assert.equal(typeof f[k], 'boolean');
  setKernelPath('portable');
  assert.equal(kernelPath(), 'portable');
  const avx2 = f.avx2 && f.fma && f.f16c;
  setKernelPath('avx2');
  assert.equal(kernelPath(), avx2 ? 'avx2' : 'portable');
  setKernelPath('auto');
  // 'avx512' also needs AVX-512 VL/BW/VNNI, which cpuFeatures does not list: accept either SIMD path there.
  if (avx2 && f.avx512) assert.ok(['avx512', 'avx2'].includes(kernelPath()));
  else assert.equal(kernelPath(), avx2 ? 'avx2' : 'portable');
});

test('matmulSameInput gives each product the bits matmul gives it (mixed types, odd row counts, 1-4 threads)', () => {
  const rand = rng(4242);
  const cols = 512;
  const specs: [GGMLType, number][] = [[GGMLType.Q4_0, 200], [GGMLType.Q8_0, 37], [GGMLType.Q4_K, 96], [GGMLType.Q6_K, 130], [GGMLType.F16, 17], [GGMLType.F32, 33]];
  const weights = specs.map(([type, rows]) => ({ type, rows, w: quantize(type, normals(rows * cols, rand, 0.5)) }));
  for (const nTokens of [1, 5]) {
    const x = normals(nTokens * cols, rand);
    const want = weights.map(({ type, rows, w }) => {
      const out = new Float32Array(nTokens * rows);
      matmul(type, w, rows, cols, x, nTokens, out, 1);
      return out;
    });
    for (const threads of [1, 2, 3, 4]) {
      const outs = weights.map(({ rows }) => new Float32Array(nTokens * rows));
      matmulSameInput(weights.map(({ type, rows, w }, i) => ({ type, w, rows, out: outs[i]! })), x, cols, nTokens, threads);
      outs.forEach((o, i) => assert.deepEqual(o, want[i], `${typeName(specs[i]![0])} x ${nTokens} tokens, ${threads} threads`));
    }
  }
  const one = weights[0]!;
  assert.throws(() => matmulSameInput([{ type: one.type, w: one.w, rows: one.rows + 1, out: new Float32Array(one.rows + 1) }], normals(cols, rand), cols, 1), RangeError);
  assert.throws(() => matmulSameInput([{ type: one.type, w: one.w, rows: one.rows, out: new Float32Array(3) }], normals(cols, rand), cols, 1), RangeError);
  assert.throws(() => matmulSameInput([{ type: 99 as GGMLType, w: one.w, rows: 1, out: new Float32Array(1) }], normals(cols, rand), cols, 1), RangeError);
});
