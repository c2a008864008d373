// CONTRACT STUB (owner: block-format helper) — replace the bodies, keep the exported names and shapes.
// Plain TypeScript reference code for ggml block formats: the oracle the native kernels are tested against.
import type { GGMLType } from '../ggml-types.js';

/** Decodes `count` values of `type` from `src` (a whole number of blocks) into f32. */
export function dequantize(_type: GGMLType, _src: Uint8Array, _count: number, _out?: Float32Array): Float32Array {
  throw new Error('not implemented');
}

/** Encodes f32 values (a whole number of blocks) the way ggml's reference quantizers do. */
export function quantize(_type: GGMLType, _src: Float32Array): Uint8Array {
  throw new Error('not implemented');
}

export function canDequantize(_type: number): boolean { return false; }
export function canQuantize(_type: number): boolean { return false; }
