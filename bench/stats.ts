// Timing helpers: warm up, then time repeated passes; summarize by median (robust on a shared, noisy
// machine) with min and max for spread.

export interface Summary {
  median: number;
  min: number;
  max: number;
  samples: number;
}

export function summarize(values: number[]): Summary {
  if (values.length === 0) throw new RangeError('no samples');
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]!, samples: sorted.length };
}

export interface RepeatOptions {
  /** Untimed passes first (page faults, caches, lazy init). */
  warmup: number;
  /** Timed passes at least. */
  reps: number;
  /** Keep timing passes until this much time was spent (capped at 4 * reps passes). */
  minSeconds: number;
}

/** Seconds per call of `pass`, one sample per timed pass. */
export async function timePasses(pass: () => void | Promise<void>, options: RepeatOptions): Promise<number[]> {
  for (let i = 0; i < options.warmup; i++) await pass();
  const seconds: number[] = [];
  let spent = 0;
  while (seconds.length < options.reps || (spent < options.minSeconds && seconds.length < 4 * options.reps)) {
    const start = process.hrtime.bigint();
    await pass();
    const s = Number(process.hrtime.bigint() - start) / 1e9;
    seconds.push(s);
    spent += s;
  }
  return seconds;
}

/** GB/s (10^9 bytes per second) for each timed pass that moved `bytes`. */
export function throughputs(bytes: number, seconds: number[]): Summary {
  return summarize(seconds.map((s) => bytes / s / 1e9));
}

/** Seconds per call of two passes timed in adjacent pairs: sample i of `a` and of `b` come from pass i. */
export interface PairedSeconds {
  a: number[];
  b: number[];
}

/**
 * Times `a` and `b` interleaved: pass i runs both back to back, `a` first on even passes and `b` first
 * on odd ones (so neither side always inherits the other's cache or frequency state). On a shared
 * machine the load changes over seconds, so a ratio taken within one pair cancels it where a ratio of
 * two separately measured medians does not.
 */
export async function timePairedPasses(a: () => void | Promise<void>, b: () => void | Promise<void>,
  options: RepeatOptions): Promise<PairedSeconds> {
  for (let i = 0; i < options.warmup; i++) { await a(); await b(); }
  const out: PairedSeconds = { a: [], b: [] };
  const time = async (pass: () => void | Promise<void>): Promise<number> => {
    const start = process.hrtime.bigint();
    await pass();
    return Number(process.hrtime.bigint() - start) / 1e9;
  };
  let spent = 0;
  while (out.a.length < options.reps || (spent < options.minSeconds && out.a.length < 4 * options.reps)) {
    let sa: number;
    let sb: number;
    if (out.a.length % 2 === 0) { sa = await time(a); sb = await time(b); } else { sb = await time(b); sa = await time(a); }
    out.a.push(sa);
    out.b.push(sb);
    spent += sa + sb;
  }
  return out;
}

/**
 * Throughput ratio of `a` to `b` per pair, (aBytes / a[i]) / (bBytes / b[i]), summarized: the median of
 * paired ratios, not a ratio of medians.
 */
export function pairedRatios(aBytes: number, bBytes: number, paired: PairedSeconds): Summary {
  return summarize(paired.a.map((sa, i) => (aBytes / sa) / (bBytes / paired.b[i]!)));
}
