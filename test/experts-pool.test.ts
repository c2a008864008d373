// The expert worker pool: a worker's FFN equals the main thread's bit for bit (and a plain f64
// reference within tolerance), experts run in parallel, crashes are retried once and then reported.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { ExpertPool, type MatrixInSlab } from '../src/experts/pool.js';
import { computeBatch } from '../src/experts/worker.js';
import { threadLending } from '../src/native/index.js';
import { expertFfnBytes, type MatrixBytes } from '../src/experts/ffn.js';
import { GGMLType } from '../src/model/ggml-types.js';
import { quantize, dequantizeRows } from '../src/model/quant/index.js';
import { MoeOffloadError } from '../src/model/errors.js';
import { Weight } from '../src/engine/weights.js';
import { expertFfn } from '../src/engine/moe-layer.js';
import { mulberry32 } from '../src/engine/prng.js';

const N_EMBD = 64;
const N_FF = 96;

/** Uniform in [-0.5, 0.5), seeded so failures reproduce. */
function rng(seed: number): () => number {
  const u = mulberry32(seed);
  return () => u() - 0.5;
}

/** One expert's three matrices (quantized) laid into a SharedArrayBuffer at 64-byte aligned offsets. */
function makeExpert(type: GGMLType, seed: number) {
  const r = rng(seed);
  const mk = (rows: number, cols: number) => quantize(type, Float32Array.from({ length: rows * cols }, () => r() * 0.5));
  const parts = { gate: { bytes: mk(N_FF, N_EMBD), rows: N_FF, cols: N_EMBD }, up: { bytes: mk(N_FF, N_EMBD), rows: N_FF, cols: N_EMBD }, down: { bytes: mk(N_EMBD, N_FF), rows: N_EMBD, cols: N_FF } };
  let at = 128; // not at the start of the slab, like a real slot
  const place: Record<string, MatrixInSlab> = {};
  for (const [k, p] of Object.entries(parts)) {
    place[k] = { offset: at, byteLength: p.bytes.byteLength, type, rows: p.rows, cols: p.cols };
    at += Math.ceil(p.bytes.byteLength / 64) * 64;
  }
  const slab = new SharedArrayBuffer(at);
  for (const [k, p] of Object.entries(parts)) new Uint8Array(slab, place[k]!.offset).set(p.bytes);
  const bytesOf = (m: MatrixInSlab): MatrixBytes => ({ type, rows: m.rows, cols: m.cols, data: new Uint8Array(slab, m.offset, m.byteLength) });
  return { slab, gate: place.gate!, up: place.up!, down: place.down!, bytesOf };
}

function sharedX(nTokens: number, seed: number): Float32Array {
  const r = rng(seed);
  const x = new Float32Array(new SharedArrayBuffer(nTokens * N_EMBD * 4));
  for (let i = 0; i < x.length; i++) x[i] = r() * 2;
  return x;
}

const pool = new ExpertPool({ threads: 2 });
after(() => pool.close());

for (const type of [GGMLType.Q4_0, GGMLType.Q8_0, GGMLType.F32]) {
  test(`worker FFN is bit-identical to the main thread's (${GGMLType[type]}), with and without row selection`, async () => {
    const e = makeExpert(type, 1000 + type);
    const x = sharedX(7, 5);
    const main = expertFfnBytes(e.bytesOf(e.gate), e.bytesOf(e.up), e.bytesOf(e.down), x, 7, 1);
    // The engine's resident-path function on Weight objects gives the same bits.
    const w = (m: MatrixInSlab) => new Weight(type, m.rows, m.cols, new Uint8Array(e.slab, m.offset, m.byteLength));
    assert.deepEqual(expertFfn(w(e.gate), w(e.up), w(e.down), x, 7, 1), main);
    const { y, computeMs } = await pool.run({ slab: e.slab, gate: e.gate, up: e.up, down: e.down, x, nTokens: 7 });
    assert.deepEqual(y, main);
    assert.ok(computeMs >= 0);
    // rows 5, 0, 3 of x: must equal the main thread's result on those rows gathered
    const rows = Int32Array.from([5, 0, 3]);
    const picked = await pool.run({ slab: e.slab, gate: e.gate, up: e.up, down: e.down, x, rows, nTokens: 3 });
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(picked.y.subarray(i * N_EMBD, (i + 1) * N_EMBD), main.subarray(rows[i]! * N_EMBD, (rows[i]! + 1) * N_EMBD));
    }
  });
}

