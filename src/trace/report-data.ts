// What `moe-offload report` computes from a loaded trace, as one plain object (printed as a table, as
// JSON, or drawn by html.ts).
import { formatBytes } from '../model/bytes.js';
import type { LoadedTrace, PrefetchStats, TierStats } from './load.js';
import { tokenCount } from './routing.js';
import {
  CACHE_POLICIES, expertUsage, lruHitRateFromReuse, lruReuse, policyHitRates, sch, srp,
  type CachePolicy, type HitRates, type LayerAndModel, type SchResult, type SrpResult,
} from './metrics.js';

export interface Recommendation {
  /** The policy and counting the target is judged under: the live RAM cache's. */
  policy: 'lru';
  counting: 'cold';
  target: number;
  /** Smallest shared cache (experts, all layers together) reaching the target; null if none does. */
  experts: number | null;
  /** The same as experts per layer (rounded up). */
  expertsPerLayer: number | null;
  /** Its bytes, when the expert size is known. */
  bytes: number | null;
  /** Hit rate reached at that size (or with every expert cached, when the target is out of reach). */
  hitRate: number;
}

export interface ReportData {
  trace: {
    path: string;
    format: 'moe-offload-trace' | 'import';
    model: string | null;
    architecture: string | null;
    sequences: number;
    tokens: number;
    layers: number;
    experts: number;
    k: number;
    expertBytes: number | null;
    truncated: boolean;
  };
  segments: number[];
  cacheSizes: number[];
  srp: Record<string, SrpResult>;
  sch: Record<string, Record<string, SchResult>>;
  /** policies[policy][C]: hit rates with C experts per layer (model: one shared cache of C x layers). */
  policies: Record<CachePolicy, Record<string, HitRates>>;
  /** Cold LRU hit rate per cache size C = 1..E experts per layer: lruCurve.layers[l][C-1], lruCurve.model[C-1]. */
  lruCurve: { layers: number[][]; model: number[] };
  recommendation: Recommendation;
  /** usage[l][e]: tokens whose layer-l selection contains e. */
  usage: number[][];
  tiers: TierStats | null;
  /** Prefetch accuracy (issued, used by the layer read for, wasted) when the trace records prefetches. */
  prefetch: PrefetchStats | null;
}

export interface ReportOptions {
  segments: number[];
  /** Experts per layer; default k, 2k, 4k, 8k capped at E. */
  cacheSizes?: number[];
  targetHitRate: number;
  expertBytes?: number;
}

export function defaultCacheSizes(k: number, experts: number): number[] {
  return [...new Set([k, 2 * k, 4 * k, 8 * k].map((c) => Math.min(c, experts)))];
}

export function computeReport(t: LoadedTrace, opts: ReportOptions): ReportData {
  const r = t.routing;
  const cacheSizes = opts.cacheSizes ?? defaultCacheSizes(r.k, r.experts);
  const out: ReportData = {
    trace: {
      path: t.path,
      format: t.header ? 'moe-offload-trace' : 'import',
      model: t.header?.model ?? null,
      architecture: t.header?.architecture ?? null,
      sequences: r.sequences.length,
      tokens: tokenCount(r),
      layers: r.layers,
      experts: r.experts,
      k: r.k,
      expertBytes: opts.expertBytes ?? t.header?.expert_bytes ?? null,
      truncated: t.truncated,
    },
    segments: opts.segments,
    cacheSizes,
    srp: {},
    sch: {},
    policies: { lru: {}, lfu: {}, belady: {} },
    lruCurve: { layers: [], model: [] },
    recommendation: { policy: 'lru', counting: 'cold', target: opts.targetHitRate, experts: null, expertsPerLayer: null, bytes: null, hitRate: NaN },
    usage: expertUsage(r),
    tiers: t.tiers,
    prefetch: t.prefetch,
  };
  for (const m of opts.segments) {
    out.srp[m] = srp(r, m);
    out.sch[m] = {};
    for (const C of cacheSizes) out.sch[m]![C] = sch(r, m, C);
  }
  for (const p of CACHE_POLICIES) for (const C of cacheSizes) out.policies[p][C] = policyHitRates(r, p, C);
  const reuse = lruReuse(r);
  for (let C = 1; C <= r.experts; C++) out.lruCurve.model.push(lruHitRateFromReuse(reuse.model, C * r.layers));
  out.lruCurve.layers = reuse.layers.map((h) => Array.from({ length: r.experts }, (_, i) => lruHitRateFromReuse(h, i + 1)));
  // Smallest shared LRU cache, in experts over all layers, that reaches the target (cold counting).
  const rec = out.recommendation;
  const all = r.layers * r.experts;
  const hist = reuse.model.hist;
  let hits = 0;
  for (let cap = 1; cap <= all; cap++) {
    hits += hist[cap - 1]!;
    const rate = hits / reuse.model.accesses;
    if (rate >= opts.targetHitRate - 1e-12) {
      rec.experts = cap;
      rec.expertsPerLayer = Math.ceil(cap / r.layers);
      rec.hitRate = rate;
      if (out.trace.expertBytes !== null) rec.bytes = cap * out.trace.expertBytes;
      break;
    }
    if (cap === all) rec.hitRate = rate;
  }
  return out;
}

