// `npm run bench`: one-token, one-thread matmul throughput of our native kernels and of onnxruntime's
// MatMulNBits, next to the machine's single-thread read bandwidth, with the ratios that say how close
// the kernels come to the memory ceiling; and the trace analysis (read, SRP/SCH, simulate) on a synthetic
// 1M token-layer trace. Tables on stdout, progress on stderr, JSON in bench/results/.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { GGMLType, GGML_TYPE_INFO } from '../src/model/ggml-types.js';
import type { BandwidthResult } from './bandwidth.js';
import type { KernelResult, MatrixShape } from './kernels.js';
import type { RepeatOptions } from './stats.js';
import type { TraceBenchResult } from './trace.js';

const USAGE = 'usage: node dist/bench/run.js [--quick] [--only kernels|ort|bandwidth|trace|offload[,...]] [--repeat N (offload rows, default 1)]';
const PARTS = ['bandwidth', 'kernels', 'ort', 'trace', 'offload'] as const;
/** The parts that make the kernel table and its -kernels.json. */
const KERNEL_PARTS: readonly Part[] = ['bandwidth', 'kernels', 'ort'];
type Part = (typeof PARTS)[number];

const MiB = 1024 * 1024;
/** Bandwidth probe buffer: far beyond any last-level cache. */
const BANDWIDTH_BYTES = 256 * MiB;
/** Each timed pass reads at least this many weight bytes (several matrix copies) so they come from RAM. */
const ROTATION_BYTES = 128 * MiB;
const SHAPES: MatrixShape[] = [{ rows: 2048, cols: 1024 }, { rows: 4096, cols: 14336 }];
const KERNELS = [GGMLType.Q4_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.F16];
const TARGET_Q4_0_VS_BANDWIDTH = 0.8;
const TARGET_Q4_0_VS_ORT = 1.0;

interface Args { quick: boolean; parts: Set<Part>; repeat: number }

function parseArgs(argv: string[]): Args {
  const args: Args = { quick: false, parts: new Set(PARTS), repeat: 1 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') args.quick = true;
    else if (a === '--only' || a.startsWith('--only=')) {
      const value = a === '--only' ? argv[++i] : a.slice('--only='.length);
      const wanted = (value ?? '').split(',').filter(Boolean);
      const bad = wanted.filter((p) => !(PARTS as readonly string[]).includes(p));
      if (wanted.length === 0 || bad.length > 0) throw new Error(`--only takes ${PARTS.join(', ')}\n${USAGE}`);
      args.parts = new Set(wanted as Part[]);
    } else if (a === '--repeat' || a.startsWith('--repeat=')) {
      const value = a === '--repeat' ? argv[++i] : a.slice('--repeat='.length);
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1 || n > 20) throw new Error(`--repeat takes an integer from 1 to 20, got '${value ?? ''}'\n${USAGE}`);
      args.repeat = n;
    } else if (a === '--help' || a === '-h') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  return args;
}

const progress = (msg: string): void => { process.stderr.write(`[bench] ${msg}\n`); };
const shapeName = (s: MatrixShape): string => `${s.rows}x${s.cols}`;
const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err)).split('\n')[0]!;

function unavailable(kernel: string, shape: MatrixShape, note: string): KernelResult {
  return { kernel, rows: shape.rows, cols: shape.cols, matrixBytes: 0, copies: 0, gbps: null, check: 'skipped', note };
}

/**
 * value: median of per-pair ratios (passes interleaved with the reference, see kernels.ts), with their
 * min, max and count; separate: the old ratio of medians taken at different moments (against the
 * standalone 256 MiB bandwidth for `/ bandwidth`), kept as context.
 */
interface Ratio {
  name: string; shape: string; value: number | null; min?: number; max?: number; pairs?: number;
  separate: number | null; target?: number;
}

