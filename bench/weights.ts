// Benchmark weights: real quantized blocks (from our reference quantizer on seeded random values),
// tiled to matrix size, in several copies so a pass over all of them streams from RAM, not cache,
// the way experts are read when they are streamed in.
import { GGMLType, GGML_TYPE_INFO } from '../src/model/ggml-types.js';
import { quantize } from '../src/model/quant/index.js';
import { randomFloats } from './random.js';

/** Values quantized once per type (1 MiB of f32); bigger matrices tile these blocks. */
const CHUNK_VALUES = 256 * 1024;
const chunkCache = new Map<GGMLType, Uint8Array>();

export function matrixBytes(type: GGMLType, rows: number, cols: number): number {
  const info = GGML_TYPE_INFO[type]!;
  if (cols % info.blockSize !== 0) throw new RangeError(`${info.name}: cols=${cols} is not a multiple of ${info.blockSize}`);
  return rows * (cols / info.blockSize) * info.typeSize;
}

function quantizedChunk(type: GGMLType): Uint8Array {
  let chunk = chunkCache.get(type);
  if (!chunk) {
    chunk = quantize(type, randomFloats(CHUNK_VALUES, 0x5eed + type));
    chunkCache.set(type, chunk);
  }
  return chunk;
}

/** One rows x cols matrix of `type`; `variant` shifts where in the quantized chunk the tiling starts. */
export function makeMatrix(type: GGMLType, rows: number, cols: number, variant = 0): Uint8Array {
  const typeSize = GGML_TYPE_INFO[type]!.typeSize;
  const chunk = quantizedChunk(type);
  const chunkBlocks = chunk.length / typeSize;
  const out = new Uint8Array(matrixBytes(type, rows, cols));
  let src = ((variant * 7919) % chunkBlocks) * typeSize; // block-aligned, so every block stays valid
  for (let dst = 0; dst < out.length;) {
    const n = Math.min(chunk.length - src, out.length - dst);
    out.set(chunk.subarray(src, src + n), dst);
    dst += n;
    src = 0;
  }
  return out;
}

/** How many copies of a matrix make a rotation of at least `minBytes` (never fewer than 2). */
export function rotationCopies(bytesPerMatrix: number, minBytes: number): number {
  return Math.max(2, Math.ceil(minBytes / bytesPerMatrix));
}
