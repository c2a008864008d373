// ggml tensor types: the numeric ids stored in GGUF files and the byte size of one block of each.
// Ids follow ggml.h (enum ggml_type); ids that ggml retired (4, 5 and 31-33) are not listed.

export enum GGMLType {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
}

export interface GGMLTypeInfo {
  /** Name as ggml spells it (ggml_type_name). */
  name: string;
  /** Elements per block. */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
}

/** Block geometry of every type a GGUF file may hold, so any file's tensor sizes can be checked. */
export const GGML_TYPE_INFO: Readonly<Record<number, GGMLTypeInfo>> = {
  [GGMLType.F32]: { name: 'f32', blockSize: 1, typeSize: 4 },
  [GGMLType.F16]: { name: 'f16', blockSize: 1, typeSize: 2 },
  [GGMLType.Q4_0]: { name: 'q4_0', blockSize: 32, typeSize: 18 },
  [GGMLType.Q4_1]: { name: 'q4_1', blockSize: 32, typeSize: 20 },
  [GGMLType.Q5_0]: { name: 'q5_0', blockSize: 32, typeSize: 22 },
  [GGMLType.Q5_1]: { name: 'q5_1', blockSize: 32, typeSize: 24 },
  [GGMLType.Q8_0]: { name: 'q8_0', blockSize: 32, typeSize: 34 },
  [GGMLType.Q8_1]: { name: 'q8_1', blockSize: 32, typeSize: 36 },
  [GGMLType.Q2_K]: { name: 'q2_K', blockSize: 256, typeSize: 84 },
  [GGMLType.Q3_K]: { name: 'q3_K', blockSize: 256, typeSize: 110 },
  [GGMLType.Q4_K]: { name: 'q4_K', blockSize: 256, typeSize: 144 },
  [GGMLType.Q5_K]: { name: 'q5_K', blockSize: 256, typeSize: 176 },
  [GGMLType.Q6_K]: { name: 'q6_K', blockSize: 256, typeSize: 210 },
  [GGMLType.Q8_K]: { name: 'q8_K', blockSize: 256, typeSize: 292 },
  [GGMLType.IQ2_XXS]: { name: 'iq2_xxs', blockSize: 256, typeSize: 66 },
  [GGMLType.IQ2_XS]: { name: 'iq2_xs', blockSize: 256, typeSize: 74 },
  [GGMLType.IQ3_XXS]: { name: 'iq3_xxs', blockSize: 256, typeSize: 98 },
  [GGMLType.IQ1_S]: { name: 'iq1_s', blockSize: 256, typeSize: 50 },
  [GGMLType.IQ4_NL]: { name: 'iq4_nl', blockSize: 32, typeSize: 18 },
  [GGMLType.IQ3_S]: { name: 'iq3_s', blockSize: 256, typeSize: 110 },
  [GGMLType.IQ2_S]: { name: 'iq2_s', blockSize: 256, typeSize: 82 },
  [GGMLType.IQ4_XS]: { name: 'iq4_xs', blockSize: 256, typeSize: 136 },
  [GGMLType.I8]: { name: 'i8', blockSize: 1, typeSize: 1 },
  [GGMLType.I16]: { name: 'i16', blockSize: 1, typeSize: 2 },
  [GGMLType.I32]: { name: 'i32', blockSize: 1, typeSize: 4 },
  [GGMLType.I64]: { name: 'i64', blockSize: 1, typeSize: 8 },
  [GGMLType.F64]: { name: 'f64', blockSize: 1, typeSize: 8 },
  [GGMLType.IQ1_M]: { name: 'iq1_m', blockSize: 256, typeSize: 56 },
  [GGMLType.BF16]: { name: 'bf16', blockSize: 1, typeSize: 2 },
  [GGMLType.TQ1_0]: { name: 'tq1_0', blockSize: 256, typeSize: 54 },
  [GGMLType.TQ2_0]: { name: 'tq2_0', blockSize: 256, typeSize: 66 },
  [GGMLType.MXFP4]: { name: 'mxfp4', blockSize: 32, typeSize: 17 },
};

export function typeInfo(type: number): GGMLTypeInfo | undefined {
  return GGML_TYPE_INFO[type];
}

export function typeName(type: number): string {
  return GGML_TYPE_INFO[type]?.name ?? `unknown type ${type}`;
}

/** Bytes taken by `elements` values of `type`; elements must be a whole number of blocks. */
export function bytesFor(type: number, elements: number): number {
  const info = GGML_TYPE_INFO[type];
  if (!info) throw new RangeError(`unknown ggml type ${type}`);
  if (elements % info.blockSize !== 0) {
    throw new RangeError(`${info.name}: ${elements} elements is not a multiple of the block size ${info.blockSize}`);
  }
  return (elements / info.blockSize) * info.typeSize;
}
