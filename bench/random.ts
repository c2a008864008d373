// Seeded pseudo-random numbers (the project's mulberry32) so benchmark weights and test inputs are reproducible.
import { mulberry32 } from '../src/engine/prng.js';

export const seededRandom = mulberry32;

/** `count` values uniform in [-1, 1). */
export function randomFloats(count: number, seed: number): Float32Array {
  const next = seededRandom(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = next() * 2 - 1;
  return out;
}
