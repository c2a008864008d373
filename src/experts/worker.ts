// A piscina worker: computes experts' FFNs for the tokens routed to them, reading the weights straight
// from the RAM cache's SharedArrayBuffer slabs (no copy) with the native kernels, one thread each (the
// pool's workers are the parallelism). Two task shapes: one expert returning its output (ExpertTask),
// or several experts of one layer writing into a shared output buffer (ExpertBatchTask: one message per
// worker per layer instead of one per expert, and no per-expert garbage).
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { move, transferableSymbol, valueSymbol } from 'piscina';
import { expertFfnInto, type MatrixBytes } from './ffn.js';
import type { GGMLType } from '../model/ggml-types.js';

/** Where one matrix sits in the slab. */
export interface MatrixInSlab {
  offset: number;
  byteLength: number;
  type: GGMLType;
  rows: number;
  cols: number;
}

export interface ExpertTask {
  slab: SharedArrayBuffer;
  gate: MatrixInSlab;
  up: MatrixInSlab;
  down: MatrixInSlab;
  /** Hidden states, rows of gate.cols values, usually on a SharedArrayBuffer shared by all tasks of a layer. */
  x: Float32Array;
  /** Which rows of x are this expert's tokens, in order; absent: rows 0..nTokens-1. */
  rows?: Int32Array;
  nTokens: number;
  /** Tests only: make this attempt fail by killing the worker thread or by throwing. */
  fault?: 'exit' | 'throw';
}

export interface ExpertResult {
  /** nTokens rows of down.rows values, in the order of task.rows. */
  y: Float32Array;
  /** Time spent in this worker on the task, ms. */
  computeMs: number;
}

/** One expert of a batch: its matrices in task.slabs[slab], its tokens at rows [rowStart, rowStart + nTokens) of the task. */
export interface BatchExpert {
  slab: number;
  gate: MatrixInSlab;
  up: MatrixInSlab;
  down: MatrixInSlab;
  rowStart: number;
  nTokens: number;
}

export interface ExpertBatchTask {
  /** The slabs the experts' weights sit in (usually one or a few). */
  slabs: SharedArrayBuffer[];
  experts: BatchExpert[];
  /** Hidden states, rows of nEmbd values (shared memory). */
  x: Float32Array;
  /** rows[j]: the row of x that output row j is computed from. */
  rows: Int32Array;
  /** Output rows of down.rows values (shared memory); each expert writes its rows [rowStart, rowStart + nTokens). */
  out: Float32Array;
  /**
   * Set when the experts are a queue shared by several threads (the dispatcher's thread and idle
   * workers, all given this same task): see SharedClaims. Absent: this thread computes every expert.
   */
  claims?: Int32Array;
  /** Compute just these experts (a retry of what a failed worker had claimed), marking them in claims if set. */
  only?: number[];
  /** Tests only, as in ExpertTask. */
  fault?: 'exit' | 'throw';
}

export interface BatchResult {
  /** Time spent in this worker on the task, ms. */
  computeMs: number;
}

// Scratch reused from task to task: gathered rows of x, and the gate/up products.
let scratchX: Float32Array = new Float32Array(0);
let scratchG: Float32Array = new Float32Array(0);
let scratchU: Float32Array = new Float32Array(0);
function scratch(buf: Float32Array, n: number): Float32Array {
  return buf.length >= n ? buf : new Float32Array(Math.max(n, 2 * buf.length));
}

/**
 * The claim counters of a shared batch of n experts (an Int32Array on a SharedArrayBuffer): [0] the next
 * expert to claim, [1] how many are computed, [2 + i] 1 once expert i is computed. Each thread claims
 * with Atomics.add, so a worker that wakes late simply takes fewer experts, and the dispatcher's thread
 * learns that all are done from the counter, without waiting for the workers' reply messages.
 */
export const SharedClaims = {
  create(n: number): Int32Array { return new Int32Array(new SharedArrayBuffer((2 + n) * 4)); },
  done(claims: Int32Array): number { return Atomics.load(claims, 1); },
  isDone(claims: Int32Array, i: number): boolean { return Atomics.load(claims, 2 + i) === 1; },
  /** Blocks this thread until all n are computed or `ms` pass; true when all are. */
  waitAll(claims: Int32Array, n: number, ms: number): boolean {
    const until = performance.now() + ms;
    for (let done = Atomics.load(claims, 1); done < n; done = Atomics.load(claims, 1)) {
      const left = until - performance.now();
      if (left <= 0) return false;
      Atomics.wait(claims, 1, done, left);
    }
    return true;
  },
};

/**
 * Computes a batch here, on the calling thread (a worker, or the dispatcher's own thread): every expert,
 * or with task.claims the experts this thread claims. `only`: just these experts (the dispatcher
 * finishing what a failed worker had claimed).
 */
