// GGUF v2/v3 writer (little endian). Used by the fixture generator, `convert` and tests; the layout is
// the one src/model/gguf.ts reads: header, key/value pairs, tensor infos, padding, aligned tensor data.
import { closeSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { bytesFor, typeInfo, typeName, type GGMLType } from './ggml-types.js';
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_SCALAR_SIZE, GGUFValueType, type GGUFValue } from './gguf.js';


interface KeyValue {
  type: GGUFValueType;
  value: GGUFValue;
  /** Element type of an array. ARRAY means nested arrays whose element types are inferred. */
  arrayType?: GGUFValueType;
}

interface PendingTensor {
  name: string;
  dims: number[];
  type: GGMLType;
  data: Uint8Array;
}

const INT_RANGE: Partial<Record<GGUFValueType, [number, number]>> = {
  [GGUFValueType.UINT8]: [0, 0xff], [GGUFValueType.INT8]: [-0x80, 0x7f],
  [GGUFValueType.UINT16]: [0, 0xffff], [GGUFValueType.INT16]: [-0x8000, 0x7fff],
  [GGUFValueType.UINT32]: [0, 0xffffffff], [GGUFValueType.INT32]: [-0x80000000, 0x7fffffff],
};

const encoder = new TextEncoder();

/** Appends little-endian values to a growing byte buffer. */
class ByteSink {
  private buf = new Uint8Array(4096);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private reserve(n: number): number {
    const at = this.length;
    if (at + n > this.buf.length) {
      const bigger = new Uint8Array(Math.max(this.buf.length * 2, at + n));
      bigger.set(this.buf.subarray(0, at));
      this.buf = bigger;
      this.view = new DataView(bigger.buffer);
    }
    this.length += n;
    return at;
  }
  // reserve() may replace buf and view, so it always runs before they are read.
  bytes(b: Uint8Array): void { const at = this.reserve(b.length); this.buf.set(b, at); }
  zeros(n: number): void { const at = this.reserve(n); this.buf.fill(0, at, this.length); }
  u32(n: number): void { const at = this.reserve(4); this.view.setUint32(at, n, true); }
  u64(n: number | bigint): void { const at = this.reserve(8); this.view.setBigUint64(at, BigInt(n), true); }
  string(s: string): void { const b = encoder.encode(s); this.u64(b.length); this.bytes(b); }

  scalar(type: GGUFValueType, v: GGUFValue, key: string): void {
    const range = INT_RANGE[type];
    if (range) {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < range[0] || v > range[1]) {
        throw new RangeError(`GGUF key ${key}: ${String(v)} does not fit ${GGUFValueType[type]}`);
      }
    }
    const size = GGUF_SCALAR_SIZE[type];
    const at = size === undefined ? 0 : this.reserve(size);
    const view = this.view;
    switch (type) {
      case GGUFValueType.UINT8: view.setUint8(at, v as number); break;
      case GGUFValueType.INT8: view.setInt8(at, v as number); break;
      case GGUFValueType.UINT16: view.setUint16(at, v as number, true); break;
      case GGUFValueType.INT16: view.setInt16(at, v as number, true); break;
      case GGUFValueType.UINT32: view.setUint32(at, v as number, true); break;
      case GGUFValueType.INT32: view.setInt32(at, v as number, true); break;
      case GGUFValueType.FLOAT32: view.setFloat32(at, expectNumber(v, key), true); break;
      case GGUFValueType.FLOAT64: view.setFloat64(at, expectNumber(v, key), true); break;
      case GGUFValueType.BOOL:
        if (typeof v !== 'boolean') throw new TypeError(`GGUF key ${key}: expected a boolean, got ${typeof v}`);
        view.setUint8(at, v ? 1 : 0);
        break;
      case GGUFValueType.UINT64: view.setBigUint64(at, expectInteger(v, key), true); break;
      case GGUFValueType.INT64: view.setBigInt64(at, expectInteger(v, key), true); break;
      case GGUFValueType.STRING:
        if (typeof v !== 'string') throw new TypeError(`GGUF key ${key}: expected a string, got ${typeof v}`);
        this.string(v);
        break;
      default: throw new TypeError(`GGUF key ${key}: ${String(type)} is not a scalar value type`);
    }
  }

  array(elemType: GGUFValueType, arr: GGUFValue, key: string): void {
    if (!Array.isArray(arr)) throw new TypeError(`GGUF key ${key}: expected an array`);
    this.u32(elemType);
    this.u64(arr.length);
    for (const item of arr) {
      if (elemType === GGUFValueType.ARRAY) this.array(inferElementType(item, key), item, key);
      else this.scalar(elemType, item, key);
    }
  }

  take(): Uint8Array { return this.buf.subarray(0, this.length); }
}

