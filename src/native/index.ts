// CONTRACT STUB (owner: native-kernel helper) — replace the bodies, keep the exported names and shapes.
// Typed access to the N-API addon in native/ (built by `npm install`).
import type { GGMLType } from '../model/ggml-types.js';

export interface CpuFeatures { avx2: boolean; fma: boolean; f16c: boolean; avx512: boolean }

/**
 * out[t * rows + r] = sum_c W[r, c] * x[t * cols + c] for t < nTokens.
 * W: `rows` rows of `cols` values of `type`, rows contiguous (one expert's matrix as stored in GGUF).
 * Deterministic: the same inputs give bit-identical outputs whatever `threads` is.
 * Buffers may live on SharedArrayBuffer.
 */
export function matmul(_type: GGMLType, _w: Uint8Array, _rows: number, _cols: number,
  _x: Float32Array, _nTokens: number, _out: Float32Array, _threads = 1): void {
  throw new Error('not implemented');
}

export function cpuFeatures(): CpuFeatures { throw new Error('not implemented'); }

/** 'auto' picks the best path the CPU has; 'portable' forces the plain C++ path (tests compare both). */
export function setKernelPath(_path: 'auto' | 'portable'): void { throw new Error('not implemented'); }

/** Reads every byte of `buf` once (a memory read-bandwidth probe for the benchmark); returns their sum. */
export function sumBytes(_buf: Uint8Array): number { throw new Error('not implemented'); }
