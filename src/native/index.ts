// Typed access to the N-API addon in native/ (built by `npm install` / `npm run build:native`).
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { GGMLType } from '../model/ggml-types.js';
import { MoeOffloadError } from '../model/errors.js';

export interface CpuFeatures { avx2: boolean; fma: boolean; f16c: boolean; avx512: boolean }

export interface Addon {
  matmul(type: number, w: Uint8Array, rows: number, cols: number, x: Float32Array, nTokens: number,
    out: Float32Array, threads: number): void;
  matmulSameInput(types: number[], ws: Uint8Array[], rows: number[], outs: Float32Array[], x: Float32Array,
    cols: number, nTokens: number, threads: number): void;
  cpuFeatures(): CpuFeatures & { kernelPath: KernelPath };
  setKernelPath(path: 'auto' | 'avx2' | 'portable'): void;
  sumBytes(buf: Uint8Array): number;
  parkThreads(): void;
  // expert-batch.cc
  expertBatch(slabs: Uint8Array[], desc: Float64Array, x: Float32Array, rows: Int32Array, out: Float32Array,
    nEmbd: number, threads: number): void;
  poolServe(release: Int32Array): boolean;
  poolWakeServers(): void;
  poolLending(): { lent: number; chunks: number };
  // attention.cc
  causalAttention(q: Float32Array, keys: Float32Array | Uint16Array, values: Float32Array | Uint16Array, start: number,
    nTokens: number, nHead: number, nHeadKv: number, headDim: number, out: Float32Array, threads?: number): void;
  storeF16(src: Float32Array, dst: Uint16Array, at: number, n: number): void;
  swiglu(g: Float32Array, u: Float32Array, n: number): void;
  // moe-combine.cc
  moeCombine(ys: Float32Array, offsets: Int32Array, weights: Float32Array, nTokens: number, k: number,
    nEmbd: number, out: Float32Array): void;
  // io.cc (wrapped by src/native/io.ts)
  openFile(path: string, direct: boolean): number;
  closeFile(fd: number): void;
  readInto(fd: number, position: number, dst: Uint8Array): Promise<number>;
  readIntoRegion(fd: number, position: number, region: Uint8Array, at: number, length: number): Promise<number>;
  pageOffsetOf(view: Uint8Array): number;
  ioCounters(): { zeroCopyReads: number; bouncedReads: number; bouncedBytes: number };
  traceReads(on: boolean): Float64Array;
}

let addon: Addon | undefined;

/** Loads the addon on first use, so that code paths that never compute do not need it built. */
export function native(): Addon {
  if (addon) return addon;
  // dist/src/native/index.js -> native/build/Release/moe_native.node
  const path = fileURLToPath(new URL('../../../native/build/Release/moe_native.node', import.meta.url));
  try {
    addon = createRequire(import.meta.url)(path) as Addon;
  } catch (err) {
    throw new MoeOffloadError(`cannot load the native kernels (${path}): ${(err as Error).message}`,
      'run `npm install` (or `npm run build:native`) in the moe-offload directory to build them');
  }
  return addon;
}

/**
 * out[t * rows + r] = sum_c W[r, c] * x[t * cols + c] for t < nTokens.
 * W: `rows` rows of `cols` values of `type`, rows contiguous (one expert's matrix as stored in GGUF).
 * Numerics follow ggml's CPU backend: x is first converted to the type's vec-dot type (Q8_0, Q8_1, Q8_K,
 * F16, BF16 or none), then block-wise integer dot products are scaled and summed in float.
 * Deterministic: the same inputs give bit-identical outputs whatever `threads` is.
 * Buffers may live on SharedArrayBuffer. Throws TypeError/RangeError on bad arguments or sizes.
 */
export function matmul(type: GGMLType, w: Uint8Array, rows: number, cols: number,
  x: Float32Array, nTokens: number, out: Float32Array, threads = 1): void {
  native().matmul(type, w, rows, cols, x, nTokens, out, threads);
}

/** One product of matmulSameInput: `rows` rows of `type` in w, written to out (as matmul writes it). */
export interface SameInputProduct { type: GGMLType; w: Uint8Array; rows: number; out: Float32Array }

/**
 * Several products of one input x (nTokens rows of cols values), each the same bits as matmul gives it:
 * x is converted once per vec-dot type and all the rows go to the thread pool as one job, so the
 * threads meet once (attention's q, k and v).
 */
export function matmulSameInput(products: readonly SameInputProduct[], x: Float32Array, cols: number, nTokens: number, threads = 1): void {
  native().matmulSameInput(products.map((p) => p.type), products.map((p) => p.w), products.map((p) => p.rows),
    products.map((p) => p.out), x, cols, nTokens, threads);
}

export function cpuFeatures(): CpuFeatures {
  const { avx2, fma, f16c, avx512 } = native().cpuFeatures();
  return { avx2, fma, f16c, avx512 };
}

/**
 * Which kernels matmul uses now: 'avx512' (AVX-512 VNNI where there is such a kernel, Q4_0 so far; AVX2
 * for the other types), 'avx2' (AVX2 + FMA + F16C) or 'portable'.
 */
export type KernelPath = 'avx512' | 'avx2' | 'portable';

