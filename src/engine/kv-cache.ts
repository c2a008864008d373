// Per-layer K and V of every evaluated position, laid out [pos][kv_head][head_dim], stored as f16 (IEEE
// half bits in a Uint16Array, llama.cpp's default cache type: half the bytes to keep and to read in every
// decode step) or f32. Storage grows by doubling up to the context length, so short sequences on
// long-context models stay small.
import { storeF16 } from '../native/index.js';
import { UsageError } from '../model/errors.js';

/** The KV cache's element type (llama.cpp's -ctk/-ctv f16 or f32). */
export type KVType = 'f16' | 'f32';

/** One layer's K or V storage: f32 values, or f16 bits. */
export type KVArray = Float32Array | Uint16Array;

/** `type` if it is a KV cache type; throws UsageError otherwise. */
export function checkKVType(type: unknown): KVType {
  if (type === 'f16' || type === 'f32') return type;
  throw new UsageError(`unknown KV cache type '${String(type)}'`, "use 'f16' (the default) or 'f32'");
}

export class KVCache {
  readonly layers: number;
  /** n_head_kv * head_dim: values per position per layer. */
  readonly rowSize: number;
  readonly maxLength: number;
  readonly type: KVType;
  private capacity = 0;
  private readonly k: KVArray[] = [];
  private readonly v: KVArray[] = [];

  constructor(layers: number, rowSize: number, maxLength: number, type: KVType = 'f16') {
    this.type = checkKVType(type);
    this.layers = layers;
    this.rowSize = rowSize;
    this.maxLength = maxLength;
    for (let l = 0; l < layers; l++) {
      this.k.push(this.alloc(0));
      this.v.push(this.alloc(0));
    }
  }

  private alloc(values: number): KVArray {
    return this.type === 'f16' ? new Uint16Array(values) : new Float32Array(values);
  }

  /** Makes room for positions [0, length). */
  reserve(length: number): void {
    if (length <= this.capacity) return;
    if (length > this.maxLength) throw new RangeError(`KV cache: ${length} positions exceed the maximum ${this.maxLength}`);
    const cap = Math.min(this.maxLength, Math.max(length, this.capacity * 2, 16));
    for (let l = 0; l < this.layers; l++) {
      const k = this.alloc(cap * this.rowSize);
      const v = this.alloc(cap * this.rowSize);
      k.set(this.k[l]!);
      v.set(this.v[l]!);
      this.k[l] = k;
      this.v[l] = v;
    }
    this.capacity = cap;
  }

  /**
   * Stores `n` positions of K and V (row-major f32, rowSize each) at positions [start, start+n); the f16
   * cache rounds them to nearest even.
   */
  write(layer: number, start: number, n: number, k: Float32Array, v: Float32Array): void {
    this.reserve(start + n);
    const count = n * this.rowSize, at = start * this.rowSize;
    const kd = this.k[layer]!, vd = this.v[layer]!;
    if (kd instanceof Uint16Array) {
      storeF16(k, kd, at, count);
      storeF16(v, vd as Uint16Array, at, count);
    } else {
      kd.set(k.subarray(0, count), at);
      (vd as Float32Array).set(v.subarray(0, count), at);
    }
  }

  keys(layer: number): KVArray { return this.k[layer]!; }
  values(layer: number): KVArray { return this.v[layer]!; }

  /** Bytes of K and V storage held now, over all layers. */
  bytes(): number {
    let sum = 0;
    for (let l = 0; l < this.layers; l++) sum += this.k[l]!.byteLength + this.v[l]!.byteLength;
    return sum;
  }
}
