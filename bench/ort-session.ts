// onnxruntime-node sessions for the MatMulNBits model: CPU execution provider, one intra-op thread,
// so ORT is measured on the same single core as our native kernel.
import * as ort from 'onnxruntime-node';

export type { InferenceSession } from 'onnxruntime-node';

export const ortVersion: string = (ort.env as { versions?: { common?: string } }).versions?.common ?? 'unknown';

export function createCpuSession(model: Uint8Array): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(model, {
    executionProviders: ['cpu'],
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
  });
}

/** Y = MatMulNBits(A = x as [1, K]); returns Y's N values. */
export async function runMatMulNBits(session: ort.InferenceSession, x: Float32Array): Promise<Float32Array> {
  const result = await session.run({ A: new ort.Tensor('float32', x, [1, x.length]) });
  return result['Y']!.data as Float32Array;
}
