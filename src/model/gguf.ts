// CONTRACT STUB (owner: GGUF reader helper) — replace the bodies, keep the exported names and shapes.
// GGUF v2/v3 reader: metadata, tensor index, positioned reads only.
import type { GGMLType } from './ggml-types.js';

export enum GGUFValueType {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
}

/** 64-bit integers are bigint; other numbers are number; arrays are plain JS arrays (nested allowed). */
export type GGUFValue = number | bigint | boolean | string | GGUFValue[];

export interface GGUFMetadataEntry {
  type: GGUFValueType;
  /** For arrays: the element type (the innermost one for nested arrays is found by walking). */
  arrayType?: GGUFValueType;
  value: GGUFValue;
}

/** Anything metadata can be read from (a GGUFFile, or a plain map in tests and the fixture generator). */
export interface MetadataSource {
  get(key: string): GGUFValue | undefined;
}

export interface GGUFTensorInfo {
  name: string;
  /** ggml order: dims[0] is the innermost, contiguous dimension (row length). */
  dims: number[];
  type: GGMLType;
  /** Absolute byte offset in the file. */
  offset: number;
  byteLength: number;
  elements: number;
}

export class GGUFFile implements MetadataSource {
  readonly path: string = '';
  readonly version: number = 0;
  readonly alignment: number = 32;
  /** Absolute offset of the tensor data section. */
  readonly dataOffset: number = 0;
  readonly fileSize: number = 0;
  readonly metadata = new Map<string, GGUFMetadataEntry>();
  /** In file order. */
  readonly tensors = new Map<string, GGUFTensorInfo>();

  /** Opens and parses the header with positioned reads; never reads tensor data. */
  static open(_path: string): GGUFFile { throw new Error('not implemented'); }
  get(key: string): GGUFValue | undefined { return this.metadata.get(key)?.value; }
  /** Reads one tensor's bytes (a fresh buffer). */
  readTensor(_name: string): Uint8Array { throw new Error('not implemented'); }
  /** Positioned read of [offset, offset+length) into `into` (or a new buffer). */
  readRange(_offset: number, _length: number, _into?: Uint8Array): Uint8Array { throw new Error('not implemented'); }
  close(): void {}
}
