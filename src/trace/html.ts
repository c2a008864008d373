// `report --html`: one self-contained page (inline SVG and CSS, no scripts, no network) with the plots
// of a ReportData: SCH against cache size per layer, SRP against segment length, hit rate per layer
// (and per tier when the trace recorded tiers), expert usage per layer, and the recommendation.
import type { ReportData } from './report-data.js';
import { prefetchText, recommendationText } from './report-data.js';

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

interface Series {
  name: string;
  ys: number[];
  /** Thick line for model-level series, thin for layers. */
  strong?: boolean;
  color: string;
}

/** A color per layer, spread over the hue circle. */
const layerColor = (l: number, L: number) => `hsl(${Math.round((300 * l) / Math.max(1, L - 1))} 60% 50% / 0.55)`;

function lineChart(title: string, xs: number[], series: Series[], xLabel: string, yLabel: string, logX = false): string {
  const W = 460;
  const H = 280;
  const left = 48;
  const right = 12;
  const top = 28;
  const bottom = 40;
  const fx = logX ? Math.log2 : (x: number) => x;
  const x0 = fx(Math.min(...xs));
  const x1 = fx(Math.max(...xs));
  const px = (x: number) => left + (x1 === x0 ? (W - left - right) / 2 : ((fx(x) - x0) / (x1 - x0)) * (W - left - right));
  const py = (y: number) => top + (1 - y) * (H - top - bottom);
  const parts: string[] = [];
  parts.push(`<text x="${W / 2}" y="16" class="title">${esc(title)}</text>`);
  for (let i = 0; i <= 4; i++) {
    const y = i / 4;
    parts.push(`<line x1="${left}" x2="${W - right}" y1="${py(y)}" y2="${py(y)}" class="grid"/><text x="${left - 6}" y="${py(y) + 4}" class="tick" text-anchor="end">${y.toFixed(2)}</text>`);
  }
  const every = Math.ceil(xs.length / 12);
  xs.forEach((x, i) => {
    if (i % every === 0 ? xs.length - 1 - i >= every / 2 || i === xs.length - 1 : i === xs.length - 1) parts.push(`<text x="${px(x)}" y="${H - bottom + 16}" class="tick" text-anchor="middle">${x}</text>`);
  });
  parts.push(`<text x="${W / 2}" y="${H - 6}" class="axis">${esc(xLabel)}</text>`);
  parts.push(`<text x="12" y="${H / 2}" class="axis" transform="rotate(-90 12 ${H / 2})">${esc(yLabel)}</text>`);
  // A legend when several series are drawn strong (e.g. one per cache size).
  const strong = series.filter((s) => s.strong);
  if (strong.length > 1) strong.forEach((s, i) => parts.push(`<rect x="${left + 8 + i * 70}" y="${py(0) - 16}" width="10" height="10" fill="${s.color}"/><text x="${left + 22 + i * 70}" y="${py(0) - 7}" class="tick">${esc(s.name)}</text>`));
  const ordered = [...series.filter((s) => !s.strong), ...series.filter((s) => s.strong)];
  for (const s of ordered) {
    const pts = xs.map((x, i) => [x, s.ys[i]!] as const).filter(([, y]) => Number.isFinite(y));
    if (pts.length === 0) continue;
    const d = pts.map(([x, y], i) => `${i ? 'L' : 'M'}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join('');
    parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="${s.strong ? 3 : 1.2}"><title>${esc(s.name)}</title></path>`);
    if (s.strong) for (const [x, y] of pts) parts.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3.5" fill="${s.color}"><title>${esc(`${s.name}: ${y.toFixed(3)} at ${x}`)}</title></circle>`);
  }
  return `<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(title)}">${parts.join('')}</svg>`;
}

function layerSeries(layers: number[][], L: number, model: number[], modelName: string): Series[] {
  return [
    ...layers.map((ys, l) => ({ name: `layer ${l}`, ys, color: layerColor(l, L) })),
    { name: modelName, ys: model, strong: true, color: '#111' },
  ];
}