export function kernelPath(): KernelPath {
  return native().cpuFeatures().kernelPath;
}

/**
 * 'auto' picks the best path the CPU has; 'avx2' leaves out AVX-512 and 'portable' forces the plain C++
 * path (tests compare them). Paths the CPU lacks fall back to the next one down.
 */
export function setKernelPath(path: 'auto' | 'avx2' | 'portable'): void { native().setKernelPath(path); }

/**
 * matmul(threads > 1) runs on a process-wide pool of native helper threads that, after each product, spin
 * for a short while (~100 us) waiting for the next one, then sleep. Call this before a phase where other
 * threads (the expert workers) need the cores, so that spinning helpers go to sleep at once. Cheap; the
 * next matmul wakes them again.
 */
export function parkThreads(): void { native().parkThreads(); }

/** Values per expert in expertBatch's descriptor: slab, rowStart, nTokens, then for gate, up, down: offset, byteLength, type, rows, cols. */
export const EXPERT_DESC_STRIDE = 18;

/**
 * Computes experts' FFNs, down . (silu(gate . x) * (up . x)), one expert per chunk of the native thread
 * pool (`threads` threads, this one included): expert i (desc[i * EXPERT_DESC_STRIDE ..]) reads its
 * matrices from slabs[slab] and writes output rows [rowStart, rowStart + nTokens) of out (nEmbd values
 * each) from the rows of x named by rows[rowStart ..]. The same kernels in the same order as
 * src/experts/ffn.ts's expertFfnInto: the same bits. Throws RangeError on a descriptor that does not fit.
 */
export function expertBatch(slabs: Uint8Array[], desc: Float64Array, x: Float32Array, rows: Int32Array, out: Float32Array,
  nEmbd: number, threads: number): void {
  native().expertBatch(slabs, desc, x, rows, out, nEmbd, threads);
}

/**
 * Lending threads to the native pool: a worker thread calls serve(release) and, until release[0] is set
 * (release: an Int32Array on a SharedArrayBuffer, one per lending, owned by the lender), helps with every
 * pool job (matmul row chunks, attention heads, expertBatch's pieces) instead of the pool's own helper
 * threads, which sleep meanwhile. A release set before the worker starts serving returns it at once.
 */
export const threadLending = {
  serve(release: Int32Array): boolean { return native().poolServe(release); },
  /** Sets release[0] and wakes lent threads that sleep, so the ones lent under `release` return. */
  release(release: Int32Array): void {
    Atomics.store(release, 0, 1);
    native().poolWakeServers();
  },
  /** Threads lent now. */
  lentNow(): number { return native().poolLending().lent; },
  /** Chunks (experts, row ranges, heads) that lent threads have computed since the process started. */
  helperChunks(): number { return native().poolLending().chunks; },
};

/** Reads every byte of `buf` once (a memory read-bandwidth probe for the benchmark); returns their sum. */
export function sumBytes(buf: Uint8Array): number { return native().sumBytes(buf); }

/**
 * Causal grouped-query attention, as documented on src/engine/attention.ts's causalAttentionReference
 * (q: nTokens rows of nHead*headDim at positions start..; keys/values [pos][nHeadKv][headDim], both f32 or
 * both f16 bits in a Uint16Array), computed in double and rounded to f32 into out. Throws TypeError/RangeError
 * on bad arguments or sizes.
 * threads > 1 splits the heads over the matmul thread pool when the K/V read is big enough to gain from
 * it; the result is bit-identical whatever `threads` is.
 */
export function causalAttention(q: Float32Array, keys: Float32Array | Uint16Array, values: Float32Array | Uint16Array,
  start: number, nTokens: number, nHead: number, nHeadKv: number, headDim: number, out: Float32Array, threads = 1): void {
  native().causalAttention(q, keys, values, start, nTokens, nHead, nHeadKv, headDim, out, threads);
}

/**
 * dst[at + i] = the f16 bits of src[i] for i < n, rounded to nearest even (as f32ToF16 in
 * src/model/quant/f16.ts, bit for bit on finite values and infinities). The f16 KV cache's write.
 */
export function storeF16(src: Float32Array, dst: Uint16Array, at: number, n: number): void {
  native().storeF16(src, dst, at, n);
}

/**
 * The MoE combine: out[t * nEmbd + c] = sum over slot < k, in slot order, of
 * ys[offsets[t * k + slot] + c] * weights[t * k + slot], every product and sum rounded to f32 (no FMA),
 * i.e. bit-identical to moeCombineReference in src/engine/moe-layer.ts. Throws on bad sizes/offsets.
 */
export function moeCombine(ys: Float32Array, offsets: Int32Array, weights: Float32Array, nTokens: number,
  k: number, nEmbd: number, out: Float32Array): void {
  native().moeCombine(ys, offsets, weights, nTokens, k, nEmbd, out);
}

/**
 * g[i] = silu(g[i]) * u[i] for i < n, in place (silu(z) = z / (1 + exp(-z))). The AVX2 path is f32 with a
 * vectorized exp (within a few f32 ulp of the f64 formula); the portable path is the f64 formula.
 */
export function swiglu(g: Float32Array, u: Float32Array, n: number): void { native().swiglu(g, u, n); }
