// Single-thread memory read bandwidth: the native sumBytes over a buffer far larger than the last-level
// cache. It is the ceiling a one-token matmul on one core can reach, since it must read every weight once.
import { sumBytes } from '../src/native/index.js';
import { throughputs, timePasses, type RepeatOptions, type Summary } from './stats.js';

export interface BandwidthResult {
  bufferBytes: number;
  gbps: Summary;
}

export async function measureReadBandwidth(bufferBytes: number, options: RepeatOptions): Promise<BandwidthResult> {
  const buf = new Uint8Array(bufferBytes);
  // Write every page: untouched zero pages may all map one physical page and read from cache.
  for (let i = 0; i < buf.length; i += 4096) buf[i] = (i >> 12) & 0xff;
  let sink = 0;
  const seconds = await timePasses(() => { sink += sumBytes(buf); }, options);
  if (!Number.isFinite(sink)) throw new Error('sumBytes returned a non-number');
  return { bufferBytes, gbps: throughputs(bufferBytes, seconds) };
}
