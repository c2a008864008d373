// Native one-token matmul (matrix x vector) throughput on one thread, in GB/s of weight bytes read, each
// pass paired with a reference pass over the same bytes (sumBytes over the same copies; for onnxruntime,
// our Q4_0 kernel) so the ratio between them is taken under the same machine load.
import { GGMLType, GGML_TYPE_INFO } from '../src/model/ggml-types.js';
import { dequantize } from '../src/model/quant/index.js';
import { matmul, sumBytes } from '../src/native/index.js';
import { randomFloats } from './random.js';
import { pairedRatios, summarize, throughputs, timePairedPasses, timePasses, type RepeatOptions, type Summary } from './stats.js';
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
  /** A reference timed in adjacent passes with this line's (see timePairedPasses). */
  paired?: PairedReference;
  /**
   * Seconds per call on a 1-row matrix of the same width, in cache (median over passes): the fixed cost
   * of a call (argument checks, activation conversion), which a short matrix pays once per call.
   */
  callSeconds?: number;
}

export interface PairedReference {
  /** What was timed alongside: `sumBytes` over the same copies, or our `q4_0` kernel (for ORT). */
  against: 'sumBytes' | 'q4_0';
  /** The reference's GB/s in those passes. */
  gbps: Summary;
  /** Per-pair ratio: this line / sumBytes, or q4_0 / this line (ORT); its median is the reported ratio. */
  ratio: Summary;
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

  const callSeconds = await timeOneRowCall(type, cols, x, options);
  const matrices = [first];
  for (let i = 1; i < copies; i++) matrices.push(makeMatrix(type, rows, cols, i));
  let sink = 0;
  const t = await timePairedPasses(
    () => { for (const w of matrices) matmul(type, w, rows, cols, x, 1, out, 1); },
    () => { for (const w of matrices) sink += sumBytes(w); },
    options);
  if (!Number.isFinite(sink)) throw new Error('sumBytes returned a non-number');
  const total = copies * bytes;
  return { ...base, gbps: throughputs(total, t.a), check, callSeconds,
    paired: { against: 'sumBytes', gbps: throughputs(total, t.b), ratio: pairedRatios(total, total, t) } };
}

const CALLS_PER_PASS = 200;

/** Median seconds of one matmul call on a 1 x cols matrix (see KernelResult.callSeconds). */
async function timeOneRowCall(type: GGMLType, cols: number, x: Float32Array, options: RepeatOptions): Promise<number> {
  const w = makeMatrix(type, 1, cols, 0);
  const out = new Float32Array(1);
  const seconds = await timePasses(() => {
    for (let i = 0; i < CALLS_PER_PASS; i++) matmul(type, w, 1, cols, x, 1, out, 1);
  }, options);
  return summarize(seconds).median / CALLS_PER_PASS;
}

/**
 * onnxruntime MatMulNBits on the same int4 matrix as our Q4_0 line (see ort-bench.ts for the model),
 * rotating over sessions that each hold a copy, in passes alternated with our Q4_0 kernel over as many
 * Q4_0 copies. GB/s counted in Q4_0 bytes, so `paired.ratio` (q4_0 / ort) is a ratio of times. Falls
 * back to ORT alone when the native kernel is not built.
 */
export async function benchOrtPairedWithQ4_0(shape: MatrixShape, minRotationBytes: number,
  options: RepeatOptions): Promise<KernelResult> {
  const { buildMatMulNBitsModel, q4_0ToMatMulNBits } = await import('./onnx-matmulnbits.js');
  const { createCpuSession, runMatMulNBits } = await import('./ort-session.js');
  const { rows, cols } = shape;
  const type = GGMLType.Q4_0;
  const bytes = matrixBytes(type, rows, cols);
  const copies = rotationCopies(bytes, minRotationBytes);
  const first = makeMatrix(type, rows, cols, 0);
  const model = buildMatMulNBitsModel(q4_0ToMatMulNBits(first, rows, cols), { accuracyLevel: 4 });
  const x = randomFloats(cols, 7);
  const out = new Float32Array(rows);
  let nativeNote: string | null = null;
  try { matmul(type, first, rows, cols, x, 1, out, 1); } catch (err) { nativeNote = describe(err); }
  const matrices = [first];
  for (let i = 1; nativeNote === null && i < copies; i++) matrices.push(makeMatrix(type, rows, cols, i));

  const sessions: Awaited<ReturnType<typeof createCpuSession>>[] = [];
  try {
    for (let i = 0; i < copies; i++) sessions.push(await createCpuSession(model));
    const ortPass = async (): Promise<void> => { for (const s of sessions) await runMatMulNBits(s, x); };
    const base = { kernel: 'ort MatMulNBits', rows, cols, matrixBytes: bytes, copies, check: 'skipped' as const };
    const total = copies * bytes;
    if (nativeNote !== null) {
      return { ...base, gbps: throughputs(total, await timePasses(ortPass, options)),
        note: `converter checked by test/bench-onnx.test.ts; unpaired: q4_0 ${nativeNote}` };
    }
    const t = await timePairedPasses(ortPass,
      () => { for (const w of matrices) matmul(type, w, rows, cols, x, 1, out, 1); }, options);
    // ratio = q4_0 / ort: with equal bytes, ort seconds / q4_0 seconds.
    return { ...base, gbps: throughputs(total, t.a), note: 'converter checked by test/bench-onnx.test.ts',
      paired: { against: 'q4_0', gbps: throughputs(total, t.b), ratio: pairedRatios(total, total, { a: t.b, b: t.a }) } };
  } finally {
    for (const s of sessions) await s.release();
  }
}
