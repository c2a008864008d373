// Per-layer f32 K and V of every evaluated position, laid out [pos][kv_head][head_dim]. Storage grows by
// doubling up to the context length, so short sequences on long-context models stay small.

export class KVCache {
  readonly layers: number;
  /** n_head_kv * head_dim: values per position per layer. */
  readonly rowSize: number;
  readonly maxLength: number;
  private capacity = 0;
  private readonly k: Float32Array[] = [];
  private readonly v: Float32Array[] = [];

  constructor(layers: number, rowSize: number, maxLength: number) {
    this.layers = layers;
    this.rowSize = rowSize;
    this.maxLength = maxLength;
    for (let l = 0; l < layers; l++) {
      this.k.push(new Float32Array(0));
      this.v.push(new Float32Array(0));
    }
  }

  /** Makes room for positions [0, length). */
  reserve(length: number): void {
    if (length <= this.capacity) return;
    if (length > this.maxLength) throw new RangeError(`KV cache: ${length} positions exceed the maximum ${this.maxLength}`);
    const cap = Math.min(this.maxLength, Math.max(length, this.capacity * 2, 16));
    for (let l = 0; l < this.layers; l++) {
      const k = new Float32Array(cap * this.rowSize);
      const v = new Float32Array(cap * this.rowSize);
      k.set(this.k[l]!);
      v.set(this.v[l]!);
      this.k[l] = k;
      this.v[l] = v;
    }
    this.capacity = cap;
  }

  /** Stores `n` positions of K and V (row-major, rowSize each) at positions [start, start+n). */
  write(layer: number, start: number, n: number, k: Float32Array, v: Float32Array): void {
    this.reserve(start + n);
    this.k[layer]!.set(k.subarray(0, n * this.rowSize), start * this.rowSize);
    this.v[layer]!.set(v.subarray(0, n * this.rowSize), start * this.rowSize);
  }

  keys(layer: number): Float32Array { return this.k[layer]!; }
  values(layer: number): Float32Array { return this.v[layer]!; }
}