/** Stacked bars per layer: share of selections served from each tier. */
function tierChart(d: ReportData): string {
  const t = d.tiers!;
  const L = t.counts.length;
  const W = 940;
  const H = 240;
  const left = 48;
  const top = 28;
  const bottom = 36;
  const bw = (W - left - 12) / L;
  const colors = ['#2a9d8f', '#e9c46a', '#e76f51'];
  const names = ['gpu', 'ram', 'disk'];
  const parts: string[] = [`<text x="${W / 2}" y="16" class="title">Served from, per layer (gpu / ram / disk share of selections)</text>`];
  t.counts.forEach((c, l) => {
    const all = c[0]! + c[1]! + c[2]! || 1;
    let y = top;
    c.forEach((n, i) => {
      const h = (n / all) * (H - top - bottom);
      parts.push(`<rect x="${(left + l * bw + 1).toFixed(1)}" y="${y.toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${h.toFixed(1)}" fill="${colors[i]}"><title>layer ${l} ${names[i]}: ${(100 * n / all).toFixed(1)}%, stall ${(t.stallUs[l]![i]! / 1e3).toFixed(1)} ms</title></rect>`);
      y += h;
    });
    if (L <= 48 || l % 4 === 0) parts.push(`<text x="${(left + (l + 0.5) * bw).toFixed(1)}" y="${H - bottom + 14}" class="tick" text-anchor="middle">${l}</text>`);
  });
  names.forEach((n, i) => parts.push(`<rect x="${left + i * 70}" y="${H - 14}" width="10" height="10" fill="${colors[i]}"/><text x="${left + i * 70 + 14}" y="${H - 5}" class="tick">${n}</text>`));
  return `<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img">${parts.join('')}</svg>`;
}

/** Layers (rows) x experts (columns), shade = the expert's share of the layer's selections. */
function heatmap(d: ReportData): string {
  const L = d.usage.length;
  const E = d.trace.experts;
  const left = 48;
  const top = 28;
  const cell = Math.max(3, Math.min(18, Math.floor(880 / E)));
  const rowH = Math.max(4, Math.min(16, Math.floor(520 / L)));
  const W = left + E * cell + 12;
  const H = top + L * rowH + 24;
  const parts: string[] = [`<text x="${W / 2}" y="16" class="title">Expert usage per layer (darker = selected more often)</text>`];
  d.usage.forEach((row, l) => {
    const max = Math.max(1, ...row);
    const total = row.reduce((a, b) => a + b, 0) || 1;
    row.forEach((n, e) => {
      const v = n / max;
      parts.push(`<rect x="${left + e * cell}" y="${top + l * rowH}" width="${cell}" height="${rowH}" fill="hsl(220 70% ${(97 - 67 * v).toFixed(0)}%)"><title>layer ${l} expert ${e}: ${n} tokens (${(100 * n / total).toFixed(1)}% of selections)</title></rect>`);
    });
    if (L <= 32 || l % 4 === 0) parts.push(`<text x="${left - 6}" y="${top + l * rowH + rowH - 2}" class="tick" text-anchor="end">${l}</text>`);
  });
  parts.push(`<text x="${left + (E * cell) / 2}" y="${H - 6}" class="axis">expert id (0 .. ${E - 1}); rows: layers</text>`);
  return `<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img">${parts.join('')}</svg>`;
}

