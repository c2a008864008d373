// onnxruntime MatMulNBits (int4, block 32, accuracy_level 4) on the same Q4_0 matrix, one thread,
// rotating over several sessions (each holds its own copy of the weights) so weights come from RAM.
import { GGMLType } from '../src/model/ggml-types.js';
import { buildMatMulNBitsModel, q4_0ToMatMulNBits } from './onnx-matmulnbits.js';
import { createCpuSession, runMatMulNBits, type InferenceSession } from './ort-session.js';
import { randomFloats } from './random.js';
import { summarize, throughputs, timePasses, type RepeatOptions } from './stats.js';
import type { KernelResult, MatrixShape } from './kernels.js';
import { makeMatrix, matrixBytes, rotationCopies } from './weights.js';

/** GB/s counted in Q4_0 bytes (18 per 32 weights), so the ratio to our Q4_0 kernel is a ratio of times. */
export async function benchOrtMatMulNBits(shape: MatrixShape, minRotationBytes: number,
  options: RepeatOptions): Promise<KernelResult> {
  const { rows, cols } = shape;
  const bytes = matrixBytes(GGMLType.Q4_0, rows, cols);
  const copies = rotationCopies(bytes, minRotationBytes);
  const model = buildMatMulNBitsModel(q4_0ToMatMulNBits(makeMatrix(GGMLType.Q4_0, rows, cols, 0), rows, cols),
    { accuracyLevel: 4 });
  const sessions: InferenceSession[] = [];
  try {
    for (let i = 0; i < copies; i++) sessions.push(await createCpuSession(model));
    const x = randomFloats(cols, 7);
    const seconds = await timePasses(async () => {
      for (const s of sessions) await runMatMulNBits(s, x);
    }, options);
    return { kernel: 'ort MatMulNBits', rows, cols, matrixBytes: bytes, copies,
      gbps: throughputs(copies * bytes, seconds), check: 'skipped',
      note: 'converter checked by test/bench-onnx.test.ts' };
  } finally {
    for (const s of sessions) await s.release();
  }
}

/** Seconds per session.run on a tiny MatMulNBits (32x32): the fixed cost of one ORT call from Node. */
export async function ortCallOverhead(options: RepeatOptions): Promise<number> {
  const tiny = 32;
  const session = await createCpuSession(buildMatMulNBitsModel(
    q4_0ToMatMulNBits(makeMatrix(GGMLType.Q4_0, tiny, tiny, 0), tiny, tiny), { accuracyLevel: 4 }));
  try {
    const x = randomFloats(tiny, 7);
    const callsPerPass = 200;
    const seconds = await timePasses(async () => {
      for (let i = 0; i < callsPerPass; i++) await runMatMulNBits(session, x);
    }, options);
    return summarize(seconds).median / callsPerPass;
  } finally {
    await session.release();
  }
}