function ratios(bandwidth: BandwidthResult | null, results: KernelResult[]): Ratio[] {
  const out: Ratio[] = [];
  const bw = bandwidth?.gbps.median ?? null;
  const div = (a: number | null, b: number | null): number | null => (a !== null && b !== null ? a / b : null);
  const paired = (r: KernelResult | undefined) => (r?.paired
    ? { value: r.paired.ratio.median, min: r.paired.ratio.min, max: r.paired.ratio.max, pairs: r.paired.ratio.samples }
    : { value: null });
  for (const shape of SHAPES) {
    const name = shapeName(shape);
    const at = (kernel: string): KernelResult | undefined =>
      results.find((r) => r.kernel === kernel && r.rows === shape.rows && r.cols === shape.cols);
    const q4 = at('q4_0');
    const ort = at('ort MatMulNBits');
    out.push({ name: 'q4_0 / bandwidth', shape: name, ...paired(q4), separate: div(q4?.gbps?.median ?? null, bw),
      target: TARGET_Q4_0_VS_BANDWIDTH });
    out.push({ name: 'q4_0 / ort MatMulNBits', shape: name, ...paired(ort),
      separate: div(q4?.gbps?.median ?? null, ort?.gbps?.median ?? null), target: TARGET_Q4_0_VS_ORT });
    for (const r of results) {
      if (r.rows !== shape.rows || r.cols !== shape.cols || r.kernel === 'q4_0' || r.paired?.against !== 'sumBytes') continue;
      out.push({ name: `${r.kernel} / bandwidth`, shape: name, ...paired(r), separate: div(r.gbps?.median ?? null, bw) });
    }
  }
  return out;
}

function table(bandwidth: BandwidthResult | null, bandwidthNote: string | null, results: KernelResult[],
  ratioList: Ratio[], options: RepeatOptions, ortOverheadSeconds: number | null): string {
  const f = (v: number, d = 2): string => v.toFixed(d);
  const lines: string[] = [];
  lines.push('moe-offload kernel bench: one token (matrix x vector), 1 thread, GB/s = 1e9 weight bytes / s');
  lines.push(`matrix RxC = R outputs x C inputs (GGUF rows x values per row); median [min..max] of >= ${options.reps} passes`);
  lines.push(`each pass reads >= ${ROTATION_BYTES / MiB} MiB of weights (rotating over copies) so they come from RAM`);
  lines.push('');
  const bwCell = bandwidth
    ? `${f(bandwidth.gbps.median)} GB/s [${f(bandwidth.gbps.min)}..${f(bandwidth.gbps.max)}] n=${bandwidth.gbps.samples}`
    : (bandwidthNote ?? 'not measured');
  lines.push(`single-thread read bandwidth (sumBytes, ${BANDWIDTH_BYTES / MiB} MiB buffer, before + after): ${bwCell}`);
  lines.push('bw = sumBytes over the same copies, interleaved with the kernel passes; vs bw = median of per-pair ratios');
  lines.push('');
  const header = ['kernel', 'matrix', 'MiB/copy', 'copies', 'GB/s', 'min', 'max', 'n', 'bw', 'vs bw', 'check / note'];
  const rows: string[][] = [header];
  for (const r of results) {
    const mib = r.matrixBytes ? f(r.matrixBytes / MiB) : '';
    const copies = r.copies ? String(r.copies) : '';
    const matrix = `${r.rows}x${r.cols}`;
    if (!r.gbps) {
      rows.push([r.kernel, matrix, mib, copies, 'n/a', '', '', '', '', '', (r.note ?? '').replace(/^n\/a /, '')]);
      continue;
    }
    const sameBw = r.paired?.against === 'sumBytes' ? r.paired : null;
    rows.push([r.kernel, matrix, mib, copies, f(r.gbps.median), f(r.gbps.min), f(r.gbps.max),
      String(r.gbps.samples), sameBw ? f(sameBw.gbps.median) : '', sameBw ? f(sameBw.ratio.median) : '',
      r.note ? `${r.check} (${r.note})` : r.check]);
  }
  const widths = header.map((_, c) => Math.max(...rows.map((row) => (row[c] ?? '').length)));
  const leftAligned = new Set([0, 1, header.length - 1]);
  for (const row of rows) {
    lines.push(row.map((cell, c) => (leftAligned.has(c) ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)))
      .join('  ').trimEnd());
  }
  if (ortOverheadSeconds !== null) {
    lines.push(`ort MatMulNBits: GB/s counted in Q4_0 bytes; fixed cost per session.run from Node ${f(ortOverheadSeconds * 1e6, 1)} us (32x32)`);
  }
  lines.push('');
  lines.push('ratios: median of per-pair ratios [min..max] over n adjacent pass pairs; (separate: ratio of medians');
  lines.push('measured apart, against the standalone bandwidth for "/ bandwidth"; context only)');
  for (const r of ratioList) {
    const value = r.value === null ? 'n/a' : f(r.value);
    const spread = r.min === undefined ? '' : `[${f(r.min)}..${f(r.max!)}] n=${r.pairs}`;
    const separate = r.separate === null ? '' : `(separate ${f(r.separate)})`;
    const verdict = r.target === undefined || r.value === null ? ''
      : `target >= ${f(r.target, 1)}: ${r.value >= r.target ? 'met' : 'NOT met'}`;
    lines.push(`  ${r.shape.padEnd(10)} ${r.name.padEnd(22)} ${value.padStart(5)} ${spread.padEnd(19)} ${separate.padEnd(16)} ${verdict}`.trimEnd());
  }
  return `${lines.join('\n')}\n`;
}