/** JSON with NaN (no windows, no data) as null. */
export function reportJson(d: ReportData): string {
  return JSON.stringify(d, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v));
}

function median(xs: number[]): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
}

const f3 = (x: number) => (Number.isNaN(x) ? '  -  ' : x.toFixed(3));

function spread(v: LayerAndModel): string[] {
  const ok = v.layers.filter((x) => !Number.isNaN(x));
  return [f3(v.model), f3(ok.length ? Math.min(...ok) : NaN), f3(median(v.layers)), f3(ok.length ? Math.max(...ok) : NaN)];
}

function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => `  ${r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ')}`;
  return [line(head), ...rows.map(line)].join('\n');
}

export function recommendationText(d: ReportData): string {
  const r = d.recommendation;
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  if (r.experts === null) {
    return `no cache size reaches a ${pct(r.target)} hit rate under LRU (cold): caching every expert gives ${pct(r.hitRate)} (first uses always miss)`;
  }
  const bytes = r.bytes !== null ? ` = ${formatBytes(r.bytes)}` : ' (give --expert-bytes for the size in bytes)';
  return `smallest RAM cache reaching ${pct(r.target)} hits under LRU, cold counting (the live cache's policy): ` +
    `${r.experts} experts over all ${d.trace.layers} layers (about ${r.expertsPerLayer} per layer)${bytes}; it hits ${pct(r.hitRate)}`;
}

/** One line of prefetch accuracy: issued, used (selected by the layer it was read for), wasted. */
export function prefetchText(p: PrefetchStats): string {
  const t = p.total;
  const share = t.issued > 0 ? ` (${(100 * t.used / t.issued).toFixed(1)}% accurate)` : '';
  return `${t.issued} expert reads issued, ${t.used} used by the layer they were read for, ${t.wasted} wasted${share}; ` +
    `per layer used/issued: ${p.layers.map((c) => `${c.used}/${c.issued}`).join(' ')}`;
}

export function formatReportText(d: ReportData): string {
  const t = d.trace;
  const out: string[] = [];
  const what = t.format === 'import' ? 'import layout' : `${t.model ?? '?'} (${t.architecture ?? '?'})`;
  out.push(`trace ${t.path}: ${what}; ${t.sequences} sequences, ${t.tokens} tokens, ${t.layers} MoE layers, ${t.experts} experts, top-${t.k}${t.truncated ? '; cut off (interrupted recording), complete lines used' : ''}`);
  out.push('');
  out.push('SRP(m), segment routing best performance (model: M, P, A pooled over layers; group = best group size / k-selection)');
  out.push(table(['m', 'model', 'layer min', 'median', 'max', 'group'], d.segments.map((m) => {
    const s = d.srp[m]!;
    return [String(m), ...spread(s), f3(s.groupSize.model)];
  })));
  out.push('');
  out.push('SCH(m, C), segment cache best hit rate, warm counting (C experts per layer; model: one cache of C x layers)');
  const schRows: string[][] = [];
  for (const m of d.segments) for (const C of d.cacheSizes) schRows.push([`${m}`, `${C} (${(C / t.k).toFixed(C % t.k ? 1 : 0)}k)`, ...spread(d.sch[m]![C]!)]);
  out.push(table(['m', 'C', 'model', 'layer min', 'median', 'max'], schRows));
  out.push('');
  out.push('Cache policies, model level (C experts per layer; one shared cache of C x layers); warm = first uses excused while the cache has room, cold = cache starts empty');
  out.push(table(['C', 'LRU warm', 'LRU cold', 'LFU warm', 'LFU cold', 'MIN warm', 'MIN cold'], d.cacheSizes.map((C) => [
    `${C} (${(C / t.k).toFixed(C % t.k ? 1 : 0)}k)`,
    ...CACHE_POLICIES.flatMap((p) => [f3(d.policies[p][C]!.warm.model), f3(d.policies[p][C]!.cold.model)]),
  ])));
  if (d.tiers) {
    out.push('');
    out.push('Served from (all layers): ' + ['gpu', 'ram', 'disk'].map((name, i) => {
      const n = d.tiers!.counts.reduce((s, c) => s + c[i]!, 0);
      const all = d.tiers!.counts.reduce((s, c) => s + c[0]! + c[1]! + c[2]!, 0);
      const us = d.tiers!.stallUs.reduce((s, c) => s + c[i]!, 0);
      return `${name} ${(100 * n / all).toFixed(1)}% (stall ${(us / 1e3).toFixed(1)} ms)`;
    }).join(', '));
  }
  if (d.prefetch) {
    out.push('');
    out.push(`Prefetch: ${prefetchText(d.prefetch)}`);
  }
  out.push('');
  out.push(`Recommendation: ${recommendationText(d)}`);
  return out.join('\n');
}
