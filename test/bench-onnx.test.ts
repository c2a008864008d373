// The ORT MatMulNBits model our benchmark builds must compute the same product as our Q4_0 matrix,
// otherwise the native-vs-ORT speed comparison would compare different work.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GGMLType } from '../src/model/ggml-types.js';
import { dequantize, f32ToF16 } from '../src/model/quant/index.js';
import { encodeVarint } from '../bench/protobuf.js';
import { buildMatMulNBitsModel, q4_0ToMatMulNBits } from '../bench/onnx-matmulnbits.js';
import { createCpuSession, runMatMulNBits } from '../bench/ort-session.js';
import { randomFloats, seededRandom } from '../bench/random.js';

const N = 64;
const K = 256;
const BLOCK = 32;

test('varints are base-128, low group first (protobuf spec examples)', () => {
  assert.deepEqual([...encodeVarint(0)], [0x00]);
  assert.deepEqual([...encodeVarint(1)], [0x01]);
  assert.deepEqual([...encodeVarint(150)], [0x96, 0x01]);
  assert.deepEqual([...encodeVarint(300)], [0xac, 0x02]);
  assert.deepEqual([...encodeVarint(2 ** 32)], [0x80, 0x80, 0x80, 0x80, 0x10]);
});

test('Q4_0 -> MatMulNBits moves nibbles from (j, j+16) pairs to (2j, 2j+1) pairs', () => {
  // One block by hand: d = 1.0 (f16 0x3C00), element e has q = e % 16.
  const block = new Uint8Array(18);
  block[0] = 0x00; block[1] = 0x3c;
  for (let j = 0; j < 16; j++) block[2 + j] = (j % 16) | ((((j + 16) % 16)) << 4);
  const w = q4_0ToMatMulNBits(block, 1, 32);
  assert.deepEqual([...w.scales], [1]);
  for (let j = 0; j < 16; j++) {
    assert.equal(w.b[j]! & 0x0f, (2 * j) % 16, `low nibble of byte ${j}`);
    assert.equal(w.b[j]! >> 4, (2 * j + 1) % 16, `high nibble of byte ${j}`);
  }
});

/** y[n] = sum_k W[n,k] x[k] in float64, plus sum_k |W[n,k]| |x[k]| (scale for tolerances). */
function reference(w: Float32Array, x: Float32Array): { y: Float64Array; absSum: Float64Array } {
  const y = new Float64Array(N);
  const absSum = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    for (let k = 0; k < K; k++) {
      y[n]! += w[n * K + k]! * x[k]!;
      absSum[n]! += Math.abs(w[n * K + k]! * x[k]!);
    }
  }
  return { y, absSum };
}

async function ortProduct(q4: Uint8Array, x: Float32Array, accuracyLevel: number): Promise<Float32Array> {
  const model = buildMatMulNBitsModel(q4_0ToMatMulNBits(q4, N, K), { accuracyLevel });
  const session = await createCpuSession(model);
  try {
    return await runMatMulNBits(session, x);
  } finally {
    await session.release();
  }
}

/** Random but valid Q4_0 blocks: every nibble value occurs; scales d in [0.01, 0.1). */
function randomQ4_0(blocks: number, seed: number): Uint8Array {
  const next = seededRandom(seed);
  const out = new Uint8Array(blocks * 18);
  for (let b = 0; b < blocks; b++) {
    const d = f32ToF16(0.01 + 0.09 * next());
    out[b * 18] = d & 0xff;
    out[b * 18 + 1] = d >> 8;
    for (let j = 0; j < 16; j++) out[b * 18 + 2 + j] = Math.floor(next() * 256);
  }
  return out;
}

const q4 = randomQ4_0((N * K) / BLOCK, 1);
// Decoded inside the tests so the encoder tests above still run if the quant module fails.
let decoded: Float32Array | undefined;
const dequantized = (): Float32Array => (decoded ??= dequantize(GGMLType.Q4_0, q4, N * K));
const x = randomFloats(K, 2);

test('accuracy_level 0 (f32 compute) equals the dequantized Q4_0 matrix times x', async () => {
  const y = await ortProduct(q4, x, 0);
  const ref = reference(dequantized(), x);
  assert.equal(y.length, N);
  for (let n = 0; n < N; n++) {
    // Weights are exact in f32 ((q-8)*d with d an f16); only f32 summation rounding remains:
    // at most ~K * 2^-24 relative to sum |w x|; 1e-5 leaves room for any summation order.
    const tol = 1e-5 * ref.absSum[n]!;
    assert.ok(Math.abs(y[n]! - ref.y[n]!) <= tol, `row ${n}: ort ${y[n]} vs ref ${ref.y[n]} (tol ${tol})`);
  }
});

test('accuracy_level 4 (int8 A) is within the int8 rounding bound of the exact product', async () => {
  const y = await ortProduct(q4, x, 4);
  const wDequant = dequantized();
  const ref = reference(wDequant, x);
  for (let n = 0; n < N; n++) {
    // A is quantized per block of 32 with scale max|x_blk|/127, so each x[k] moves by at most
    // max|x_blk|/254 (plus a little if the scale itself is rounded, e.g. to f16: 1% margin).
    let bound = 0;
    for (let b = 0; b < K / BLOCK; b++) {
      let maxX = 0;
      let sumW = 0;
      for (let k = b * BLOCK; k < (b + 1) * BLOCK; k++) {
        maxX = Math.max(maxX, Math.abs(x[k]!));
        sumW += Math.abs(wDequant[n * K + k]!);
      }
      bound += (sumW * maxX) / 254;
    }
    const tol = bound * 1.01 + 1e-5 * ref.absSum[n]!;
    assert.ok(Math.abs(y[n]! - ref.y[n]!) <= tol, `row ${n}: ort ${y[n]} vs ref ${ref.y[n]} (tol ${tol})`);
  }
});
