// Single-thread memory read bandwidth: the native sumBytes over a buffer far larger than the last-level
// cache. It is the ceiling a one-token matmul on one core can reach, since it must read every weight once.
import { sumBytes } from '../src/native/index.js';
import { summarize, timePasses, type RepeatOptions, type Summary } from './stats.js';

export interface BandwidthResult {
  bufferBytes: number;
  gbps: Summary;
  /** GB/s of each timed pass, so measurements taken at different times can be pooled. */
  passes: number[];
}

/** Pools two measurements (e.g. before and after the kernels) so machine drift during a run averages out. */
export function poolBandwidth(a: BandwidthResult, b: BandwidthResult): BandwidthResult {
  const passes = [...a.passes, ...b.passes];
  return { bufferBytes: a.bufferBytes, gbps: summarize(passes), passes };
}

export async function measureReadBandwidth(bufferBytes: number, options: RepeatOptions): Promise<BandwidthResult> {
  const buf = new Uint8Array(bufferBytes);
  // Write every page: untouched zero pages may all map one physical page and read from cache.
  for (let i = 0; i < buf.length; i += 4096) buf[i] = (i >> 12) & 0xff;
  let sink = 0;
  const seconds = await timePasses(() => { sink += sumBytes(buf); }, options);
  if (!Number.isFinite(sink)) throw new Error('sumBytes returned a non-number');
  const passes = seconds.map((sec) => bufferBytes / sec / 1e9);
  return { bufferBytes, gbps: summarize(passes), passes };
}
