// Number and size values of command-line options, parsed in one place so that every command rejects a
// bad value the same way: a UsageError "bad --option 'value': why; give <what is accepted>" (exit 2,
// see run-command.ts). Commander hands option values over as strings; actions parse them with these.
import { UsageError } from '../model/errors.js';
import { parseSize } from '../experts/size.js';

function bad(option: string, text: string, why: string, accepted: string): UsageError {
  return new UsageError(`bad ${option} '${text}': ${why}`, `give ${accepted}`);
}

/** A whole number (decimal digits, optional sign) from min to max. */
export function parseInteger(option: string, text: string, min: number, max: number = Number.MAX_SAFE_INTEGER): number {
  const accepted = max === Number.MAX_SAFE_INTEGER ? `a whole number of ${min} or more` : `a whole number from ${min} to ${max}`;
  if (!/^\s*[+-]?\d+\s*$/.test(text)) throw bad(option, text, 'not a whole number', accepted);
  const n = Number(text);
  if (n < min) throw bad(option, text, `less than ${min}`, accepted);
  if (n > max || !Number.isSafeInteger(n)) throw bad(option, text, `more than ${max}`, accepted);
  return n;
}

/** A whole number of 1 or more (at most max). */
export function parsePositiveInt(option: string, text: string, max?: number): number {
  return parseInteger(option, text, 1, max);
}

/** A whole number of 0 or more (at most max). */
export function parseNonNegativeInt(option: string, text: string, max?: number): number {
  return parseInteger(option, text, 0, max);
}

export interface NumberRange {
  min: number;
  max: number;
  /** min itself is not allowed. */
  minExclusive?: boolean;
  /** The range as the hint states it after 'a number', e.g. 'from 0 (greedy) to 100'. */
  describe?: string;
}

/** A decimal number (optional sign, fraction and exponent; no hex, no Infinity) within range. */
export function parseNumber(option: string, text: string, range: NumberRange): number {
  const { min, max, minExclusive = false } = range;
  const accepted = `a number ${range.describe ?? (minExclusive ? `above ${min} and at most ${max}` : `from ${min} to ${max}`)}`;
  if (!/^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$/.test(text)) throw bad(option, text, 'not a number', accepted);
  const n = Number(text);
  if (n < min || (minExclusive && n === min)) throw bad(option, text, minExclusive ? `not above ${min}` : `less than ${min}`, accepted);
  if (n > max) throw bad(option, text, `more than ${max}`, accepted);
  return n;
}

/** '4,16,64' -> [4, 16, 64]: positive whole numbers, deduplicated, ascending. */
export function parseIntList(option: string, text: string): number[] {
  const out: number[] = [];
  for (const part of text.split(',').map((p) => p.trim())) {
    if (!/^\d+$/.test(part) || !Number.isSafeInteger(Number(part)) || Number(part) < 1) {
      throw bad(option, text, `'${part}' is not a whole number of 1 or more`, 'a comma-separated list such as 4,16,64');
    }
    out.push(Number(part));
  }
  return [...new Set(out)].sort((a, b) => a - b);
}

/** A byte size or a percentage of totalBytes (SIZE_FORMS), in whole bytes; experts/size.ts parses it. */
export function parseSizeOption(option: string, text: string, totalBytes?: number): number {
  return parseSize(text, { what: option, ...(totalBytes !== undefined ? { totalBytes } : {}) });
}

/**
 * Rejects a size that is malformed whatever it is a share of (bad number or unit, a percentage above
 * 100), so that a command can say so before it opens a model that gives the total.
 */
export function checkSizeForm(option: string, text: string): void {
  parseSize(text, { what: option, totalBytes: 0 });
}

/** --expert-bytes: the bytes of one expert, at least 1 (undefined when not given). */
export function parseExpertBytes(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const b = parseSizeOption('--expert-bytes', text);
  if (b < 1) throw bad('--expert-bytes', text, 'less than 1 byte', 'the bytes of one expert, e.g. 3MiB');
  return b;
}
