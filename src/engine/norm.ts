// RMSNorm as ggml computes it: the mean of squares summed in double, one float scale per row.

/**
 * For each of the `rows` rows of `dim` values in x (row-major): out = x / sqrt(mean(x^2) + eps) * weight.
 * `weight` (dim values) is optional; `out` may be `x` (in place).
 */
export function rmsNorm(x: Float32Array, rows: number, dim: number, eps: number,
  weight: Float32Array | undefined, out: Float32Array = x): Float32Array {
  for (let r = 0; r < rows; r++) {
    const base = r * dim;
    let sum = 0;
    for (let i = 0; i < dim; i++) sum += x[base + i]! * x[base + i]!;
    const scale = Math.fround(1 / Math.sqrt(sum / dim + eps));
    if (weight) {
      for (let i = 0; i < dim; i++) out[base + i] = Math.fround(x[base + i]! * scale) * weight[i]!;
    } else {
      for (let i = 0; i < dim; i++) out[base + i] = x[base + i]! * scale;
    }
  }
  return out;
}
