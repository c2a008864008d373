// A weight matrix as stored in the file (any block type) with a matmul that goes through the native
// kernels, and small helpers to read tensors into these or into plain f32 vectors.
import { matmul, matmulSameInput } from '../native/index.js';
import { bytesFor, typeName, type GGMLType } from '../model/ggml-types.js';
import { dequantize } from '../model/quant/index.js';
import { ModelError } from '../model/errors.js';
import type { GGUFFile, GGUFTensorInfo } from '../model/gguf.js';

const CONVERT_HINT = 'the model file does not match its own metadata; convert it again with a current llama.cpp';

/**
 * Weight bytes x tokens each thread must have to gain. The native matmul runs threads > 1 on a pool of
 * helper threads that wait for the next product (no thread start per call), so a second thread pays off
 * from about 256 KB: measured on a 2-core x86 VM (AMD EPYC, otherwise idle), q4_0 with 2048 columns and
 * one token, weights from memory, 2 threads vs 1: 0.86-0.97x at 144 KB, 0.98-1.08x at 216 KB,
 * 1.11-1.15x at 288 KB, 1.2-1.4x at 432-576 KB, 1.5-1.6x at 2.3 MB (2048x2048).
 */
export const BYTES_PER_THREAD = 128 * 2 ** 10;

/** Threads worth starting for a product of `work` weight bytes x tokens, at most `threads`. */
export function threadsFor(work: number, threads: number): number {
  return Math.max(1, Math.min(threads, Math.floor(work / BYTES_PER_THREAD)));
}

export class Weight {
  constructor(
    readonly type: GGMLType,
    /** Output features. */
    readonly rows: number,
    /** Input features (one row's length). */
    readonly cols: number,
    /** rows * rowBytes bytes, rows contiguous. */
    readonly data: Uint8Array,
  ) {
    const want = rows * bytesFor(type, cols);
    if (data.byteLength !== want) throw new RangeError(`weight of ${rows}x${cols} ${typeName(type)} needs ${want} bytes, got ${data.byteLength}`);
  }

  get rowBytes(): number { return bytesFor(this.type, this.cols); }

  /**
   * y[t*rows + r] = dot(row r, x[t*cols ..]) for t < nTokens. Uses at most `threads` threads, fewer
   * for small products (see threadsFor); the result is the same whatever the count.
   */
  matmul(x: Float32Array, nTokens: number, threads: number, out = new Float32Array(nTokens * this.rows)): Float32Array {
    matmul(this.type, this.data, this.rows, this.cols, x, nTokens, out, threadsFor(this.data.byteLength * nTokens, threads));
    return out;
  }

  /**
   * weights[i].matmul(x, nTokens, threads) for each i (the same bits), in one native call: x converted
   * once, the threads meeting once. All must take x's width.
   */
  static matmulMany(weights: readonly Weight[], x: Float32Array, nTokens: number, threads: number): Float32Array[] {
    const cols = weights[0]!.cols;
    if (weights.some((w) => w.cols !== cols)) throw new RangeError('matmulMany: the weights take inputs of different widths');
    const outs = weights.map((w) => new Float32Array(nTokens * w.rows));
    const bytes = weights.reduce((a, w) => a + w.data.byteLength, 0);
    matmulSameInput(weights.map((w, i) => ({ type: w.type, w: w.data, rows: w.rows, out: outs[i]! })), x, cols, nTokens, threadsFor(bytes * nTokens, threads));
    return outs;
  }

  /** Row r decoded to f32 (token embedding lookup). */
  row(r: number, out?: Float32Array): Float32Array {
    const rb = this.rowBytes;
    return dequantize(this.type, this.data.subarray(r * rb, (r + 1) * rb), this.cols, out);
  }
}

function shapeError(t: GGUFTensorInfo, want: readonly number[], what: string): ModelError {
  return new ModelError(`tensor ${t.name} has dims [${t.dims.join(', ')}], expected [${want.join(', ')}] (${what})`, CONVERT_HINT);
}

/** The tensor's info after checking its dims equal `want` (ggml order). */
export function checkedTensor(file: GGUFFile, name: string, want: readonly number[], what: string): GGUFTensorInfo {
  const t = file.tensor(name);
  if (t.dims.length !== want.length || t.dims.some((d, i) => d !== want[i])) throw shapeError(t, want, what);
  return t;
}

/** A 2-D tensor [cols, rows] read into memory as a Weight. */
export function readWeight(file: GGUFFile, name: string, cols: number, rows: number, what: string): Weight {
  const t = checkedTensor(file, name, [cols, rows], what);
  return new Weight(t.type, rows, cols, file.readTensor(name));
}

/** A 1-D tensor (norm weights, biases) decoded to f32. */
export function readVector(file: GGUFFile, name: string, length: number, what: string): Float32Array {
  const t = checkedTensor(file, name, [length], what);
  return dequantize(t.type, file.readTensor(name), length);
}
