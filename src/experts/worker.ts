// A piscina worker: computes one expert's FFN for the tokens routed to it, reading the weights straight
// from the RAM cache's SharedArrayBuffer slab (no copy) with the native kernels, one thread each (the
// pool's workers are the parallelism).
import { move, transferableSymbol, valueSymbol } from 'piscina';
import { expertFfnBytes, type MatrixBytes } from './ffn.js';
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

function view(slab: SharedArrayBuffer, m: MatrixInSlab): MatrixBytes {
  return { type: m.type, rows: m.rows, cols: m.cols, data: new Uint8Array(slab, m.offset, m.byteLength) };
}

export default function computeExpert(task: ExpertTask): ExpertResult {
  if (task.fault === 'exit') process.exit(70); // in a worker thread this ends the thread only
  if (task.fault === 'throw') throw new Error('injected worker fault');
  const t0 = performance.now();
  const nEmbd = task.gate.cols;
  let x = task.x;
  if (task.rows) {
    x = new Float32Array(task.nTokens * nEmbd);
    for (let i = 0; i < task.nTokens; i++) {
      const r = task.rows[i]!;
      x.set(task.x.subarray(r * nEmbd, (r + 1) * nEmbd), i * nEmbd);
    }
  }
  const y = expertFfnBytes(view(task.slab, task.gate), view(task.slab, task.up), view(task.slab, task.down), x, task.nTokens, 1);
  const result: ExpertResult = { y, computeMs: performance.now() - t0 };
  // Hand y's buffer over instead of copying it (piscina's transferable wrapper).
  return move({ [transferableSymbol]: [y.buffer], [valueSymbol]: result } as never) as unknown as ExpertResult;
}