function expectNumber(v: GGUFValue, key: string): number {
  if (typeof v !== 'number') throw new TypeError(`GGUF key ${key}: expected a number, got ${typeof v}`);
  return v;
}

function expectInteger(v: GGUFValue, key: string): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number' && Number.isSafeInteger(v)) return BigInt(v);
  throw new TypeError(`GGUF key ${key}: expected an integer or bigint, got ${String(v)}`);
}

/**
 * Element type of an inner array of a nested array, from its first element: string -> STRING,
 * boolean -> BOOL, bigint -> INT64, array -> ARRAY, integer -> INT32, other number -> FLOAT32.
 * Use setNestedArray to choose the types explicitly.
 */
function inferElementType(arr: GGUFValue, key: string): GGUFValueType {
  if (!Array.isArray(arr)) throw new TypeError(`GGUF key ${key}: nested array element is not an array`);
  const first = arr[0];
  if (first === undefined || typeof first === 'string') return GGUFValueType.STRING;
  if (typeof first === 'boolean') return GGUFValueType.BOOL;
  if (typeof first === 'bigint') return GGUFValueType.INT64;
  if (Array.isArray(first)) return GGUFValueType.ARRAY;
  return arr.every((x) => Number.isInteger(x)) ? GGUFValueType.INT32 : GGUFValueType.FLOAT32;
}

export class GGUFWriter {
  private readonly kv = new Map<string, KeyValue>();
  private readonly tensors: PendingTensor[] = [];
  private readonly version: 2 | 3;
  private readonly alignmentOption: number | undefined;

  /**
   * alignment: of the tensor data; when it is not the GGUF default (32) and general.alignment is not
   * set explicitly, the writer adds general.alignment so readers find it.
   */
  constructor(opts: { alignment?: number; version?: 2 | 3 } = {}) {
    this.version = opts.version ?? 3;
    if (opts.alignment !== undefined) checkAlignment(opts.alignment);
    this.alignmentOption = opts.alignment;
  }

  set(key: string, type: GGUFValueType, value: GGUFValue, arrayType?: GGUFValueType): void {
    if (type === GGUFValueType.ARRAY && arrayType === undefined) {
      throw new TypeError(`GGUF key ${key}: an array needs its element type`);
    }
    if (GGUF_SCALAR_SIZE[type] === undefined && type !== GGUFValueType.STRING && type !== GGUFValueType.ARRAY) {
      throw new TypeError(`GGUF key ${key}: unknown value type ${String(type)}`);
    }
    // Encode once now so a bad value fails at the call that supplied it, not at toBuffer().
    const probe = new ByteSink();
    if (type === GGUFValueType.ARRAY) probe.array(arrayType!, value, key);
    else probe.scalar(type, value, key);
    this.kv.set(key, type === GGUFValueType.ARRAY ? { type, value, arrayType } : { type, value });
  }

  setString(key: string, s: string): void { this.set(key, GGUFValueType.STRING, s); }
  setU32(key: string, n: number): void { this.set(key, GGUFValueType.UINT32, n); }
  setI32(key: string, n: number): void { this.set(key, GGUFValueType.INT32, n); }
  setF32(key: string, n: number): void { this.set(key, GGUFValueType.FLOAT32, n); }
  setBool(key: string, b: boolean): void { this.set(key, GGUFValueType.BOOL, b); }
  setStringArray(key: string, arr: string[]): void { this.set(key, GGUFValueType.ARRAY, arr, GGUFValueType.STRING); }
  setArray(key: string, elemType: GGUFValueType, arr: GGUFValue[]): void {
    this.set(key, GGUFValueType.ARRAY, arr, elemType);
  }

