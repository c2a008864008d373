// GGUF v2/v3 reader: metadata, tensor index, positioned reads only. The header is parsed through a
// small read window that grows on demand (vocab arrays can make headers tens of MB); tensor data is
// never read unless asked for.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { bytesFor, typeInfo, typeName, type GGMLType } from './ggml-types.js';
import { FileAccessError, GGUFFormatError, ModelError, UnsupportedError } from './errors.js';

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

/** 'GGUF' read as a little-endian u32. */
export const GGUF_MAGIC = 0x46554747;
export const GGUF_DEFAULT_ALIGNMENT = 32;
const MAX_DIMS = 4; // GGML_MAX_DIMS
const MAX_NESTING = 64;
const WINDOW = 1 << 20;
const NOT_GGUF_HINT = 'check that --model points to a .gguf model file';
const TRUNCATED_HINT = 'the file is probably truncated (an incomplete download?); download or convert it again';

/** Bytes of each fixed-size value type (the writer shares it). */
export const GGUF_SCALAR_SIZE: Partial<Record<number, number>> = {
  [GGUFValueType.UINT8]: 1, [GGUFValueType.INT8]: 1, [GGUFValueType.UINT16]: 2, [GGUFValueType.INT16]: 2,
  [GGUFValueType.UINT32]: 4, [GGUFValueType.INT32]: 4, [GGUFValueType.FLOAT32]: 4, [GGUFValueType.BOOL]: 1,
  [GGUFValueType.UINT64]: 8, [GGUFValueType.INT64]: 8, [GGUFValueType.FLOAT64]: 8,
};

/** Smallest encoding of one value of a type, to reject counts that cannot fit in the file. */
function minValueSize(type: GGUFValueType): number {
  if (type === GGUFValueType.STRING) return 8;
  if (type === GGUFValueType.ARRAY) return 12;
  return GGUF_SCALAR_SIZE[type]!;
}

/** Sequential little-endian reads through a window of positioned reads; throws on reads past EOF. */
class HeaderCursor {
  pos = 0;
  /** Bytes fetched from the file so far (the header plus at most one window beyond it). */
  bytesRead = 0;
  private win = new Uint8Array(0);
  private view = new DataView(this.win.buffer);
  private winStart = 0;
  private readonly decoder = new TextDecoder('utf-8');

  constructor(private readonly fd: number, readonly fileSize: number, private readonly path: string) {}

  get remaining(): number { return this.fileSize - this.pos; }

  /** Makes [pos, pos+n) available in the window; returns its index in the window. */
  private need(n: number): number {
    if (this.pos + n > this.fileSize) {
      throw new GGUFFormatError(`${this.path}: truncated header at byte ${this.pos} (file is ${this.fileSize} bytes)`, TRUNCATED_HINT);
    }
    const at = this.pos - this.winStart;
    if (at >= 0 && at + n <= this.view.byteLength) return at;
    const size = Math.min(Math.max(WINDOW, n), this.fileSize - this.pos);
    if (this.win.length < size) this.win = new Uint8Array(size);
    let got = 0;
    while (got < size) {
      const r = readSync(this.fd, this.win, got, size - got, this.pos + got);
      if (r === 0) throw new GGUFFormatError(`${this.path}: truncated header at byte ${this.pos + got}`, TRUNCATED_HINT);
      got += r;
    }
    this.bytesRead += size;
    this.view = new DataView(this.win.buffer, 0, size);
    this.winStart = this.pos;
    return 0;
  }

  private take(n: number): number { const at = this.need(n); this.pos += n; return at; }
  // take() may replace the window, so it runs before this.view is read.
  u8(): number { const at = this.take(1); return this.view.getUint8(at); }
  i8(): number { const at = this.take(1); return this.view.getInt8(at); }
  u16(): number { const at = this.take(2); return this.view.getUint16(at, true); }
  i16(): number { const at = this.take(2); return this.view.getInt16(at, true); }
  u32(): number { const at = this.take(4); return this.view.getUint32(at, true); }
  i32(): number { const at = this.take(4); return this.view.getInt32(at, true); }
  f32(): number { const at = this.take(4); return this.view.getFloat32(at, true); }
  f64(): number { const at = this.take(8); return this.view.getFloat64(at, true); }
  u64(): bigint { const at = this.take(8); return this.view.getBigUint64(at, true); }
  i64(): bigint { const at = this.take(8); return this.view.getBigInt64(at, true); }