test('worker FFN agrees with a plain f64 reference on dequantized weights', async () => {
  const e = makeExpert(GGMLType.Q8_0, 77);
  const x = sharedX(2, 9);
  const { y } = await pool.run({ slab: e.slab, gate: e.gate, up: e.up, down: e.down, x, nTokens: 2 });
  const deq = (m: MatrixInSlab) => dequantizeRows(m.type, new Uint8Array(e.slab, m.offset, m.byteLength), m.rows, m.cols);
  const [G, U, D] = [deq(e.gate), deq(e.up), deq(e.down)];
  for (let t = 0; t < 2; t++) {
    const h = new Float64Array(N_FF);
    for (let r = 0; r < N_FF; r++) {
      let g = 0, u = 0;
      for (let c = 0; c < N_EMBD; c++) { g += G[r * N_EMBD + c]! * x[t * N_EMBD + c]!; u += U[r * N_EMBD + c]! * x[t * N_EMBD + c]!; }
      h[r] = (g / (1 + Math.exp(-g))) * u;
    }
    let maxAbs = 0, maxErr = 0;
    for (let r = 0; r < N_EMBD; r++) {
      let s = 0;
      for (let c = 0; c < N_FF; c++) s += D[r * N_FF + c]! * h[c]!;
      maxAbs = Math.max(maxAbs, Math.abs(s));
      maxErr = Math.max(maxErr, Math.abs(s - y[t * N_EMBD + r]!));
    }
    // The kernels round x and the hidden h to Q8_0 (8 bits per 32-value block, each value off by up to
    // 1/254 of its block's max), two roundings compounded over 64-96 terms: allow 3% of the output scale.
    // (Swapping gate and up, or dropping silu, is off by far more.)
    assert.ok(maxErr <= 3e-2 * maxAbs, `max error ${maxErr} vs scale ${maxAbs}`);
  }
});

test('many experts in parallel: every result matches its own main-thread result', async () => {
  const experts = Array.from({ length: 8 }, (_, i) => makeExpert(GGMLType.Q4_0, 200 + i));
  const x = sharedX(4, 11);
  const results = await Promise.all(experts.map((e, i) => pool.run({ slab: e.slab, gate: e.gate, up: e.up, down: e.down, x, nTokens: 4 }, `expert ${i}`)));
  results.forEach((r, i) => {
    const e = experts[i]!;
    assert.deepEqual(r.y, expertFfnBytes(e.bytesOf(e.gate), e.bytesOf(e.up), e.bytesOf(e.down), x, 4, 1));
  });
});