export function renderHtml(d: ReportData): string {
  const t = d.trace;
  const L = t.layers;
  const charts: string[] = [];
  for (const m of d.segments) {
    charts.push(lineChart(`SCH(${m}, C) per layer (warm); black: model level`, d.cacheSizes,
      layerSeries(Array.from({ length: L }, (_, l) => d.cacheSizes.map((C) => d.sch[m]![C]!.layers[l]!)), L, d.cacheSizes.map((C) => d.sch[m]![C]!.model), `SCH(${m}) model`),
      'cache size C (experts per layer)', 'hit rate', true));
  }
  charts.push(lineChart('SRP(m) per layer; black: model level', d.segments,
    layerSeries(Array.from({ length: L }, (_, l) => d.segments.map((m) => d.srp[m]!.layers[l]!)), L, d.segments.map((m) => d.srp[m]!.model), 'SRP model'),
    'segment length m', 'SRP (best F1)', true));
  const Cs = Array.from({ length: t.experts }, (_, i) => i + 1);
  charts.push(lineChart('LRU hit rate (cold) per layer; black: shared cache', Cs,
    layerSeries(d.lruCurve.layers, L, d.lruCurve.model, 'shared LRU cache of C x layers'),
    'cache size C (experts per layer)', 'hit rate'));
  const layerIdx = Array.from({ length: L }, (_, l) => l);
  charts.push(lineChart('Hit rate per layer, C experts per layer (LRU cold)', layerIdx,
    d.cacheSizes.map((C, i) => ({ name: `C = ${C}`, ys: d.policies.lru[C]!.cold.layers, color: `hsl(${(i * 360) / d.cacheSizes.length} 65% 42%)`, strong: true })),
    'layer', 'hit rate'));
  const rows = d.cacheSizes.map((C) => `<tr><td>${C}</td>${(['lru', 'lfu', 'belady'] as const).map((p) => `<td>${d.policies[p][C]!.warm.model.toFixed(3)}</td><td>${d.policies[p][C]!.cold.model.toFixed(3)}</td>`).join('')}${d.segments.map((m) => `<td>${d.sch[m]![C]!.model.toFixed(3)}</td>`).join('')}</tr>`).join('');
  const srpRows = d.segments.map((m) => `<tr><td>${m}</td><td>${Number.isFinite(d.srp[m]!.model) ? d.srp[m]!.model.toFixed(3) : '-'}</td><td>${Number.isFinite(d.srp[m]!.groupSize.model) ? d.srp[m]!.groupSize.model.toFixed(2) : '-'}</td></tr>`).join('');
  const title = t.format === 'import' ? t.path : `${t.model ?? '?'} (${t.architecture ?? '?'})`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>moe-offload routing report: ${esc(title)}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.grid{stroke:#ddd;stroke-width:1} .tick{font-size:11px;fill:#555} .axis{font-size:12px;fill:#333;text-anchor:middle}
.title{font-size:13px;font-weight:600;text-anchor:middle;fill:#222}
.charts{display:flex;flex-wrap:wrap;gap:12px} svg{background:#fafafa;border:1px solid #eee}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
.rec{background:#eef7ee;border:1px solid #9c9;padding:10px 14px;max-width:900px}
</style></head><body>
<h1>Routing report: ${esc(title)}</h1>
<p>${esc(t.path)}: ${t.sequences} sequences, ${t.tokens} tokens, ${t.layers} MoE layers, ${t.experts} experts, top-${t.k}${t.truncated ? ' (cut off; complete lines used)' : ''}.
SRP/SCH as defined in arXiv 2505.16056. Warm = first uses excused while the cache has room; cold = cache starts empty. Model level = all layers pooled (one cache of C &times; layers).</p>
<h2>Recommendation</h2><p class="rec">${esc(recommendationText(d))}</p>
${d.prefetch ? `<h2>Prefetch</h2><p>${esc(prefetchText(d.prefetch))}</p>` : ''}
<h2>SRP</h2><table><tr><th>m</th><th>SRP model</th><th>group size</th></tr>${srpRows}</table>
<h2>Cache hit rates, model level</h2>
<table><tr><th>C</th><th>LRU warm</th><th>LRU cold</th><th>LFU warm</th><th>LFU cold</th><th>MIN warm</th><th>MIN cold</th>${d.segments.map((m) => `<th>SCH(${m})</th>`).join('')}</tr>${rows}</table>
<h2>Plots</h2><div class="charts">${charts.join('\n')}</div>
${d.tiers ? `<h2>Tiers</h2>${tierChart(d)}` : ''}
<h2>Expert usage</h2>${heatmap(d)}
</body></html>
`;
}
