// The KV cache's storage types: f16 rounding of written values against hand-computed halves, f32 kept
// exactly, doubling growth that keeps what was written, half the bytes for f16, the type check; and a
// whole model with an f16 KV cache against the same model with an f32 one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';
import { KVCache, checkKVType } from '../src/engine/kv-cache.js';
import { loadModel } from '../src/engine/model.js';
import { UsageError } from '../src/model/errors.js';

const FIXTURES = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'fixtures');

// [f32 value, the IEEE half bits it must round to], worked out by hand:
// a half has 10 fraction bits; x = 2^e * (1 + f/1024) for normals, f * 2^-24 for subnormals.
const HAND_ROUNDED: [number, number][] = [
  [0, 0x0000],
  [-0, 0x8000],
  [1, 0x3c00],
  [-2, 0xc000],
  [Math.fround(1 / 3), 0x3555], // 2^-2 * (1 + 341.33/1024): f = 341 (0x155), exponent 13 -> 0x3400
  [Math.fround(0.1), 0x2e66],  // 2^-4 * (1 + 614.4/1024): f = 614 (0x266), exponent 11 -> 0x2c00
  [65504, 0x7bff],            // the largest finite half
  [65519, 0x7bff],            // below the midpoint to 65536: stays finite
  [65520, 0x7c00],            // the midpoint between 65504 (odd fraction) and 2^16: ties to even = inf
  [-65520, 0xfc00],
  [1e6, 0x7c00],
  [Infinity, 0x7c00],
  [-Infinity, 0xfc00],
  [1 + 2 ** -11, 0x3c00],     // tie between 0x3c00 and 0x3c01: to even (down)
  [1 + 3 * 2 ** -11, 0x3c02], // tie between 0x3c01 and 0x3c02: to even (up)
  [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just above the tie: up
  [2 ** -14, 0x0400],         // the smallest normal
  [2 ** -14 - 2 ** -24, 0x03ff], // the largest subnormal
  [2 ** -24, 0x0001],         // the smallest subnormal
  [-(2 ** -24), 0x8001],
  [2 ** -25, 0x0000],         // tie between 0 and 2^-24: to even (0)
  [3 * 2 ** -25, 0x0002],     // 1.5 * 2^-24, tie between 1 and 2 units: to even (2)
  [2 ** -25 + 2 ** -30, 0x0001], // just above half a unit: up
  [2 ** -26, 0x0000],
  [5 * 2 ** -24, 0x0005],     // subnormal, exact
];

/** Value of half bits, computed from the definition (independent of the project's table). */
function halfValue(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0x1f) return f ? NaN : sign * Infinity;
  return e === 0 ? sign * f * 2 ** -24 : sign * 2 ** (e - 15) * (1 + f / 1024);
}

test('the f16 KV cache rounds written K and V to the nearest half, ties to even (hand-computed halves)', () => {
  const n = HAND_ROUNDED.length;
  const cache = new KVCache(2, n, 8, 'f16');
  assert.equal(cache.type, 'f16');
  const k = new Float32Array(HAND_ROUNDED.map(([x]) => x));
  const v = new Float32Array(HAND_ROUNDED.map(([x]) => -x));
  cache.write(1, 2, 1, k, v);
  const keys = cache.keys(1), values = cache.values(1);
  assert.ok(keys instanceof Uint16Array && values instanceof Uint16Array);
  HAND_ROUNDED.forEach(([x, bits], i) => {
    assert.equal(Math.fround(x), x, `${x} is an f32 value`);
    assert.equal(keys[2 * n + i], bits, `K ${x} -> 0x${bits.toString(16)}, got 0x${keys[2 * n + i]!.toString(16)}`);
    assert.equal(values[2 * n + i], bits ^ 0x8000, `V ${-x} -> sign-flipped 0x${bits.toString(16)}`);
    // nearest: neither neighbouring magnitude is closer to |x| than the stored one
    const m = bits & 0x7fff;
    if (Number.isFinite(x) && Math.abs(x) <= 65504) {
      for (const other of [m - 1, m + 1].filter((o) => o >= 0)) {
        assert.ok(Math.abs(halfValue(other) - Math.abs(x)) >= Math.abs(halfValue(m) - Math.abs(x)), `${x}: 0x${other.toString(16)} is closer`);
      }
    }
  });
  // untouched positions and the other layer stay zero
  assert.ok(keys.subarray(0, 2 * n).every((b) => b === 0));
  assert.ok(cache.keys(0).every((b) => b === 0));
});

test('the f32 KV cache stores K and V exactly', () => {
  const cache = new KVCache(1, 4, 100, 'f32');
  const k = new Float32Array([1 / 3, 65520, 2 ** -30, -1e30]);
  const v = new Float32Array([0.1, -0, 3, 7]);
  cache.write(0, 0, 1, k, v);
  assert.ok(cache.keys(0) instanceof Float32Array);
  assert.deepEqual(cache.keys(0).subarray(0, 4), k);
  assert.deepEqual(cache.values(0).subarray(0, 4), v);
});

