// The project's one seeded pseudo-random generator (mulberry32): small, fast and the same on every
// platform, so a --seed reproduces a run and the fixture generator, benchmarks and tests reproduce too.

/** Returns a generator of uniform numbers in [0, 1) seeded with the u32 `seed`. */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
