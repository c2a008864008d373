// Plain TypeScript reference code for ggml block formats: the oracle the native kernels are tested
// against and the quantizer the fixture generator uses. Layouts follow ggml-common.h (little-endian,
// scales as IEEE half); quantizers follow ggml's quantize_row_*_ref so the bytes match llama.cpp's.
import { GGMLType, GGML_TYPE_INFO, typeName } from '../ggml-types.js';
import { UnsupportedError } from '../errors.js';
import { bf16ToF32, f32ToBf16, readF16, writeF16 } from './f16.js';
import {
  type BlockDecoder, type BlockEncoder,
  decodeQ4_0, decodeQ4_1, decodeQ5_0, decodeQ5_1, decodeQ8_0, decodeQ8_1,
  encodeQ4_0, encodeQ4_1, encodeQ5_0, encodeQ5_1, encodeQ8_0, encodeQ8_1,
} from './legacy.js';
import {
  decodeQ2_K, decodeQ3_K, decodeQ4_K, decodeQ5_K, decodeQ6_K, decodeQ8_K,
  encodeQ2_K, encodeQ3_K, encodeQ4_K, encodeQ5_K, encodeQ6_K, encodeQ8_K,
} from './kquants.js';

export { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from './f16.js';

// ---- plain float types: one "block" is one value

const decodeF32: BlockDecoder = (src, n, out) => {
  if (src.byteOffset % 4 === 0) {
    out.set(new Float32Array(src.buffer, src.byteOffset, n));
    return;
  }
  const dv = new DataView(src.buffer, src.byteOffset, n * 4);
  for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
};

const encodeF32: BlockEncoder = (src, n, out) => {
  out.set(new Uint8Array(src.buffer, src.byteOffset, n * 4));
};

const decodeF16: BlockDecoder = (src, n, out) => {
  for (let i = 0; i < n; i++) out[i] = readF16(src, 2 * i);
};

const encodeF16: BlockEncoder = (src, n, out) => {
  for (let i = 0; i < n; i++) writeF16(out, 2 * i, src[i]!);
};

const decodeBF16: BlockDecoder = (src, n, out) => {
  for (let i = 0, o = 0; i < n; i++, o += 2) out[i] = bf16ToF32(src[o]! | (src[o + 1]! << 8));
};

const encodeBF16: BlockEncoder = (src, n, out) => {
  for (let i = 0, o = 0; i < n; i++, o += 2) {
    const b = f32ToBf16(src[i]!);
    out[o] = b & 0xff;
    out[o + 1] = b >>> 8;
  }
};

interface Codec { decode: BlockDecoder; encode: BlockEncoder }

const CODECS: Partial<Record<number, Codec>> = {
  [GGMLType.F32]: { decode: decodeF32, encode: encodeF32 },
  [GGMLType.F16]: { decode: decodeF16, encode: encodeF16 },
  [GGMLType.BF16]: { decode: decodeBF16, encode: encodeBF16 },
  [GGMLType.Q4_0]: { decode: decodeQ4_0, encode: encodeQ4_0 },
  [GGMLType.Q4_1]: { decode: decodeQ4_1, encode: encodeQ4_1 },
  [GGMLType.Q5_0]: { decode: decodeQ5_0, encode: encodeQ5_0 },
  [GGMLType.Q5_1]: { decode: decodeQ5_1, encode: encodeQ5_1 },
  [GGMLType.Q8_0]: { decode: decodeQ8_0, encode: encodeQ8_0 },
  [GGMLType.Q8_1]: { decode: decodeQ8_1, encode: encodeQ8_1 },
  [GGMLType.Q2_K]: { decode: decodeQ2_K, encode: encodeQ2_K },
  [GGMLType.Q3_K]: { decode: decodeQ3_K, encode: encodeQ3_K },
  [GGMLType.Q4_K]: { decode: decodeQ4_K, encode: encodeQ4_K },
  [GGMLType.Q5_K]: { decode: decodeQ5_K, encode: encodeQ5_K },
  [GGMLType.Q6_K]: { decode: decodeQ6_K, encode: encodeQ6_K },
  [GGMLType.Q8_K]: { decode: decodeQ8_K, encode: encodeQ8_K },
};

function codecFor(type: number, what: 'dequantize' | 'quantize'): Codec {
  const codec = CODECS[type];
  if (!codec) {
    throw new UnsupportedError(
      `cannot ${what} tensor type ${typeName(type)}`,
      `supported types: ${Object.keys(CODECS).map((t) => typeName(Number(t))).join(', ')}; ` +
        're-quantize the model to one of them (e.g. with llama-quantize)',
    );
  }
  return codec;
}

function blocksIn(type: number, count: number): number {
  const info = GGML_TYPE_INFO[type]!;
  if (!Number.isInteger(count) || count < 0 || count % info.blockSize !== 0) {
    throw new RangeError(`${info.name}: ${count} values is not a whole number of ${info.blockSize}-value blocks`);
  }
  return count / info.blockSize;
}

/** Decodes `count` values of `type` from `src` (a whole number of blocks) into f32. */
export function dequantize(type: GGMLType, src: Uint8Array, count: number, out?: Float32Array): Float32Array {
  const codec = codecFor(type, 'dequantize');
  const nBlocks = blocksIn(type, count);
  const info = GGML_TYPE_INFO[type]!;
  const bytes = nBlocks * info.typeSize;
  if (src.length < bytes) {
    throw new RangeError(`${info.name}: ${count} values need ${bytes} bytes but only ${src.length} were given`);
  }
  const dst = out ?? new Float32Array(count);
  if (dst.length < count) {
    throw new RangeError(`${info.name}: output holds ${dst.length} values, ${count} needed`);
  }
  codec.decode(src, nBlocks, dst);
  return dst;
}

/** Encodes f32 values (a whole number of blocks) the way ggml's reference quantizers do. */
export function quantize(type: GGMLType, src: Float32Array): Uint8Array {
  const codec = codecFor(type, 'quantize');
  const nBlocks = blocksIn(type, src.length);
  const out = new Uint8Array(nBlocks * GGML_TYPE_INFO[type]!.typeSize);
  codec.encode(src, nBlocks, out);
  return out;
}

/** Decodes a row-major matrix of `rows` rows of `cols` values each (each row a whole number of blocks). */
export function dequantizeRows(type: GGMLType, src: Uint8Array, rows: number, cols: number): Float32Array {
  codecFor(type, 'dequantize');
  blocksIn(type, cols); // each row must be whole blocks, as in ggml
  return dequantize(type, src, rows * cols);
}

export function canDequantize(type: number): boolean { return CODECS[type] !== undefined; }
export function canQuantize(type: number): boolean { return CODECS[type] !== undefined; }