const resultsDir = (): string => {
  const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  return dir;
};
const machine = (ortVersion: string | null = null) => ({ cpu: cpus()[0]?.model ?? 'unknown', logicalCpus: cpus().length, node: process.version, onnxruntime: ortVersion });

/** The trace analysis part: table on stdout, bench/results/<stamp>-trace.json. */
async function runTraceBench(quick: boolean): Promise<void> {
  const { benchTrace, defaultTraceSettings, traceTable } = await import('./trace.js');
  const result: TraceBenchResult = await benchTrace(defaultTraceSettings(quick), progress);
  process.stdout.write(`\n${traceTable(result)}`);
  const stamp = new Date().toISOString();
  const file = path.join(resultsDir(), `${stamp.replace(/:/g, '-')}-trace.json`);
  writeFileSync(file, `${JSON.stringify({ timestamp: stamp, machine: machine(), ...result }, null, 2)}\n`);
  progress(`wrote ${path.relative(process.cwd(), file)}`);
}

/** The offload part (bench/offload.ts): table on stdout, bench/results/<stamp>-offload.json; a failure is reported, not fatal. */
async function runOffloadBench(quick: boolean, repeat: number): Promise<void> {
  try {
    const { benchOffload, defaultOffloadSettings, offloadTable } = await import('./offload.js');
    const result = await benchOffload(defaultOffloadSettings(quick, repeat), progress);
    process.stdout.write(`\n${offloadTable(result)}`);
    const stamp = new Date().toISOString();
    const file = path.join(resultsDir(), `${stamp.replace(/:/g, '-')}-offload.json`);
    writeFileSync(file, `${JSON.stringify({ timestamp: stamp, machine: machine(), quick, ...result }, null, 2)}\n`);
    progress(`wrote ${path.relative(process.cwd(), file)}`);
  } catch (err) {
    process.stdout.write(`\noffload bench: n/a (${errorText(err)})\n`);
  }
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (KERNEL_PARTS.some((p) => args.parts.has(p))) await runKernelBench(args);
  if (args.parts.has('trace')) await runTraceBench(args.quick);
  if (args.parts.has('offload')) await runOffloadBench(args.quick, args.repeat);
}

