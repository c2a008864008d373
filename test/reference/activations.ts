// How llama.cpp's CPU backend rounds the activation vector before a quantized matmul, written from
// ggml's reference quantizers (quantize_row_q8_0_ref, quantize_row_q8_K_ref): the vector is quantized
// to 8 bits per block and the product is taken with those rounded values. Returns the rounded values.
import { GGMLType } from '../../src/model/ggml-types.js';
import { f16ToF32, f32ToF16 } from '../../src/model/quant/index.js';

/** Activation block format ggml pairs with a weight type (undefined: f32 activations). */
export function activationTypeFor(weightType: GGMLType): GGMLType | undefined {
  switch (weightType) {
    case GGMLType.F32: return undefined;
    case GGMLType.Q4_0: case GGMLType.Q5_0: case GGMLType.Q8_0: return GGMLType.Q8_0;
    case GGMLType.Q4_1: case GGMLType.Q5_1: return GGMLType.Q8_1; // same values as Q8_0
    case GGMLType.Q2_K: case GGMLType.Q3_K: case GGMLType.Q4_K: case GGMLType.Q5_K: case GGMLType.Q6_K:
      return GGMLType.Q8_K;
    default: throw new Error(`reference: no activation rounding known for weight type ${weightType}`);
  }
}

/** Round half away from zero, like C roundf. */
const roundAway = (v: number) => Math.sign(v) * Math.round(Math.abs(v));

/** Q8_0 / Q8_1: blocks of 32, d = amax/127 stored as f16, q = round(x / d). */
function roundQ8_0(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let b = 0; b < x.length; b += 32) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b + j]!));
    const d = Math.fround(amax / 127);
    const id = d !== 0 ? Math.fround(1 / d) : 0;
    const dStored = f16ToF32(f32ToF16(d));
    for (let j = 0; j < 32; j++) out[b + j] = dStored * roundAway(Math.fround(x[b + j]! * id));
  }
  return out;
}

/** Q8_K: blocks of 256, f32 scale; the value of largest magnitude maps to -127 (ggml's sign convention). */
function roundQ8_K(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let b = 0; b < x.length; b += 256) {
    let amax = 0;
    let max = 0;
    for (let j = 0; j < 256; j++) {
      const ax = Math.abs(x[b + j]!);
      if (ax > amax) { amax = ax; max = x[b + j]!; }
    }
    if (amax === 0) continue;
    const iscale = Math.fround(-127 / max);
    const d = Math.fround(1 / iscale);
    for (let j = 0; j < 256; j++) {
      const q = Math.min(127, Math.round(Math.fround(iscale * x[b + j]!))); // nearest_int: round half to even, never .5 here in practice
      out[b + j] = Math.fround(d * q);
    }
  }
  return out;
}

/** The activation values a quantized matmul with a `weightType` weight actually multiplies. */
export function roundActivations(weightType: GGMLType, x: ArrayLike<number>): Float32Array {
  const f32 = Float32Array.from(x); // llama.cpp activations are f32
  const act = activationTypeFor(weightType);
  if (act === undefined) return f32;
  if (act === GGMLType.Q8_K) return roundQ8_K(f32);
  return roundQ8_0(f32);
}
