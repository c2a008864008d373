// Native one-token matmul (matrix x vector) throughput on one thread, in GB/s of weight bytes read.
import { GGMLType, GGML_TYPE_INFO } from '../src/model/ggml-types.js';
import { dequantize } from '../src/model/quant/index.js';
import { matmul } from '../src/native/index.js';
import { randomFloats } from './random.js';
import { throughputs, timePasses, type RepeatOptions, type Summary } from './stats.js';
import { makeMatrix, matrixBytes, rotationCopies } from './weights.js';

export interface MatrixShape {
  /** Outputs (rows of the GGUF matrix). */
  rows: number;
  /** Inputs (values per row). */
  cols: number;
}

export interface KernelResult {
  kernel: string;
  rows: number;
  cols: number;
  matrixBytes: number;
  copies: number;
  /** null when the kernel could not run; `note` says why. */
  gbps: Summary | null;
  /** Output of the first rows checked against the dequantized reference. */
  check: 'ok' | 'MISMATCH' | 'skipped';
  note?: string;
}

const CHECK_ROWS = 4;

/** Compares the first rows of `out` with the dequantized matrix times x (float64). */
function checkRows(type: GGMLType, w: Uint8Array, cols: number, x: Float32Array, out: Float32Array): boolean {
  const rowBytes = (cols / GGML_TYPE_INFO[type]!.blockSize) * GGML_TYPE_INFO[type]!.typeSize;
  const ref = dequantize(type, w.subarray(0, CHECK_ROWS * rowBytes), CHECK_ROWS * cols);
  let maxX = 0;
  for (const v of x) maxX = Math.max(maxX, Math.abs(v));
  for (let r = 0; r < CHECK_ROWS; r++) {
    let y = 0;
    let sumAbsW = 0;
    for (let c = 0; c < cols; c++) {
      y += ref[r * cols + c]! * x[c]!;
      sumAbsW += Math.abs(ref[r * cols + c]!);
    }
    // Kernels may round x to 8 bits per block (Q8_0/Q8_K) or to f16: error <= sum|w| * max|x| / 254,
    // doubled for margin.
    if (!(Math.abs(out[r]! - y) <= (sumAbsW * maxX) / 127 + 1e-6)) return false;
  }
  return true;
}

function describe(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return /not implemented|cannot (find module|load the native)|did not self-register|no such file/i.test(msg)
    ? 'n/a (not built)'
    : `n/a (${msg.split('\n')[0]})`;
}

export async function benchNativeKernel(type: GGMLType, shape: MatrixShape, minRotationBytes: number,
  options: RepeatOptions): Promise<KernelResult> {
  const { rows, cols } = shape;
  const kernel = GGML_TYPE_INFO[type]!.name;
  const bytes = matrixBytes(type, rows, cols);
  const copies = rotationCopies(bytes, minRotationBytes);
  const base = { kernel, rows, cols, matrixBytes: bytes, copies };
  const x = randomFloats(cols, 7);
  const out = new Float32Array(rows);

  let first: Uint8Array;
  try {
    first = makeMatrix(type, rows, cols, 0);
  } catch (err) {
    return { ...base, gbps: null, check: 'skipped', note: `n/a (no weights: ${describe(err).replace(/^n\/a \(|\)$/g, '')})` };
  }
  try {
    matmul(type, first, rows, cols, x, 1, out, 1);
  } catch (err) {
    return { ...base, gbps: null, check: 'skipped', note: describe(err) };
  }
  let check: KernelResult['check'] = 'skipped';
  try {
    check = checkRows(type, first, cols, x, out) ? 'ok' : 'MISMATCH';
  } catch { /* no reference dequantizer for this type yet */ }

  const matrices = [first];
  for (let i = 1; i < copies; i++) matrices.push(makeMatrix(type, rows, cols, i));
  const seconds = await timePasses(() => {
    for (const w of matrices) matmul(type, w, rows, cols, x, 1, out, 1);
  }, options);
  return { ...base, gbps: throughputs(copies * bytes, seconds), check };
}