  /** A u64 count or length that must fit in the rest of the file at `unit` bytes each. */
  count(what: string, unit: number): number {
    const at = this.pos;
    const n = this.u64();
    if (n * BigInt(unit) > BigInt(this.remaining)) {
      throw new GGUFFormatError(
        `${this.path}: truncated or corrupt header: ${what} ${n} at byte ${at} needs more than the ${this.remaining} bytes left in the file`,
        TRUNCATED_HINT);
    }
    return Number(n);
  }

  string(what: string): string {
    const len = this.count(`${what} length`, 1);
    const at = this.take(len);
    return this.decoder.decode(this.win.subarray(at, at + len));
  }
}

interface ParsedHeader {
  headerBytesRead: number;
  version: number;
  alignment: number;
  dataOffset: number;
  metadata: Map<string, GGUFMetadataEntry>;
  tensors: Map<string, GGUFTensorInfo>;
}

function readValue(c: HeaderCursor, type: GGUFValueType, key: string, depth: number): GGUFValue {
  switch (type) {
    case GGUFValueType.UINT8: return c.u8();
    case GGUFValueType.INT8: return c.i8();
    case GGUFValueType.UINT16: return c.u16();
    case GGUFValueType.INT16: return c.i16();
    case GGUFValueType.UINT32: return c.u32();
    case GGUFValueType.INT32: return c.i32();
    case GGUFValueType.FLOAT32: return c.f32();
    case GGUFValueType.FLOAT64: return c.f64();
    case GGUFValueType.UINT64: return c.u64();
    case GGUFValueType.INT64: return c.i64();
    case GGUFValueType.BOOL: {
      const at = c.pos;
      const b = c.u8();
      if (b > 1) throw new GGUFFormatError(`${key}: bad boolean byte ${b} at byte ${at}`, 'the file is corrupt');
      return b === 1;
    }
    case GGUFValueType.STRING: return c.string(`string value of ${key}`);
    case GGUFValueType.ARRAY: return readArray(c, key, depth).value;
    default: throw new GGUFFormatError(`${key}: unknown value type ${String(type)} at byte ${c.pos - 4}`, 'the file is corrupt or from a newer GGUF version');
  }
}

function readValueType(c: HeaderCursor, key: string): GGUFValueType {
  const at = c.pos;
  const t = c.u32();
  if (t > GGUFValueType.FLOAT64) {
    throw new GGUFFormatError(`metadata key ${key}: unknown value type ${t} at byte ${at}`, 'the file is corrupt or from a newer GGUF version');
  }
  return t;
}

function readArray(c: HeaderCursor, key: string, depth: number): { arrayType: GGUFValueType; value: GGUFValue[] } {
  if (depth >= MAX_NESTING) throw new GGUFFormatError(`metadata key ${key}: arrays nested more than ${MAX_NESTING} deep`, 'the file is corrupt');
  const arrayType = readValueType(c, key);
  const n = c.count(`element count of ${key}`, minValueSize(arrayType));
  const value = new Array<GGUFValue>(n);
  for (let i = 0; i < n; i++) value[i] = readValue(c, arrayType, key, depth + 1);
  return { arrayType, value };
}

function toSafeNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new GGUFFormatError(`${what} ${v} is too large`, 'the file is corrupt');
  return Number(v);
}