async function runKernelBench(args: Args): Promise<void> {
  const options: RepeatOptions = args.quick
    ? { warmup: 1, reps: 5, minSeconds: 0 }
    : { warmup: 2, reps: 15, minSeconds: 1 };

  const bw: { result: BandwidthResult | null; note: string | null } = { result: null, note: null };
  /** Measured before and after the matmuls and pooled, so drift on a shared machine hits both sides. */
  const measureBandwidth = async (when: string): Promise<void> => {
    if (!args.parts.has('bandwidth') || bw.note !== null) return;
    progress(`read bandwidth over ${BANDWIDTH_BYTES / MiB} MiB (${when})`);
    try {
      const { measureReadBandwidth, poolBandwidth } = await import('./bandwidth.js');
      const m = await measureReadBandwidth(BANDWIDTH_BYTES, options);
      bw.result = bw.result ? poolBandwidth(bw.result, m) : m;
    } catch (err) {
      const notBuilt = /not implemented|cannot (find module|load the native)/i.test(errorText(err));
      bw.note = notBuilt ? 'n/a (not built)' : `n/a (${errorText(err)})`;
      progress(`bandwidth: ${bw.note}`);
    }
  };
  await measureBandwidth('before');

  const results: KernelResult[] = [];
  if (args.parts.has('kernels')) {
    let kernels: typeof import('./kernels.js') | null = null;
    let loadNote = '';
    try { kernels = await import('./kernels.js'); } catch (err) { loadNote = `n/a (${errorText(err)})`; }
    for (const shape of SHAPES) {
      for (const type of KERNELS) {
        const name = GGML_TYPE_INFO[type]!.name;
        progress(`native ${name} ${shapeName(shape)}`);
        results.push(kernels
          ? await kernels.benchNativeKernel(type, shape, ROTATION_BYTES, options)
          : unavailable(name, shape, loadNote));
      }
    }
  }
  let ortVersion: string | null = null;
  let ortOverheadSeconds: number | null = null;
  if (args.parts.has('ort')) {
    try {
      progress('onnxruntime per-call overhead (32x32 MatMulNBits)');
      ortOverheadSeconds = await (await import('./ort-bench.js')).ortCallOverhead(options);
    } catch (err) {
      progress(`onnxruntime: ${errorText(err)}`);
    }
    for (const shape of SHAPES) {
      progress(`onnxruntime MatMulNBits ${shapeName(shape)}`);
      try {
        ortVersion ??= (await import('./ort-session.js')).ortVersion;
        results.push(await (await import('./kernels.js')).benchOrtPairedWithQ4_0(shape, ROTATION_BYTES, options));
      } catch (err) {
        results.push(unavailable('ort MatMulNBits', shape, `n/a (${errorText(err)})`));
      }
    }
  }

  await measureBandwidth('after');
  const bandwidth = bw.result;
  const bandwidthNote = bw.note;
  const ratioList = ratios(bandwidth, results);
  process.stdout.write(table(bandwidth, bandwidthNote, results, ratioList, options, ortOverheadSeconds));

  const stamp = new Date().toISOString();
  const file = path.join(resultsDir(), `${stamp.replace(/:/g, '-')}-kernels.json`);
  const report = {
    timestamp: stamp,
    machine: machine(ortVersion),
    settings: { quick: args.quick, parts: [...args.parts].filter((p) => KERNEL_PARTS.includes(p)), threads: 1, tokens: 1, repeat: options,
      bandwidthBufferBytes: BANDWIDTH_BYTES, rotationBytes: ROTATION_BYTES,
      ratioMethod: 'median of per-pair ratios: each kernel pass adjacent to a sumBytes pass over the same copies (ORT: to a q4_0 pass), order alternating; ratios[].separate = ratio of medians measured apart',
      matrixConvention: 'rows x cols = outputs x inputs', gbps: '1e9 weight bytes per second (ORT counted in Q4_0 bytes)' },
    bandwidth: bandwidth ? { bufferBytes: bandwidth.bufferBytes, gbps: bandwidth.gbps } : { note: bandwidthNote },
    ortCallOverheadSeconds: ortOverheadSeconds,
    results,
    ratios: ratioList,
  };
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  progress(`wrote ${path.relative(process.cwd(), file)}`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${errorText(err)}\n`);
  process.exitCode = 1;
});
