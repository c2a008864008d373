// Byte sizes from the command line (--ram-cache) and the default RAM cache budget.
import { freemem } from 'node:os';
import { readFileSync } from 'node:fs';
import { UsageError } from '../model/errors.js';
import { formatBytes } from '../model/bytes.js';

export { formatBytes };

const UNITS: Readonly<Record<string, number>> = {
  '': 1, b: 1,
  kb: 1e3, kib: 2 ** 10,
  mb: 1e6, mib: 2 ** 20,
  gb: 1e9, gib: 2 ** 30,
  tb: 1e12, tib: 2 ** 40,
};

export const SIZE_FORMS =
  'a byte count (300000), a size with a unit (512MiB, 4GiB, 1.5GB; units B, KB/KiB, MB/MiB, GB/GiB, TB/TiB, ' +
  'KB = 1000 and KiB = 1024) or a percentage of all expert bytes (25%)';

/**
 * Parses '512MiB', '4GiB', '1.5GB', '300000' or '25%' (of opts.totalBytes) into whole bytes (rounded
 * down). Units are case-insensitive; a space between number and unit is allowed.
 */
export function parseSize(text: string, opts: { totalBytes?: number; what?: string } = {}): number {
  const what = opts.what ?? 'size';
  const bad = (why: string) => new UsageError(`bad ${what} '${text}': ${why}`, `give ${SIZE_FORMS}`);
  const m = /^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*|%)\s*$/i.exec(text);
  if (!m) throw bad('not a size');
  // Exact decimal arithmetic: '33.3%' of 1000 is 333, not 332 from 33.3 / 100 * 1000 in floating point.
  const [intPart, fracPart = ''] = m[1]!.split('.');
  const mantissa = BigInt(`${intPart}${fracPart}` || '0');
  const denominator = 10n ** BigInt(fracPart.length);
  const unit = m[2]!.toLowerCase();
  let bytes: bigint;
  if (unit === '%') {
    if (mantissa > 100n * denominator) throw bad('a percentage above 100');
    if (opts.totalBytes === undefined) throw bad('a percentage needs the model (it is a share of all expert bytes)');
    bytes = (mantissa * BigInt(Math.floor(opts.totalBytes))) / (100n * denominator);
  } else {
    const scale = UNITS[unit];
    if (scale === undefined) throw bad(`unknown unit '${m[2]}'`);
    bytes = (mantissa * BigInt(scale)) / denominator; // BigInt division rounds down
  }
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw bad('too large');
  const whole = Number(bytes);
  return whole;
}

const GiB = 2 ** 30;

/** One line for --help: how the default --ram-cache is chosen. */
export const DEFAULT_RAM_CACHE_HELP = 'available memory (MemAvailable, else free memory) minus max(1 GiB, 10%)';

/** Memory the kernel says can be allocated without swapping: MemAvailable from /proc/meminfo, else os.freemem(). */
export function availableMemoryBytes(meminfo?: string): number {
  let text = meminfo;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/meminfo', 'utf8');
    } catch {
      return freemem();
    }
  }
  const m = /^MemAvailable:\s+(\d+)\s*kB/m.exec(text);
  return m ? Number(m[1]) * 1024 : freemem();
}

/**
 * Default RAM cache budget: available memory minus a margin of max(1 GiB, 10% of it), so that the rest
 * of the process (resident weights, KV cache, workers) and the system keep room; never below 0.
 */
export function defaultRamCacheBytes(available: number = availableMemoryBytes()): number {
  return Math.max(0, Math.floor(available - Math.max(GiB, available * 0.1)));
}