function parseHeader(fd: number, fileSize: number, path: string): ParsedHeader {
  if (fileSize < 4) {
    throw new GGUFFormatError(`${path}: not a GGUF file (only ${fileSize} bytes)`, NOT_GGUF_HINT);
  }
  const c = new HeaderCursor(fd, fileSize, path);
  const magic = c.u32();
  if (magic !== GGUF_MAGIC) {
    const bytes = [0, 8, 16, 24].map((s) => (magic >>> s) & 0xff);
    const hex = bytes.map((b) => b.toString(16).padStart(2, '0')).join(' ');
    const text = bytes.map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    throw new GGUFFormatError(`${path}: not a GGUF file (magic ${hex} "${text}", expected 47 47 55 46 "GGUF")`, NOT_GGUF_HINT);
  }
  const version = c.u32();
  if (version !== 2 && version !== 3) {
    const swapped = ((version & 0xff) << 24 | (version & 0xff00) << 8 | (version >>> 8) & 0xff00 | version >>> 24) >>> 0;
    if (swapped === 2 || swapped === 3) {
      throw new UnsupportedError(`${path}: big-endian GGUF files are not supported`, 'use the little-endian version of the model');
    }
    throw new UnsupportedError(`${path}: GGUF version ${version} is not supported (this tool reads versions 2 and 3)`,
      version < 2 ? 'convert the model again with a current llama.cpp' : 'update moe-offload, or convert the model with an older llama.cpp');
  }
  // Each tensor info takes at least 8+4+8+4+8 bytes, each key/value at least 8+4+1.
  const tensorCount = c.count('tensor count', 32);
  const kvCount = c.count('metadata key count', 13);

  const metadata = new Map<string, GGUFMetadataEntry>();
  for (let i = 0; i < kvCount; i++) {
    const key = c.string('metadata key');
    if (metadata.has(key)) throw new GGUFFormatError(`${path}: duplicate metadata key ${key}`, 'the file is corrupt');
    const type = readValueType(c, key);
    if (type === GGUFValueType.ARRAY) {
      const { arrayType, value } = readArray(c, key, 0);
      metadata.set(key, { type, arrayType, value });
    } else {
      metadata.set(key, { type, value: readValue(c, type, key, 0) });
    }
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const alignEntry = metadata.get('general.alignment');
  if (alignEntry) {
    const a = alignEntry.value;
    const n = typeof a === 'bigint' ? Number(a) : a;
    if (typeof n !== 'number' || !Number.isInteger(n) || n <= 0 || (n & (n - 1)) !== 0 || n > 2 ** 30) {
      throw new GGUFFormatError(`${path}: general.alignment is ${String(a)}, not a positive power of two`, 'the file is corrupt');
    }
    alignment = n;
  }

  const infos: { name: string; dims: number[]; type: GGMLType; rel: number; elements: number; byteLength: number }[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = c.string('tensor name');
    if (seen.has(name)) throw new GGUFFormatError(`${path}: duplicate tensor name ${name}`, 'the file is corrupt');
    seen.add(name);
    const nDimsAt = c.pos;
    const nDims = c.u32();
    if (nDims < 1 || nDims > MAX_DIMS) {
      throw new GGUFFormatError(`${path}: tensor ${name} has ${nDims} dimensions at byte ${nDimsAt} (1 to ${MAX_DIMS} allowed)`, 'the file is corrupt');
    }
    const dims: number[] = [];
    let elements = 1;
    for (let d = 0; d < nDims; d++) {
      const dim = toSafeNumber(c.u64(), `tensor ${name} dimension`);
      dims.push(dim);
      elements *= dim;
      if (!Number.isSafeInteger(elements)) throw new GGUFFormatError(`${path}: tensor ${name} has too many elements [${dims.join(', ')}]`, 'the file is corrupt');
    }
    const type = c.u32();
    const info = typeInfo(type);
    if (!info) {
      throw new UnsupportedError(`${path}: tensor ${name} has ggml type id ${type}, which this tool does not know`,
        'the model uses a tensor type newer than moe-offload; use a model quantized to a common type (e.g. Q4_K_M, Q8_0)');
    }
    if (dims[0]! % info.blockSize !== 0) {
      throw new GGUFFormatError(`${path}: tensor ${name} row length ${dims[0]} is not a multiple of the ${typeName(type)} block size ${info.blockSize}`, 'the file is corrupt');
    }
    const rel = toSafeNumber(c.u64(), `tensor ${name} offset`);
    if (rel % alignment !== 0) {
      throw new GGUFFormatError(`${path}: tensor ${name} data offset ${rel} is not a multiple of the alignment ${alignment}`, 'the file is corrupt');
    }
    infos.push({ name, dims, type, rel, elements, byteLength: bytesFor(type, elements) });
  }

  const dataOffset = Math.ceil(c.pos / alignment) * alignment;
  const tensors = new Map<string, GGUFTensorInfo>();
  for (const t of infos) {
    const offset = dataOffset + t.rel;
    if (offset + t.byteLength > fileSize) {
      throw new GGUFFormatError(
        `${path}: tensor ${t.name} ends at byte ${offset + t.byteLength}, past the end of the file (${fileSize} bytes)`, TRUNCATED_HINT);
    }
    tensors.set(t.name, { name: t.name, dims: t.dims, type: t.type, offset, byteLength: t.byteLength, elements: t.elements });
  }
  return { headerBytesRead: c.bytesRead, version, alignment, dataOffset, metadata, tensors };
}

function openError(path: string, err: unknown): FileAccessError {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT') return new FileAccessError(`model file not found: ${path}`, 'check the path (and that the download finished)');
  if (code === 'EACCES' || code === 'EPERM') return new FileAccessError(`cannot read ${path}: permission denied`, 'check the file permissions');
  if (code === 'EISDIR') return new FileAccessError(`${path} is a directory, not a model file`, 'pass the path of the .gguf file itself');
  const msg = err instanceof Error ? err.message : String(err);
  return new FileAccessError(`cannot open ${path}: ${msg}`, 'check the path and permissions');
}

export class GGUFFile implements MetadataSource {
  readonly path: string;
  readonly version: number;
  readonly alignment: number;
  /** Absolute offset of the tensor data section. */
  readonly dataOffset: number;
  readonly fileSize: number;
  readonly metadata: Map<string, GGUFMetadataEntry>;
  /** In file order. */
  readonly tensors: Map<string, GGUFTensorInfo>;
  /** Bytes open() read to parse the header (header reads are windowed; tensor data is not read). */
  readonly headerBytesRead: number;
  private fd: number;

  private constructor(path: string, fd: number, fileSize: number, h: ParsedHeader) {
    this.path = path;
    this.fd = fd;
    this.fileSize = fileSize;
    this.version = h.version;
    this.alignment = h.alignment;
    this.dataOffset = h.dataOffset;
    this.metadata = h.metadata;
    this.tensors = h.tensors;
    this.headerBytesRead = h.headerBytesRead;
  }

  /** Opens and parses the header with positioned reads; never reads tensor data. */
  static open(path: string): GGUFFile {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (err) {
      throw openError(path, err);
    }
    try {
      const st = fstatSync(fd);
      if (st.isDirectory()) throw openError(path, Object.assign(new Error('is a directory'), { code: 'EISDIR' }));
      if (!st.isFile()) throw new FileAccessError(`${path} is not a regular file`, 'pass the path of the .gguf file itself');
      return new GGUFFile(path, fd, st.size, parseHeader(fd, st.size, path));
    } catch (err) {
      closeSync(fd);
      if (err instanceof Error && (err as NodeJS.ErrnoException).code) throw openError(path, err);
      throw err;
    }
  }

  get(key: string): GGUFValue | undefined { return this.metadata.get(key)?.value; }

  /** The tensor's info, or a ModelError naming it. */
  tensor(name: string): GGUFTensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new ModelError(`tensor ${name} not found in ${this.path}`, 'the file does not match its architecture, or is not a complete model');
    return t;
  }

  /** Reads one tensor's bytes (a fresh buffer). */
  readTensor(name: string): Uint8Array {
    const t = this.tensor(name);
    return this.readRange(t.offset, t.byteLength);
  }

  /**
   * Positioned read of [offset, offset+length) into `into` (or a new buffer). Returns a view of exactly
   * `length` bytes (of `into` when given). Loops over short reads; end of file first is a GGUFFormatError.
   */
  readRange(offset: number, length: number, into?: Uint8Array): Uint8Array {
    if (this.fd < 0) throw new Error(`${this.path}: read after close`);
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new RangeError(`bad read range offset=${offset} length=${length}`);
    }
    if (into && into.byteLength < length) throw new RangeError(`buffer of ${into.byteLength} bytes is too small for ${length}`);
    const buf = into ? into.subarray(0, length) : new Uint8Array(length);
    let got = 0;
    while (got < length) {
      const r = readSync(this.fd, buf, got, length - got, offset + got);
      if (r === 0) {
        throw new GGUFFormatError(`${this.path}: unexpected end of file at byte ${offset + got} (wanted bytes up to ${offset + length})`, TRUNCATED_HINT);
      }
      got += r;
    }
    return buf;
  }

  close(): void {
    if (this.fd >= 0) {
      closeSync(this.fd);
      this.fd = -1;
    }
  }
}