test('both caches grow by doubling and keep what was written; f16 holds half the bytes of f32', () => {
  const rowSize = 6, layers = 3;
  const caches = { f16: new KVCache(layers, rowSize, 40, 'f16'), f32: new KVCache(layers, rowSize, 40, 'f32') };
  for (const [type, cache] of Object.entries(caches)) {
    const bytesPer = type === 'f16' ? 2 : 4;
    assert.equal(cache.bytes(), 0);
    // small integers are exact in f16 too, so both caches must return them unchanged
    const row = (p: number, sign: number) => new Float32Array(rowSize).map((_, i) => sign * (p * 10 + i));
    for (let p = 0; p < 35; p++) {
      for (let l = 0; l < layers; l++) cache.write(l, p, 1, row(p + l, 1), row(p + l, -1));
      const capacity = p < 16 ? 16 : p < 32 ? 32 : 40; // 16, doubled, then capped at the maximum
      assert.equal(cache.bytes(), layers * 2 * capacity * rowSize * bytesPer, `${type} after position ${p}`);
    }
    for (let l = 0; l < layers; l++) {
      for (let p = 0; p < 35; p++) {
        assert.deepEqual(Array.from(cache.keys(l).subarray(p * rowSize, (p + 1) * rowSize), (x) => (type === 'f16' ? halfValue(x) : x)),
          Array.from(row(p + l, 1)), `${type} layer ${l} K at ${p}`);
        assert.deepEqual(Array.from(cache.values(l).subarray(p * rowSize, (p + 1) * rowSize), (x) => (type === 'f16' ? halfValue(x) : x)),
          Array.from(row(p + l, -1)), `${type} layer ${l} V at ${p}`);
      }
    }
    assert.throws(() => cache.write(0, 40, 1, row(0, 1), row(0, 1)), RangeError);
  }
  assert.equal(caches.f16.bytes() * 2, caches.f32.bytes());
  // a batch write of several positions at once
  const batch = new KVCache(1, 2, 8, 'f16');
  batch.write(0, 1, 3, new Float32Array([1, 2, 3, 4, 5, 6]), new Float32Array([-1, -2, -3, -4, -5, -6]));
  assert.deepEqual(Array.from(batch.keys(0).subarray(0, 8), halfValue), [0, 0, 1, 2, 3, 4, 5, 6]);
  assert.deepEqual(Array.from(batch.values(0).subarray(2, 8), halfValue), [-1, -2, -3, -4, -5, -6]);
});

test('KV cache types other than f16 and f32 are refused with a UsageError', () => {
  assert.equal(checkKVType('f16'), 'f16');
  assert.equal(checkKVType('f32'), 'f32');
  for (const bad of ['q8_0', 'F16', '', undefined]) {
    assert.throws(() => checkKVType(bad), (e: Error) => e instanceof UsageError && /KV cache type/.test(e.message));
  }
  assert.throws(() => new KVCache(1, 1, 1, 'bf16' as 'f16'), UsageError);
});

// Whole model: f16 K/V differ from f32 by at most 2^-11 relative per element (the rounding), so the
// attention outputs (weighted means of V rows, with softmax weights from perturbed scores) move by about
// that relative amount, and the layers (norms, residual adds, f32 fixtures so no 8-bit activation
// rounding that could flip) carry it to the logits at a similar relative size (2e-4..6e-4 of max|logit|
// measured on these fixtures). The bound, 4 * 2^-11 * max|logit| (~2e-3), leaves 4x margin; a wrong
// decode of the f16 bits (e.g. read as other numbers, or a mixed-up row) moves logits by O(max|logit|).
// The logits must also differ somewhere (the f16 cache is really in use) and agree on the top token
// wherever the f32 run's top two are further apart than twice the bound.
const F16_LOGIT_REL = 4 * 2 ** -11;
const PROMPT = [1, 300, 17, 42, 99, 260, 261, 270, 3, 400, 128, 77];

for (const name of ['llama-f32', 'qwen3moe-f32']) {
  const path = join(FIXTURES, `${name}.gguf`);
  test(`${name}: logits with an f16 KV cache stay within ${F16_LOGIT_REL.toExponential(1)} * max|logit| of f32 KV (prompt, then decode)`,
    { skip: !existsSync(path) && 'fixture not generated' }, async () => {
      const run = async (kvType: 'f16' | 'f32') => {
        const model = await loadModel(path, { threads: 1, kvType });
        try {
          const seq = model.newSequence();
          const prompt = await seq.eval(PROMPT.slice(0, 8));
          const decode = [];
          for (const t of PROMPT.slice(8)) decode.push(await seq.eval([t]));
          return { rows: [...splitRows(prompt, model.vocabSize), ...decode], vocab: model.vocabSize };
        } finally {
          model.close();
        }
      };
      const f32 = await run('f32'), f16 = await run('f16');
      assert.equal(f16.rows.length, PROMPT.length);
      const maxAbs = Math.max(...f32.rows.map((r) => Math.max(...Array.from(r, Math.abs))));
      const bound = F16_LOGIT_REL * maxAbs;
      let anyDiff = false;
      f32.rows.forEach((want, p) => {
        const got = f16.rows[p]!;
        let worst = 0;
        for (let i = 0; i < f32.vocab; i++) {
          const d = Math.abs(got[i]! - want[i]!);
          if (!(d <= worst)) worst = d;
          if (d > 0) anyDiff = true;
        }
        assert.ok(worst <= bound, `position ${p}: |f16 - f32| ${worst.toExponential(2)} > ${bound.toExponential(2)}`);
        const top = argmax(want);
        const second = Math.max(...Array.from(want).filter((_, i) => i !== top));
        if (want[top]! - second > 2 * bound) assert.equal(argmax(got), top, `position ${p}: top token`);
      });
      assert.ok(anyDiff, 'f16 and f32 KV gave identical logits: the f16 cache is not in use');
    });
}

function splitRows(logits: Float32Array, vocab: number): Float32Array[] {
  const rows = [];
  for (let o = 0; o < logits.length; o += vocab) rows.push(logits.subarray(o, o + vocab));
  return rows;
}

function argmax(v: Float32Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  return best;
}