export function computeBatch(task: ExpertBatchTask, only: readonly number[] | undefined = task.only): BatchResult {
  const t0 = performance.now();
  const claims = task.claims;
  const computed = (i: number): void => {
    if (!claims) return;
    Atomics.store(claims, 2 + i, 1);
    Atomics.add(claims, 1, 1);
    Atomics.notify(claims, 1);
  };
  if (only) {
    for (const i of only) {
      computeExpertOfBatch(task, i);
      computed(i);
    }
  } else if (!claims) {
    for (let i = 0; i < task.experts.length; i++) computeExpertOfBatch(task, i);
  } else {
    const n = task.experts.length;
    for (let i = Atomics.add(claims, 0, 1); i < n; i = Atomics.add(claims, 0, 1)) {
      computeExpertOfBatch(task, i);
      computed(i);
    }
  }
  return { computeMs: performance.now() - t0 };
}

/** A serving worker's mailbox: batches arrive as {id, task} on `port`; ctrl[0] counts posts, ctrl[1] = 1 asks it to stop. */
export interface ServeTask {
  serve: { ctrl: Int32Array; port: MessagePort };
}

/** Reply for each served batch, on the same port. */
export interface ServedBatch { id: number; computeMs: number }

/**
 * The serving loop (a piscina task that runs until stopped): sleeps on ctrl[0] (a futex, no spinning),
 * takes the posted batches synchronously from its port, computes its claims of each and replies. A
 * batch costs the dispatcher one postMessage and one Atomics.notify instead of a piscina task.
 */
function serve({ ctrl, port }: ServeTask['serve']): BatchResult {
  let computeMs = 0;
  for (;;) {
    const posted = Atomics.load(ctrl, 0);
    const stop = Atomics.load(ctrl, 1) === 1; // read before draining: what was posted before the stop is served
    for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
      const { id, task } = m.message as { id: number; task: ExpertBatchTask };
      if (task.fault === 'exit') process.exit(70);
      if (task.fault === 'throw') throw new Error('injected worker fault');
      const r = computeBatch(task);
      computeMs += r.computeMs;
      port.postMessage({ id, computeMs: r.computeMs } satisfies ServedBatch);
    }
    if (stop) break;
    Atomics.wait(ctrl, 0, posted); // returns at once if something was posted since `posted` was read
  }
  port.close();
  return { computeMs };
}

function computeExpertOfBatch(task: ExpertBatchTask, index: number): void {
  const { x, rows, out } = task;
  const e = task.experts[index]!;
  const slab = task.slabs[e.slab]!;
  const nEmbd = e.gate.cols;
  const n = e.nTokens;
  // The expert's tokens as contiguous rows: a view when they already are, else gathered.
  const first = rows[e.rowStart]!;
  let contiguous = true;
  for (let i = 1; i < n && contiguous; i++) contiguous = rows[e.rowStart + i] === first + i;
  let xe: Float32Array;
  if (contiguous) {
    xe = x.subarray(first * nEmbd, (first + n) * nEmbd);
  } else {
    scratchX = scratch(scratchX, n * nEmbd);
    xe = scratchX;
    for (let i = 0; i < n; i++) {
      const r = rows[e.rowStart + i]!;
      xe.set(x.subarray(r * nEmbd, (r + 1) * nEmbd), i * nEmbd);
    }
  }
  scratchG = scratch(scratchG, n * e.gate.rows);
  scratchU = scratch(scratchU, n * e.up.rows);
  const y = out.subarray(e.rowStart * e.down.rows, (e.rowStart + n) * e.down.rows);
  expertFfnInto(view(slab, e.gate), view(slab, e.up), view(slab, e.down), xe, n, 1, y, scratchG, scratchU);
}

function view(slab: SharedArrayBuffer, m: MatrixInSlab): MatrixBytes {
  return { type: m.type, rows: m.rows, cols: m.cols, data: new Uint8Array(slab, m.offset, m.byteLength) };
}

export default function computeExpert(task: ExpertTask | ExpertBatchTask | ServeTask): ExpertResult | BatchResult {
  if ('serve' in task) return serve(task.serve);
  if (task.fault === 'exit') process.exit(70); // in a worker thread this ends the thread only
  if (task.fault === 'throw') throw new Error('injected worker fault');
  if ('experts' in task) return computeBatch(task);
  // One expert is a batch of one writing into its own output buffer (the same gather and arithmetic).
  const { slab, gate, up, down, x, nTokens } = task;
  const y = new Float32Array(nTokens * down.rows);
  const rows = task.rows ?? Int32Array.from({ length: nTokens }, (_, i) => i);
  const { computeMs } = computeBatch({ slabs: [slab], experts: [{ slab: 0, gate, up, down, rowStart: 0, nTokens }], x, rows, out: y });
  const result: ExpertResult = { y, computeMs };
  // Hand y's buffer over instead of copying it (piscina's transferable wrapper).
  return move({ [transferableSymbol]: [y.buffer], [valueSymbol]: result } as never) as unknown as ExpertResult;
}
