// Trace analysis speed (issue 4): a synthetic, seeded routing trace of 1M token-layers (64 experts,
// top-8) written in our trace format, then timed: reading it, the report's SRP/SCH grid, and simulate's
// three policies at one cache size. The routing has locality (each token keeps each of the previous
// token's experts in a layer with probability 0.5), so caches behave as on a real trace, not uniform noise.
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { TraceWriter } from '../src/trace/format.js';
import { loadTrace } from '../src/trace/load.js';
import { sch, srp, CACHE_POLICIES } from '../src/trace/metrics.js';
import { simulateTrace } from '../src/trace/simulate.js';
import { seededRandom } from './random.js';
import { summarize, type Summary } from './stats.js';

export interface TraceBenchSettings {
  layers: number;
  tokens: number;
  experts: number;
  k: number;
  /** Probability that a token keeps each of the previous token's experts (per layer). */
  keep: number;
  seed: number;
  segments: number[];
  cacheSizes: number[];
  /** Experts per layer of the cache simulate replays (the shared cache holds this x layers). */
  simulateCachePerLayer: number;
  /** Timed passes per line (median reported). */
  passes: number;
}

export interface TraceBenchLine {
  name: string;
  seconds: Summary;
  /** Token-layers processed per second (median pass). */
  tokenLayersPerSecond: number;
  /** What the line computed, for a sanity look (e.g. the model-level SRP of the first segment length). */
  value?: number;
}

export interface TraceBenchResult {
  settings: TraceBenchSettings;
  fileBytes: number;
  writeSeconds: number;
  lines: TraceBenchLine[];
  /** Median seconds of SRP + SCH over the whole grid, and the target for it. */
  metricsSeconds: number;
  metricsTargetSeconds: number;
}

export const METRICS_TARGET_SECONDS = 10;

export function defaultTraceSettings(quick: boolean): TraceBenchSettings {
  return {
    layers: 16, tokens: 62_500, experts: 64, k: 8, keep: 0.5, seed: 20250521,
    segments: [4, 16, 64], cacheSizes: [8, 16, 32, 64], simulateCachePerLayer: 16, passes: quick ? 1 : 3,
  };
}

/** Writes the synthetic trace to `file`: one sequence, with router weights (4 decimals, as a size stand-in). */
function writeSyntheticTrace(file: string, s: TraceBenchSettings): void {
  const next = seededRandom(s.seed);
  const w = TraceWriter.create(file, {
    model: 'synthetic', architecture: 'synthetic', layers: s.layers, experts: s.experts, k: s.k, shared_experts: 0,
    prompt_ids: [], expert_bytes: 3 * 2 ** 20,
  });
  let prev: number[][] = Array.from({ length: s.layers }, () => []);
  const chosen = new Uint8Array(s.experts);
  for (let t = 0; t < s.tokens; t++) {
    const experts: number[][] = [];
    const weights: number[][] = [];
    for (let l = 0; l < s.layers; l++) {
      chosen.fill(0);
      const sel: number[] = [];
      for (const e of prev[l]!) {
        if (next() < s.keep) {
          sel.push(e);
          chosen[e] = 1;
        }
      }
      while (sel.length < s.k) {
        const e = Math.floor(next() * s.experts);
        if (!chosen[e]) {
          chosen[e] = 1;
          sel.push(e);
        }
      }
      // Router order: shuffle, then weights in descending order.
      for (let i = sel.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [sel[i], sel[j]] = [sel[j]!, sel[i]!];
      }
      const raw = sel.map(() => next()).sort((a, b) => b - a);
      const sum = raw.reduce((a, b) => a + b, 0);
      experts.push(sel);
      weights.push(raw.map((x) => Math.round((x / sum) * 1e4) / 1e4));
    }
    w.token({ seq: 0, pos: t, experts, weights });
    prev = experts;
  }
  w.close();
}

async function timed<T>(passes: number, fn: () => T | Promise<T>): Promise<{ seconds: Summary; value: T }> {
  const seconds: number[] = [];
  let value!: T;
  for (let i = 0; i < passes; i++) {
    const start = process.hrtime.bigint();
    value = await fn();
    seconds.push(Number(process.hrtime.bigint() - start) / 1e9);
  }
  return { seconds: summarize(seconds), value };
}