  /** Adds a tensor; dims in ggml order (dims[0] = row length). data must be exactly the tensor's bytes. */
  addTensor(name: string, dims: number[], type: GGMLType, data: Uint8Array): void {
    if (this.tensors.some((t) => t.name === name)) throw new Error(`duplicate tensor name ${name}`);
    const info = typeInfo(type);
    if (!info) throw new RangeError(`tensor ${name}: unknown ggml type ${type}`);
    if (dims.length < 1 || dims.length > 4 || dims.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      throw new RangeError(`tensor ${name}: bad dims [${dims.join(', ')}]`);
    }
    if (dims[0]! % info.blockSize !== 0) {
      throw new RangeError(`tensor ${name}: row length ${dims[0]} is not a multiple of the ${typeName(type)} block size ${info.blockSize}`);
    }
    const elements = dims.reduce((a, b) => a * b, 1);
    const expected = bytesFor(type, elements);
    if (data.byteLength !== expected) {
      throw new RangeError(`tensor ${name}: ${data.byteLength} bytes given, ${typeName(type)} [${dims.join(', ')}] needs ${expected}`);
    }
    this.tensors.push({ name, dims: [...dims], type, data });
  }

  /** The alignment the file will use: general.alignment if set, else the constructor option, else 32. */
  get alignment(): number {
    const explicit = this.kv.get('general.alignment')?.value;
    if (typeof explicit === 'number') return explicit;
    if (typeof explicit === 'bigint') return Number(explicit);
    return this.alignmentOption ?? GGUF_DEFAULT_ALIGNMENT;
  }

  /** Everything up to (and including) the padding before the data section, plus each tensor's relative offset. */
  private header(): { header: Uint8Array; offsets: number[]; dataBytes: number } {
    const alignment = this.alignment;
    checkAlignment(alignment);
    const kv = new Map(this.kv);
    if (!kv.has('general.alignment') && alignment !== GGUF_DEFAULT_ALIGNMENT) {
      kv.set('general.alignment', { type: GGUFValueType.UINT32, value: alignment });
    }
    const out = new ByteSink();
    out.u32(GGUF_MAGIC);
    out.u32(this.version);
    out.u64(this.tensors.length);
    out.u64(kv.size);
    for (const [key, e] of kv) {
      out.string(key);
      out.u32(e.type);
      if (e.type === GGUFValueType.ARRAY) out.array(e.arrayType!, e.value, key);
      else out.scalar(e.type, e.value, key);
    }
    const offsets: number[] = [];
    let rel = 0;
    for (const t of this.tensors) {
      out.string(t.name);
      out.u32(t.dims.length);
      for (const d of t.dims) out.u64(d);
      out.u32(t.type);
      out.u64(rel);
      offsets.push(rel);
      rel = alignUp(rel + t.data.byteLength, alignment);
    }
    out.zeros(alignUp(out.length, alignment) - out.length);
    return { header: out.take(), offsets, dataBytes: rel };
  }

  toBuffer(): Uint8Array {
    const { header, offsets, dataBytes } = this.header();
    const file = new Uint8Array(header.length + dataBytes); // zero-filled, so padding is zeros
    file.set(header, 0);
    this.tensors.forEach((t, i) => file.set(t.data, header.length + offsets[i]!));
    return file;
  }

  /** Writes the file atomically: a temp file in the same directory, renamed over `path` when complete. */
  write(path: string): void {
    const { header, offsets, dataBytes } = this.header();
    const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now()}.tmp`);
    const fd = openSync(tmp, 'w');
    try {
      writeAll(fd, header, 0);
      let end = header.length;
      this.tensors.forEach((t, i) => {
        const at = header.length + offsets[i]!;
        if (at > end) writeAll(fd, new Uint8Array(at - end), end);
        writeAll(fd, t.data, at);
        end = at + t.data.byteLength;
      });
      const total = header.length + dataBytes;
      if (total > end) writeAll(fd, new Uint8Array(total - end), end);
      closeSync(fd);
      renameSync(tmp, path);
    } catch (err) {
      try { closeSync(fd); } catch { /* already closed */ }
      rmSync(tmp, { force: true });
      throw err;
    }
  }
}

function writeAll(fd: number, data: Uint8Array, position: number): void {
  let done = 0;
  while (done < data.byteLength) {
    done += writeSync(fd, data, done, data.byteLength - done, position + done);
  }
}

function checkAlignment(a: number): void {
  if (!Number.isInteger(a) || a <= 0 || (a & (a - 1)) !== 0) {
    throw new RangeError(`GGUF alignment must be a positive power of two, got ${a}`);
  }
}

export function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}