for (const kind of ['exit', 'throw'] as const) {
  test(`a worker that fails mid-task (${kind}) is retried once and the result is right`, async () => {
    const e = makeExpert(GGMLType.Q4_0, 300);
    const x = sharedX(3, 12);
    const before = pool.retries;
    pool.injectFaults(1, kind);
    const { y } = await pool.run({ slab: e.slab, gate: e.gate, up: e.up, down: e.down, x, nTokens: 3 });
    assert.equal(pool.retries, before + 1);
    assert.deepEqual(y, expertFfnBytes(e.bytesOf(e.gate), e.bytesOf(e.up), e.bytesOf(e.down), x, 3, 1));
  });

  test(`a task that fails twice (${kind}) is a clear MoeOffloadError, and the pool still works after`, async () => {
    const e = makeExpert(GGMLType.Q4_0, 301);
    const x = sharedX(1, 13);
    pool.injectFaults(2, kind);
    await assert.rejects(pool.run({ slab: e.slab, gate: e.gate, up: e.up, down: e.down, x, nTokens: 1 }, 'layer 2 expert 5'), (err: Error) => {
      assert.ok(err instanceof MoeOffloadError);
      assert.match(err.message, /failed twice computing layer 2 expert 5/);
      assert.match(err.message, kind === 'exit' ? /exited/ : /injected worker fault/);
      return true;
    });
    const { y } = await pool.run({ slab: e.slab, gate: e.gate, up: e.up, down: e.down, x, nTokens: 1 });
    assert.deepEqual(y, expertFfnBytes(e.bytesOf(e.gate), e.bytesOf(e.up), e.bytesOf(e.down), x, 1, 1));
  });
}

/** A batch of `n` Q4_0 experts over 3 tokens (each expert's rows in another order), and each expert's main-thread result. */
function expertsBatch(n: number, seed: number) {
  const experts = Array.from({ length: n }, (_, i) => makeExpert(GGMLType.Q4_0, seed + i));
  const x = sharedX(3, seed);
  const order = (i: number) => (i % 2 === 0 ? [0, 1, 2] : [2, 0, 1]);
  const task = {
    slabs: experts.map((e) => e.slab),
    experts: experts.map((e, i) => ({ slab: i, gate: e.gate, up: e.up, down: e.down, rowStart: 3 * i, nTokens: 3 })),
    x, rows: Int32Array.from(experts.flatMap((_, i) => order(i))),
    out: new Float32Array(new SharedArrayBuffer(3 * n * N_EMBD * 4)),
  };
  const want = experts.map((e, i) => {
    const y = expertFfnBytes(e.bytesOf(e.gate), e.bytesOf(e.up), e.bytesOf(e.down), x, 3, 1);
    return Float32Array.from(order(i).flatMap((r) => [...y.subarray(r * N_EMBD, (r + 1) * N_EMBD)]));
  });
  const check = () => want.forEach((w, i) => assert.deepEqual(task.out.subarray(3 * i * N_EMBD, 3 * (i + 1) * N_EMBD), w, `expert ${i}`));
  return { task, check };
}

/** Waits until the pool's serving workers are lent (their loop has entered the native pool). */
async function lentReady(p: ExpertPool, onFailure: (err: unknown) => void = () => {}): Promise<void> {
  p.lendWorkers(onFailure);
  for (let i = 0; i < 200 && threadLending.lentNow() < p.servingWorkers; i++) await new Promise((r) => setTimeout(r, 5));
}

