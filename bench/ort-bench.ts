// The fixed cost of one onnxruntime call from Node (the MatMulNBits throughput itself is measured
// paired with our Q4_0 kernel in kernels.ts).
import { GGMLType } from '../src/model/ggml-types.js';
import { buildMatMulNBitsModel, q4_0ToMatMulNBits } from './onnx-matmulnbits.js';
import { createCpuSession, runMatMulNBits } from './ort-session.js';
import { randomFloats } from './random.js';
import { summarize, timePasses, type RepeatOptions } from './stats.js';
import { makeMatrix } from './weights.js';

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