// ---- accessors for metadata: missing required keys and wrong types become ModelErrors ----

function describe(v: GGUFValue): string {
  return Array.isArray(v) ? `an array of ${v.length}` : `${typeof v} ${String(v)}`;
}

function missing(key: string): ModelError {
  return new ModelError(`missing required key ${key}`, 'the model file lacks metadata its architecture needs; convert it again with a current llama.cpp');
}

function wrongType(key: string, want: string, v: GGUFValue): ModelError {
  return new ModelError(`metadata key ${key} should be ${want}, found ${describe(v)}`, 'the model file is inconsistent; convert it again');
}

/** `v` (the value read for `key`) unless it is absent: then a ModelError 'missing required key'. */
function present<T>(key: string, v: T | undefined): T {
  if (v === undefined) throw missing(key);
  return v;
}

/** The value of `key`, or a ModelError 'missing required key'. */
export function requireKey(src: MetadataSource, key: string): GGUFValue {
  return present(key, src.get(key));
}

/** A numeric key (any integer or float type; bigint converted when safe), or undefined when absent. */
export function getNumber(src: MetadataSource, key: string): number | undefined {
  const v = src.get(key);
  if (v === undefined) return undefined;
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint' && v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  throw wrongType(key, 'a number', v);
}

export function requireNumber(src: MetadataSource, key: string): number {
  return present(key, getNumber(src, key));
}