test('a batch computed on this thread with the pool\'s lent worker gives the same bits as one thread, and the worker took part', async () => {
  const one = expertsBatch(6, 400);
  computeBatch(one.task, 1);
  one.check();
  await lentReady(pool);
  assert.equal(threadLending.lentNow(), 1, 'the serving worker is lent to the native pool');
  // Many batches: the lent worker, spinning for jobs, takes experts of some of them.
  const before = threadLending.helperChunks();
  for (let k = 0; k < 200 && threadLending.helperChunks() === before; k++) {
    const b = expertsBatch(6, 500 + 10 * k);
    computeBatch(b.task, 2);
    b.check();
  }
  assert.ok(threadLending.helperChunks() > before, 'the lent worker computed some experts');
  pool.parkServingWhenIdle(0);
  for (let i = 0; i < 200 && threadLending.lentNow() > 0; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(threadLending.lentNow(), 0, 'released');
});

for (const kind of ['exit', 'throw'] as const) {
  test(`a serving worker that fails (${kind}) when lent is replaced and lent again once, then a clear error; batches stay right`, async () => {
    const p = new ExpertPool({ threads: 2 });
    try {
      const failures: unknown[] = [];
      p.injectFaults(1, kind);
      await lentReady(p, (err) => failures.push(err));
      for (let i = 0; i < 200 && p.retries < 1; i++) await new Promise((r) => setTimeout(r, 5));
      assert.equal(p.retries, 1);
      for (let i = 0; i < 200 && threadLending.lentNow() < 1; i++) await new Promise((r) => setTimeout(r, 5));
      assert.equal(threadLending.lentNow(), 1, 'the replacement is lent');
      const b = expertsBatch(4, 600);
      computeBatch(b.task, 2);
      b.check();
      assert.equal(failures.length, 0);
      p.parkServingWhenIdle(0);
      for (let i = 0; i < 200 && threadLending.lentNow() > 0; i++) await new Promise((r) => setTimeout(r, 5));

      p.injectFaults(2, kind);
      p.lendWorkers((err) => failures.push(err));
      for (let i = 0; i < 400 && failures.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
      assert.equal(failures.length, 1);
      assert.ok(failures[0] instanceof MoeOffloadError);
      assert.match((failures[0] as Error).message, /failed twice computing the layers' experts/);
      assert.match((failures[0] as Error).message, kind === 'exit' ? /exited/ : /injected worker fault/);
      // Nothing is lost meanwhile: with no helper, this thread computes every expert.
      const c = expertsBatch(3, 700);
      computeBatch(c.task, 2);
      c.check();
    } finally {
      await p.close();
    }
  });
}

test('releasing one pool\'s lent workers leaves another pool\'s lent', async () => {
  const until = async (ok: () => boolean) => { for (let i = 0; i < 400 && !ok(); i++) await new Promise((r) => setTimeout(r, 5)); };
  const a = new ExpertPool({ threads: 2 });
  const b = new ExpertPool({ threads: 2 });
  try {
    const base = threadLending.lentNow();
    a.lendWorkers(() => {});
    b.lendWorkers(() => {});
    await until(() => threadLending.lentNow() === base + 2);
    assert.equal(threadLending.lentNow(), base + 2);
    a.parkServingWhenIdle(0);
    await until(() => threadLending.lentNow() === base + 1);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(threadLending.lentNow(), base + 1, 'b\'s worker is still lent');
    assert.ok(b.lent && !a.lent);
  } finally {
    await a.close();
    await b.close();
  }
  assert.equal(threadLending.lentNow(), 0);
});

test('lend and release cycles of two pools interleaved with batches on 1-4 threads: every batch right, nothing hangs', { timeout: 30_000 }, async () => {
  const a = new ExpertPool({ threads: 2 });
  const b = new ExpertPool({ threads: 3 });
  const failures: unknown[] = [];
  try {
    const until = performance.now() + 1500;
    for (let cycle = 0; performance.now() < until; cycle++) {
      const p = cycle % 2 === 0 ? a : b;
      p.lendWorkers((err) => failures.push(err));
      for (let k = 0; k < 6; k++) {
        const batch = expertsBatch(4, 900 + k);
        computeBatch(batch.task, 1 + ((cycle + k) % 4));
        batch.check();
        if (k === cycle % 6) await new Promise((r) => setImmediate(r)); // lets lends and releases land mid-cycle
      }
      if (cycle % 3 === 0) p.parkServingWhenIdle(0);
      if (cycle % 5 === 0) await new Promise((r) => setTimeout(r, 1));
    }
  } finally {
    await a.close();
    await b.close();
  }
  assert.equal(failures.length, 0);
  assert.equal(threadLending.lentNow(), 0);
});

test('a closed pool rejects new tasks', async () => {
  const p = new ExpertPool({ threads: 1 });
  await p.close();
  const e = makeExpert(GGMLType.Q4_0, 400);
  await assert.rejects(p.run({ slab: e.slab, gate: e.gate, up: e.up, down: e.down, x: sharedX(1, 1), nTokens: 1 }), /closed/);
});
