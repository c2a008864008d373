// The plain JSONL import layout, one object per token, so traces of models or tools we do not run can be
// analysed:
//
//   {"seq": 0, "pos": 5, "experts": [[3, 17], [8, 2], ...], "weights": [[0.6, 0.4], ...]}
//
// experts[l] is MoE layer l's selection in router order; "weights" (router weights), "tier" ("gpu" |
// "ram" | "disk" per selected expert) and "stall_us" are optional and have the same shape as "experts".
// Files may be plain or gzipped. Our own trace format (format.ts) is these lines after a header line.
// The expert count comes from --experts N or the largest id seen + 1.
import { UsageError } from '../model/errors.js';

export type Tier = 'gpu' | 'ram' | 'disk';
export const TIERS: readonly Tier[] = ['gpu', 'ram', 'disk'];

export interface TokenRecord {
  seq: number;
  pos: number;
  /** experts[l] = layer l's selected expert ids in router order. */
  experts: number[][];
  weights?: number[][];
  /** Where each selected expert was served from. */
  tier?: Tier[][];
  /** Microseconds the token waited for each selected expert's weights. */
  stall_us?: number[][];
}

const HINT = 'each line must be {"seq": N, "pos": N, "experts": [[ids of layer 0], [ids of layer 1], ...]} with optional "weights"';

function bad(where: string, what: string): UsageError {
  return new UsageError(`${where}: ${what}`, HINT);
}

function nonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0;
}

/** Checks that `v` is an array of arrays shaped like `experts` whose items pass `ok`. */
function sameShape<T>(v: unknown, experts: number[][], ok: (x: unknown) => x is T, name: string, where: string): T[][] {
  if (!Array.isArray(v) || v.length !== experts.length) throw bad(where, `"${name}" must have one array per layer (${experts.length})`);
  v.forEach((row, l) => {
    if (!Array.isArray(row) || row.length !== experts[l]!.length) throw bad(where, `"${name}"[${l}] must have ${experts[l]!.length} entries like "experts"[${l}]`);
    row.forEach((x, j) => {
      if (!ok(x)) throw bad(where, `"${name}"[${l}][${j}] is ${JSON.stringify(x)}`);
    });
  });
  return v as T[][];
}

/** Validates one parsed token line; `where` ("file:line") prefixes error messages. */
export function parseTokenLine(obj: unknown, where: string): TokenRecord {
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw bad(where, 'not a JSON object');
  const o = obj as Record<string, unknown>;
  if (!nonNegInt(o.seq)) throw bad(where, `"seq" must be a non-negative integer, got ${JSON.stringify(o.seq)}`);
  if (!nonNegInt(o.pos)) throw bad(where, `"pos" must be a non-negative integer, got ${JSON.stringify(o.pos)}`);
  const ex = o.experts;
  if (!Array.isArray(ex) || ex.length === 0) throw bad(where, '"experts" must be a non-empty array with one selection per layer');
  ex.forEach((sel, l) => {
    if (!Array.isArray(sel) || sel.length === 0) throw bad(where, `"experts"[${l}] must be a non-empty array of expert ids`);
    sel.forEach((e, j) => {
      if (!nonNegInt(e)) throw bad(where, `"experts"[${l}][${j}] is ${JSON.stringify(e)}, not an expert id`);
    });
  });
  const experts = ex as number[][];
  const rec: TokenRecord = { seq: o.seq, pos: o.pos, experts };
  const num = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);
  if (o.weights !== undefined) rec.weights = sameShape(o.weights, experts, num, 'weights', where);
  if (o.tier !== undefined) rec.tier = sameShape(o.tier, experts, (x): x is Tier => TIERS.includes(x as Tier), 'tier', where);
  if (o.stall_us !== undefined) rec.stall_us = sameShape(o.stall_us, experts, (x): x is number => num(x) && x >= 0, 'stall_us', where);
  return rec;
}