/** A non-negative integer key (counts, lengths, ids), or undefined when absent. */
export function getU32(src: MetadataSource, key: string): number | undefined {
  const n = getNumber(src, key);
  if (n === undefined) return undefined;
  if (!Number.isInteger(n) || n < 0) throw wrongType(key, 'a non-negative integer', n);
  return n;
}

export function requireU32(src: MetadataSource, key: string): number {
  return present(key, getU32(src, key));
}

export function getString(src: MetadataSource, key: string): string | undefined {
  const v = src.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw wrongType(key, 'a string', v);
  return v;
}

export function requireString(src: MetadataSource, key: string): string {
  return present(key, getString(src, key));
}

export function getBool(src: MetadataSource, key: string): boolean | undefined {
  const v = src.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw wrongType(key, 'a boolean', v);
  return v;
}

export function getArray(src: MetadataSource, key: string): GGUFValue[] | undefined {
  const v = src.get(key);
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) throw wrongType(key, 'an array', v);
  return v;
}

export function requireArray(src: MetadataSource, key: string): GGUFValue[] {
  return present(key, getArray(src, key));
}

/** A MetadataSource over a plain object or map (tests, the fixture generator). */
export function metadataFrom(values: Record<string, GGUFValue> | Map<string, GGUFValue>): MetadataSource {
  const m = values instanceof Map ? values : new Map(Object.entries(values));
  return { get: (key) => m.get(key) };
}

/** Bytes of one row (dims[0] values) of a tensor. */
export function tensorRowBytes(t: Pick<GGUFTensorInfo, 'dims' | 'type'>): number {
  return bytesFor(t.type, t.dims[0]!);
}

/** Number of rows: all elements / row length. */
export function tensorRows(t: Pick<GGUFTensorInfo, 'dims'>): number {
  return t.dims.slice(1).reduce((a, b) => a * b, 1);
}
