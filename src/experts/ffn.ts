// One expert's feed-forward block on raw weight bytes: down · (silu(gate · x) * (up · x)), as the
// engine's resident path computes it (each product split over threads). The offload path's batches run
// in native code (expertBatch, native/src/expert-batch.cc) with the same kernels in the same order, so an
// expert gives the same bits either way (test/experts-pool.test.ts, test/offload.test.ts check it).
import { matmul, swiglu } from '../native/index.js';
import type { GGMLType } from '../model/ggml-types.js';

/** A matrix as stored in the file: `rows` rows of `cols` values of `type`, rows contiguous in `data`. */
export interface MatrixBytes {
  readonly type: GGMLType;
  readonly rows: number;
  readonly cols: number;
  readonly data: Uint8Array;
}

/** silu in f64: the plain reference for the native swiglu that expertFfnInto uses. */
export function silu(z: number): number {
  return z / (1 + Math.exp(-z));
}

/** down · (silu(gate · x) * (up · x)) for nTokens rows of x (gate.cols values each). Returns nTokens rows of down.rows. */
export function expertFfnBytes(gate: MatrixBytes, up: MatrixBytes, down: MatrixBytes, x: Float32Array, nTokens: number, threads: number): Float32Array {
  const y = new Float32Array(nTokens * down.rows);
  expertFfnInto(gate, up, down, x, nTokens, threads, y, new Float32Array(nTokens * gate.rows), new Float32Array(nTokens * up.rows));
  return y;
}

/**
 * The same computation writing into caller-owned buffers (the pool's workers reuse them: no garbage per
 * expert): y gets nTokens * down.rows values; g and u are scratch of at least nTokens * gate.rows values
 * (the native matmul reads and writes only the leading values it needs).
 */
export function expertFfnInto(gate: MatrixBytes, up: MatrixBytes, down: MatrixBytes, x: Float32Array, nTokens: number, threads: number,
  y: Float32Array, g: Float32Array, u: Float32Array): void {
  const n = nTokens * gate.rows;
  matmul(gate.type, gate.data, gate.rows, gate.cols, x, nTokens, g, threads);
  matmul(up.type, up.data, up.rows, up.cols, x, nTokens, u, threads);
  swiglu(g, u, n); // g = silu(g) * u
  matmul(down.type, down.data, down.rows, down.cols, g, nTokens, y, threads);
}