export async function benchTrace(s: TraceBenchSettings, progress: (msg: string) => void): Promise<TraceBenchResult> {
  const dir = mkdtempSync(path.join(tmpdir(), 'moe-trace-bench-'));
  try {
    const file = path.join(dir, 'synthetic.trace.jsonl.gz');
    const tokenLayers = s.tokens * s.layers;
    progress(`trace: writing ${s.tokens} tokens x ${s.layers} layers (${tokenLayers} token-layers, ${s.experts} experts, top-${s.k})`);
    const w0 = process.hrtime.bigint();
    writeSyntheticTrace(file, s);
    const writeSeconds = Number(process.hrtime.bigint() - w0) / 1e9;
    const lines: TraceBenchLine[] = [];
    const line = (name: string, seconds: Summary, value?: number): void => {
      lines.push({ name, seconds, tokenLayersPerSecond: tokenLayers / seconds.median, ...(value !== undefined ? { value } : {}) });
    };

    progress('trace: reading');
    const read = await timed(s.passes, () => loadTrace(file));
    line('read (gunzip, parse, check)', read.seconds);
    const r = read.value.routing;

    progress(`trace: SRP at m = ${s.segments.join(', ')}; SCH at m x C = ${s.segments.join(', ')} x ${s.cacheSizes.join(', ')}`);
    const metricSamples: number[] = [];
    let firstSrp = NaN;
    for (let pass = 0; pass < s.passes; pass++) {
      const start = process.hrtime.bigint();
      for (const m of s.segments) {
        const v = srp(r, m).model;
        if (m === s.segments[0]) firstSrp = v;
      }
      for (const m of s.segments) for (const C of s.cacheSizes) sch(r, m, C);
      metricSamples.push(Number(process.hrtime.bigint() - start) / 1e9);
    }
    const metrics = summarize(metricSamples);
    line(`SRP x${s.segments.length} + SCH x${s.segments.length * s.cacheSizes.length} (report grid)`, metrics, firstSrp);
    for (const m of s.segments) line(`  SRP m=${m}`, (await timed(s.passes, () => srp(r, m))).seconds);
    const midM = s.segments[s.segments.length >> 1]!;
    for (const C of s.cacheSizes) line(`  SCH m=${midM} C=${C}`, (await timed(s.passes, () => sch(r, midM, C))).seconds);

    const cap = s.simulateCachePerLayer * s.layers;
    for (const policy of CACHE_POLICIES) {
      progress(`trace: simulate ${policy}, ${cap} experts shared`);
      const t = await timed(s.passes, () => simulateTrace(r, policy, cap, null));
      line(`simulate ${policy} (${s.simulateCachePerLayer}/layer)`, t.seconds, t.value.hitRate.cold);
    }
    return { settings: s, fileBytes: statSync(file).size, writeSeconds, lines, metricsSeconds: metrics.median, metricsTargetSeconds: METRICS_TARGET_SECONDS };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function traceTable(t: TraceBenchResult): string {
  const s = t.settings;
  const out: string[] = [];
  out.push(`trace analysis bench: synthetic trace, ${s.tokens} tokens x ${s.layers} layers = ${s.tokens * s.layers} token-layers, `
    + `${s.experts} experts, top-${s.k}, keep ${s.keep}; ${(t.fileBytes / 2 ** 20).toFixed(1)} MiB gzipped, written in ${t.writeSeconds.toFixed(2)} s`);
  out.push(`median of ${s.passes} pass(es); value = model SRP at m=${s.segments[0]} / simulate cold hit rate`);
  const rows = [['step', 's', 'min', 'max', 'token-layers/s', 'value']];
  for (const l of t.lines) {
    rows.push([l.name, l.seconds.median.toFixed(3), l.seconds.min.toFixed(3), l.seconds.max.toFixed(3),
      `${(l.tokenLayersPerSecond / 1e6).toFixed(2)}M`, l.value === undefined ? '' : l.value.toFixed(4)]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  for (const r of rows) out.push(r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ').trimEnd());
  const met = t.metricsSeconds <= t.metricsTargetSeconds;
  out.push(`SRP/SCH grid: ${t.metricsSeconds.toFixed(2)} s, target < ${t.metricsTargetSeconds} s: ${met ? 'met' : 'NOT met'}`);
  return `${out.join('\n')}\n`;
}
