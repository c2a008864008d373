// The native thread pool behind matmul(threads > 1): every thread count gives the threads=1 result bit for
// bit, across shapes (row counts that do not split evenly), types and token counts; after parkThreads()
// and after the helpers have gone to sleep; and while two worker_threads and the main thread call at once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { GGMLType } from '../src/model/ggml-types.js';
import { quantize } from '../src/model/quant/index.js';
import { matmul, parkThreads } from '../src/native/index.js';
import { mulberry32 } from '../src/engine/prng.js';

interface Case { type: GGMLType; rows: number; cols: number; nTokens: number; w: Uint8Array; x: Float32Array; want: Float32Array }

function shared<T extends Uint8Array | Float32Array>(a: T): T {
  const copy = new (a.constructor as new (b: SharedArrayBuffer) => T)(new SharedArrayBuffer(a.byteLength));
  copy.set(a as never);
  return copy;
}

function makeCases(): Case[] {
  const rand = mulberry32(20251123);
  const normals = (n: number, scale: number) => Float32Array.from({ length: n }, () => scale * (rand() + rand() + rand() - 1.5));
  const shapes: Array<[GGMLType, number, number, number]> = [
    [GGMLType.Q4_0, 1, 64, 1], [GGMLType.Q4_0, 17, 64, 1], [GGMLType.Q4_0, 100, 256, 3],
    [GGMLType.Q4_0, 2048, 512, 1], [GGMLType.Q8_0, 333, 128, 2], [GGMLType.Q4_K, 129, 512, 1],
    [GGMLType.Q6_K, 64, 256, 5], [GGMLType.F16, 77, 96, 2], [GGMLType.F32, 250, 40, 1],
  ];
  return shapes.map(([type, rows, cols, nTokens]) => {
    const w = shared(quantize(type, normals(rows * cols, 0.2)));
    const x = shared(normals(cols * nTokens, 1));
    const want = new Float32Array(rows * nTokens);
    matmul(type, w, rows, cols, x, nTokens, want, 1);
    return { type, rows, cols, nTokens, w, x, want };
  });
}

function check(c: Case, threads: number, what: string): void {
  const out = new Float32Array(c.rows * c.nTokens).fill(Number.NaN);
  matmul(c.type, c.w, c.rows, c.cols, c.x, c.nTokens, out, threads);
  assert.deepEqual(out, c.want, `${what}: type ${c.type} ${c.rows}x${c.cols} x${c.nTokens} threads ${threads}`);
}

test('every thread count gives the threads=1 result bit for bit, many calls back to back', () => {
  const cases = makeCases();
  for (let round = 0; round < 20; round++) {
    for (const c of cases) for (let threads = 1; threads <= 4; threads++) check(c, threads, `round ${round}`);
  }
});

test('results stay exact after parkThreads() and after the helpers have gone to sleep', async () => {
  const cases = makeCases();
  for (let round = 0; round < 5; round++) {
    parkThreads();
    for (const c of cases) check(c, 2, 'right after park');
    await new Promise((resolve) => setTimeout(resolve, 5));  // longer than the helpers spin
    for (const c of cases) check(c, 3, 'after sleeping');
  }
});

// Worker body (CommonJS eval): computes every case `rounds` times with threads 1..4, reports mismatches.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
import(workerData.nativeUrl).then(({ matmul }) => {
  parentPort.postMessage('ready');
  let mismatches = 0, calls = 0;
  for (let round = 0; round < workerData.rounds; round++) {
    for (const c of workerData.cases) {
      const threads = 1 + ((round + calls) % 4);
      const out = new Float32Array(c.rows * c.nTokens);
      matmul(c.type, c.w, c.rows, c.cols, c.x, c.nTokens, out, threads);
      calls++;
      for (let i = 0; i < out.length; i++) if (!Object.is(out[i], c.want[i])) { mismatches++; break; }
    }
  }
  parentPort.postMessage({ mismatches, calls });
});
`;

test('two worker_threads and the main thread calling at once all get exact results', async () => {
  const cases = makeCases();
  const nativeUrl = new URL('../src/native/index.js', import.meta.url).href;
  const rounds = 60;
  const workers = [0, 1].map(() => new Worker(WORKER, { eval: true, workerData: { nativeUrl, cases, rounds } }));
  try {
    const results = workers.map((w) => new Promise<{ mismatches: number; calls: number }>((resolve, reject) => {
      w.on('message', (m) => { if (m !== 'ready') resolve(m as { mismatches: number; calls: number }); });
      w.on('error', reject);
    }));
    await Promise.all(workers.map((w) => new Promise((resolve) => w.once('message', resolve))));  // both started
    for (let round = 0; round < rounds; round++) {
      for (const c of cases) check(c, 1 + (round % 4), `main thread, round ${round}`);
    }
    for (const r of await Promise.all(results)) {
      assert.equal(r.calls, rounds * cases.length);
      assert.equal(r.mismatches, 0);
    }
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
});
