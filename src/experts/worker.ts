// A piscina worker: computes experts' FFNs for the tokens routed to them, reading the weights straight
// from the RAM cache's SharedArrayBuffer slabs (no copy) with the native kernels. Two task shapes: one
// expert returning its output (ExpertTask), or several experts of one layer writing into a shared output
// buffer (ExpertBatchTask). A third, the serving loop (ServeTask), lends the worker's thread to the
// native thread pool, where it computes its share of each layer's experts (and of the dense products)
// without a message per layer.
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { move, transferableSymbol, valueSymbol } from 'piscina';
import { EXPERT_DESC_STRIDE, expertBatch, threadLending } from '../native/index.js';
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
  /** Tests only, as in ExpertTask. */
  fault?: 'exit' | 'throw';
}

export interface BatchResult {
  /** Time spent in this worker on the task, ms. */
  computeMs: number;
}

/**
 * Computes every expert of a batch on the calling thread (a worker, or the dispatcher's thread) and, with
 * threads > 1, on the native pool's helpers: the threads lent by the pool's serving workers
 * (lendWorkers) or the pool's own. One native call: the experts' descriptor is built here.
 */
export function computeBatch(task: ExpertBatchTask, threads = 1): BatchResult {
  const t0 = performance.now();
  const { experts } = task;
  if (experts.length === 0) return { computeMs: 0 };
  const nEmbd = experts[0]!.gate.cols;
  const desc = new Float64Array(experts.length * EXPERT_DESC_STRIDE);
  experts.forEach((e, i) => {
    const at = i * EXPERT_DESC_STRIDE;
    desc[at] = e.slab;
    desc[at + 1] = e.rowStart;
    desc[at + 2] = e.nTokens;
    [e.gate, e.up, e.down].forEach((m, j) => desc.set([m.offset, m.byteLength, m.type, m.rows, m.cols], at + 3 + 5 * j));
  });
  expertBatch(task.slabs.map((s) => new Uint8Array(s)), desc, task.x, task.rows, task.out, nEmbd, threads);
  return { computeMs: performance.now() - t0 };
}

/** A serving worker's mailbox: requests arrive as {id, lend} on `port`; ctrl[0] counts posts, ctrl[1] = 1 asks it to stop. */
export interface ServeTask {
  serve: { ctrl: Int32Array; port: MessagePort };
}

/** A request to a serving worker: lend this thread to the native pool until lend[0] (shared) is set. */
export interface LendRequest { id: number; lend: Int32Array; fault?: 'exit' | 'throw' }

/** Reply for each request, on the same port: whether a pool job came while the thread was lent. */
export interface LendReply { id: number; served: boolean }

/**
 * The serving loop (a piscina task that runs until stopped): sleeps on ctrl[0] (a futex, no spinning),
 * takes the requests synchronously from its port, and for each lends this thread to the native pool
 * (threadLending.serve: it helps with the pool's jobs, the experts' batches among them, until the pool
 * releases its lent threads), then replies.
 */
function serve({ ctrl, port }: ServeTask['serve']): BatchResult {
  for (;;) {
    const posted = Atomics.load(ctrl, 0);
    const stop = Atomics.load(ctrl, 1) === 1; // read before draining: what was posted before the stop is served
    for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
      const request = m.message as LendRequest;
      if (request.fault === 'exit') process.exit(70);
      if (request.fault === 'throw') throw new Error('injected worker fault');
      port.postMessage({ id: request.id, served: threadLending.serve(request.lend) } satisfies LendReply);
    }
    if (stop) break;
    Atomics.wait(ctrl, 0, posted); // returns at once if something was posted since `posted` was read
  }
  port.close();
  return { computeMs: 0 };
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
