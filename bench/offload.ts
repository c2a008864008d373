// The offload bench: decode tokens/s of an OLMoE-shaped q4_0 model (bench/offload-model.ts) with the RAM
// expert cache at 100%, 50% and 25% of the expert bytes, next to a lower bound from numbers measured in
// the same run: max(bytes read per token / read bandwidth, bytes computed per token / expert-FFN GB/s of
// all the threads computing at once). Misses are read with O_DIRECT (generate --direct-io) so they cost a disk read, not a
// page-cache copy, whatever the page cache holds; page-cache rows read them buffered from a page cache
// dropped right before (the cold case, where the kernel lets us drop it). The disk is often a shared
// virtual device whose bandwidth swings within minutes, so each row's read bound uses that row's own
// bandwidth, probed with the decode's read path right before, right after, and in small slices between
// its timed tokens.
import { existsSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { loadModel, type ExpertStatsSnapshot } from '../src/engine/model.js';
import { Sampler } from '../src/engine/sampler.js';
import { EXPERT_MATRICES, ExpertLocator, type ExpertRange } from '../src/experts/locator.js';
import { ExpertPool, type BatchExpert, type MatrixInSlab } from '../src/experts/pool.js';
import { computeBatch } from '../src/experts/worker.js';
import { threadLending } from '../src/native/index.js';
import { HostCache, minimumBudget, slotBytesOf, type HostEntry } from '../src/experts/host-cache.js';
import { ExpertReader } from '../src/experts/reader.js';
import { GGUFFile } from '../src/model/gguf.js';
import { PositionedFile, ioCounters, traceReads, type TracedRead } from '../src/native/io.js';
import { ExpertDispatcher } from '../src/experts/dispatcher.js';
import { mulberry32 } from '../src/engine/prng.js';
import { ensureOffloadModel, freeDiskBytes, modelPath, OLMOE_LIKE, OLMOE_LIKE_QUICK, type OffloadModelShape } from './offload-model.js';
import { randomFloats } from './random.js';
import { summarize, timePasses, type Summary } from './stats.js';

const MiB = 1024 * 1024;
const TARGET_RATIO = 1.3;
/** Opening of Moby-Dick, 104 tokens with the fixture vocabulary: enough for the prompt batch to route to nearly every expert. */
const PROMPT = 'Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, '
  + 'and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.';

export interface OffloadSettings {
  quick: boolean;
  shape: OffloadModelShape;
  threads: number;
  /** RAM cache sizes, percent of all expert bytes (as cached). */
  ramCachePercents: number[];
  /** Page-cache (buffered read) rows as well, for these percents. */
  pageCachePercents: number[];
  /** Direct-I/O rows with OffloadOptions.prefetch as well, for these percents. */
  prefetchPercents: number[];
  warmupTokens: number;
  timedTokens: number;
  /** Experts read per pass of the read-bandwidth probes. */
  bandwidthExperts: number;
  /** Experts in the kernel rotation (their bytes should far exceed the last-level cache). */
  kernelExperts: number;
  /** Experts read by each per-row bandwidth probe (one right before and one right after each decode row). */
  rowProbeExperts: number;
  /**
   * Every this many timed tokens of a row (but not after the last), a probe slice of k experts (one
   * layer's misses) is read with the row's read path, outside the token timing: the disk's rate during the row.
   */
  probeSliceEveryTokens: number;
  /** Direct-I/O rows at this RAM cache percent decode `timelineTokens` more tokens, timed layer by layer. */
  timelinePercent: number;
  timelineTokens: number;
  /**
   * Times every row is decoded (in forward, then reverse order, and so on, so that drift on a shared
   * machine hits all rows alike); each row reports the run with the median ratio (the higher middle one
   * for an even count) and all the ratios.
   */
  repeats: number;
}

export function defaultOffloadSettings(quick: boolean, repeats = 1): OffloadSettings {
  const common = { quick, threads: availableParallelism(), ramCachePercents: [100, 50, 25], prefetchPercents: [50, 25], timelinePercent: 50, probeSliceEveryTokens: 4, repeats };
  return quick
    ? { ...common, shape: OLMOE_LIKE_QUICK, pageCachePercents: [50],
      warmupTokens: 2, timedTokens: 6, bandwidthExperts: 24, kernelExperts: 24, rowProbeExperts: 16, timelineTokens: 2 }
    : { ...common, shape: OLMOE_LIKE, pageCachePercents: [50, 25],
      warmupTokens: 4, timedTokens: 24, bandwidthExperts: 96, kernelExperts: 48, rowProbeExperts: 64, timelineTokens: 4 };
}

export interface ReadBandwidth {
  what: string;
  gbps: Summary | null;
  note?: string;
}

export interface DecodeRow {
  ramCachePercent: number;
  ramCacheBytes: number;
  io: 'direct' | 'page cache';
  /**
   * Page-cache rows: 'cold' when the page cache was dropped right before each probe and slice, right
   * after each slice and right before the timed tokens (the misses cost a disk read, as the bound
   * assumes); 'unknown' where dropping was not permitted (the probes and the decode may find pages cached).
   */
  pageCache?: 'cold' | 'unknown';
  /** OffloadOptions.prefetch on: the timed tokens' prefetches (issued, then looked up or evicted unused). */
  prefetch?: { issued: number; used: number; wasted: number };
  promptTokens: number;
  promptMs: number;
  /** Per timed token. */
  msPerToken: Summary;
  tokensPerS: number;
  hitRate: number;
  bytesReadPerToken: number;
  stallMsPerToken: number;
  /** Wall time of the expert stages (routing to last result), per token; the rest is attention, norms, router, output on the main thread. */
  expertWallMsPerToken: number;
  /** Expert compute time per token, summed over the threads computing experts (workers and, with 2+ threads, the main thread). */
  computeMsPerToken: number;
  readBoundMs: number;
  computeBoundMs: number;
  boundMs: number;
  ratio: number;
  /** With repeats: the ratio of every run of this row, in run order (this row is the median one). */
  ratioRuns?: number[];
  /**
   * This row's own read bandwidth (GB/s), the decode's read path probed right before and right after
   * the row and in slices between its timed tokens; combined = all their bytes / all their time (the
   * byte-weighted harmonic mean), which the read bound uses.
   */
  rowReadGbps: { before: number; after: number; slices: number[]; combined: number };
  /** The expert FFN rate of all threads at once (GB/s), probed right before and right after the row; the compute bound uses combined. */
  rowFfnGbps: { before: number; after: number; combined: number };
  /** The read bound from the bandwidth measured once before all rows (the old figure), for comparison. */
  readBoundMsGlobalBandwidth: number;
  /** Direct reads of this row that landed in the slot without a copy, and those that went through a scratch buffer. */
  directReads: { zeroCopy: number; bounced: number };
  /** Extra tokens decoded after the timed ones with every layer and read timed (the timelinePercent direct row). */
  timeline?: TokenTimeline[];
}

/** One decode token, times in ms from its start. Reads: when each ran on a pool thread (not when queued). */
export interface TokenTimeline {
  ms: number;
  layers: { layer: number; routedMs: number; endMs: number; reads: { startMs: number; endMs: number; bytes: number }[];
    /** When the dispatcher called ExpertReader.load for each miss (the reads are queued right then). */
    loadsIssuedMs: number[];
    workerTasks: { startMs: number; endMs: number }[] }[];
  /** Wall time with no read running, and where it falls. */
  diskIdle: {
    totalMs: number;
    /** Outside the expert stages: attention, norms, routers (before layer 0's routing, between layers, after the last). */
    betweenLayersMs: number;
    /** In an expert stage before its first read ran. */
    beforeFirstReadMs: number;
    /** Of that: before the dispatcher issued the stage's first load (its lookups, and its yield to the event loop). */
    beforeFirstLoadIssuedMs: number;
    /** In an expert stage between reads (no read running though more were to come). */
    gapsMs: number;
    /** In an expert stage after its last read ended (computing the last misses). */
    afterLastReadMs: number;
    /** Expert stages that read nothing. */
    noReadStagesMs: number;
  };
  /** Reads running at once, averaged over the time any ran (the device queue depth the decode keeps). */
  meanReadsInFlight: number;
  /** Bytes read / time any read ran (GB/s): what the device gave the decode while it was reading. */
  gbpsWhileReading: number;
}

/** Length of the union of the intervals (ms). */
function unionMs(iv: { startMs: number; endMs: number }[]): number {
  const sorted = [...iv].sort((a, b) => a.startMs - b.startMs);
  let total = 0, curS = -Infinity, curE = -Infinity;
  for (const { startMs, endMs } of sorted) {
    if (startMs > curE) { if (curE > curS) total += curE - curS; curS = startMs; curE = endMs; } else curE = Math.max(curE, endMs);
  }
  if (curE > curS) total += curE - curS;
  return total;
}

function tokenTimeline(ms: number, layers: TokenTimeline['layers']): TokenTimeline {
  const reads = layers.flatMap((l) => l.reads);
  const busy = unionMs(reads);
  let inStages = 0, beforeFirst = 0, beforeIssued = 0, gaps = 0, afterLast = 0, noRead = 0;
  for (const l of layers) {
    const stage = l.endMs - l.routedMs;
    inStages += stage;
    if (l.reads.length === 0) { noRead += stage; continue; }
    const first = Math.min(...l.reads.map((r) => r.startMs)), last = Math.max(...l.reads.map((r) => r.endMs));
    beforeFirst += Math.max(0, first - l.routedMs);
    if (l.loadsIssuedMs.length > 0) beforeIssued += Math.max(0, Math.min(first, ...l.loadsIssuedMs) - l.routedMs);
    afterLast += Math.max(0, l.endMs - last);
    gaps += Math.max(0, (last - first) - unionMs(l.reads));
  }
  const sumReads = reads.reduce((a, r) => a + r.endMs - r.startMs, 0);
  return {
    ms, layers,
    diskIdle: { totalMs: ms - busy, betweenLayersMs: ms - inStages, beforeFirstReadMs: beforeFirst, beforeFirstLoadIssuedMs: beforeIssued, gapsMs: gaps, afterLastReadMs: afterLast, noReadStagesMs: noRead },
    meanReadsInFlight: busy > 0 ? sumReads / busy : 0,
    gbpsWhileReading: busy > 0 ? reads.reduce((a, r) => a + r.bytes, 0) / (busy / 1000) / 1e9 : 0,
  };
}

const hrMs = (): number => Number(process.hrtime.bigint()) / 1e6;

/** Decodes `tokens` tokens with the dispatcher's layers, the pool's tasks and the native reads timed. */
async function recordTimeline(tokens: number, decode: () => Promise<void>): Promise<TokenTimeline[]> {
  const dispatcherProto = ExpertDispatcher.prototype;
  const poolProto = ExpertPool.prototype;
  const runExperts = dispatcherProto.runExperts;
  const runBatch = poolProto.runBatch;
  const readerProto = ExpertReader.prototype;
  const load = readerProto.load;
  let layers: TokenTimeline['layers'] = [];
  readerProto.load = function (this: ExpertReader, ...args: Parameters<typeof load>) {
    layers.at(-1)?.loadsIssuedMs.push(hrMs());
    return load.apply(this, args);
  };
  dispatcherProto.runExperts = async function (this: ExpertDispatcher, ...args: Parameters<typeof runExperts>) {
    const rec = { layer: args[0], routedMs: hrMs(), endMs: 0, reads: [], loadsIssuedMs: [] as number[], workerTasks: [] };
    layers.push(rec);
    try {
      return await runExperts.apply(this, args);
    } finally {
      rec.endMs = hrMs();
    }
  };
  poolProto.runBatch = function (this: ExpertPool, ...args: Parameters<typeof runBatch>) {
    const rec = { startMs: hrMs(), endMs: 0 };
    layers.at(-1)?.workerTasks.push(rec);
    const p = runBatch.apply(this, args);
    void p.then(() => { rec.endMs = hrMs(); }, () => { rec.endMs = hrMs(); });
    return p;
  };
  const out: TokenTimeline[] = [];
  try {
    for (let t = 0; t < tokens; t++) {
      layers = [];
      traceReads(true);
      const t0 = hrMs();
      await decode();
      const t1 = hrMs();
      const reads: TracedRead[] = traceReads(false);
      // Each read belongs to the last layer routed before it ran (nothing is read ahead of its layer).
      for (const r of reads) {
        const owner = [...layers].reverse().find((l) => l.routedMs <= r.startMs) ?? layers[0];
        owner?.reads.push(r);
      }
      const rel = (v: number) => v - t0;
      out.push(tokenTimeline(t1 - t0, layers.map((l) => ({
        layer: l.layer, routedMs: rel(l.routedMs), endMs: rel(l.endMs),
        reads: l.reads.map((r) => ({ startMs: rel(r.startMs), endMs: rel(r.endMs), bytes: r.bytes })),
        loadsIssuedMs: l.loadsIssuedMs.map(rel),
        workerTasks: l.workerTasks.map((w) => ({ startMs: rel(w.startMs), endMs: rel(w.endMs || t1) })),
      }))));
    }
  } finally {
    traceReads(false);
    dispatcherProto.runExperts = runExperts;
    poolProto.runBatch = runBatch;
    readerProto.load = load;
  }
  return out;
}

export interface OffloadBenchResult {
  model: { path: string; fileBytes: number; created: boolean; generateSeconds: number; shape: OffloadModelShape; note?: string };
  threads: number;
  expertBytes: number;
  /** Bytes whose product a decode token computes: k x layers x expert bytes + resident matrices used per token. */
  computedBytesPerToken: { experts: number; resident: number; kvCache: number; total: number };
  pageCacheDrop: string;
  /** OffloadSettings.probeSliceEveryTokens of the run. */
  probeSliceEveryTokens: number;
  sequentialColdRead: ReadBandwidth | null;
  directRead: ReadBandwidth;
  pageCacheRead: ReadBandwidth;
  /** One thread alone. */
  expertFfnGbps: Summary;
  /** All `threads` threads at once, together (the compute bound's rate). */
  expertFfnAllThreadsGbps: Summary;
  rows: DecodeRow[];
  /** 1-minute load average before and after (the machine may be shared). */
  loadAverage: { before: number; after: number };
  seconds: number;
}

/** Harmonic mean of the finite values (NaN when none). */
function harmonic(values: number[]): number {
  const ok = values.filter((v) => Number.isFinite(v) && v > 0);
  return ok.length ? ok.length / ok.reduce((a, v) => a + 1 / v, 0) : NaN;
}

const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err)).split('\n')[0]!;

/** Drops the kernel's page cache (root only, and only where the container allows it). */
function dropPageCache(): string | null {
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '1');
    return null;
  } catch (err) {
    return errorText(err);
  }
}

function randomExperts(locator: ExpertLocator, count: number, seed: number): ExpertRange[] {
  const next = mulberry32(seed);
  return Array.from({ length: count }, () =>
    locator.expertRange(Math.floor(next() * locator.layers), Math.floor(next() * locator.expertCount)));
}

/** Reads the experts' three ranges, `k` experts at a time (all 3k reads in flight, as the dispatcher does for one layer's misses). */
async function readExperts(file: PositionedFile, experts: ExpertRange[], k: number, buffers: Uint8Array[]): Promise<number> {
  let bytes = 0;
  for (let i = 0; i < experts.length; i += k) {
    const reads: Promise<void>[] = [];
    experts.slice(i, i + k).forEach((e, j) => EXPERT_MATRICES.forEach((m, mi) => {
      const dst = buffers[j * 3 + mi]!.subarray(0, e[m].byteLength);
      bytes += dst.byteLength;
      reads.push(file.readInto(e[m].offset, dst));
    }));
    await Promise.all(reads);
  }
  return bytes;
}

async function expertReadBandwidth(path: string, locator: ExpertLocator, direct: boolean, count: number, passes: number): Promise<Summary> {
  const k = Math.max(1, locator.expertUsedCount);
  const buffers = Array.from({ length: 3 * k }, () => new Uint8Array(locator.maxExpertBytes()));
  const file = new PositionedFile(path, { direct });
  try {
    const gbps: number[] = [];
    // Direct reads: a fresh sample each pass (nothing to warm). Page cache: one sample, read once untimed first.
    if (!direct) await readExperts(file, randomExperts(locator, count, 11), k, buffers);
    for (let p = 0; p < passes; p++) {
      const experts = randomExperts(locator, count, direct ? 100 + p : 11);
      const t0 = performance.now();
      const bytes = await readExperts(file, experts, k, buffers);
      gbps.push(bytes / ((performance.now() - t0) / 1000) / 1e9);
    }
    return summarize(gbps);
  } finally {
    file.close();
  }
}

/** One probe read: bytes and wall time (ms). */
interface ProbeSample { bytes: number; ms: number }

const gbpsOf = (x: ProbeSample | null): number => (x && x.bytes > 0 ? x.bytes / (x.ms / 1000) / 1e9 : NaN);

/**
 * A row's own read bandwidth, probed with the decode's read path itself (HostCache slots filled by
 * ExpertReader, `k` expert loads in flight, as the dispatcher does for one layer's misses; O_DIRECT or
 * buffered, as the row). One per row, open for the whole row: the probes right before and right after
 * it and the slices between its timed tokens. Every read picks experts this probe has not read before,
 * so each load is a miss (the cache holds only a few slots) and, buffered, never finds a page an earlier
 * probe of the row left in the page cache.
 */
class RowReadProbe {
  private readonly file: PositionedFile;
  private readonly reader: ExpertReader;
  private readonly cache: HostCache;
  private readonly next: () => number;
  private readonly seen = new Set<number>();
  private bytes = 0;
  readonly k: number;

  private constructor(path: string, private readonly locator: ExpertLocator, direct: boolean, seed: number) {
    this.k = Math.max(1, locator.expertUsedCount);
    this.file = new PositionedFile(path, { direct });
    this.reader = new ExpertReader(this.file, locator, (_l, b) => { this.bytes += b; });
    this.cache = new HostCache({ budgetBytes: minimumBudget(slotBytesOf(locator), this.k), experts: locator, expertsInUse: this.k });
    this.next = mulberry32(seed);
  }

  /**
   * Opens the probe and reads `warmExperts` experts untimed, so the slots' pages are faulted in (as in a
   * decode past its warm-up). Buffered, those experts are then in the page cache: drop it after this
   * for a cold probe.
   */
  static async open(path: string, locator: ExpertLocator, direct: boolean, seed: number, warmExperts: number): Promise<RowReadProbe> {
    const probe = new RowReadProbe(path, locator, direct, seed);
    try {
      await probe.read(warmExperts);
    } catch (err) {
      probe.close();
      throw err;
    }
    return probe;
  }

  /** Reads `count` experts this probe has not read yet, `k` at a time, timed. */
  async read(count: number): Promise<ProbeSample> {
    const { locator, k } = this;
    const picks: (readonly [number, number])[] = [];
    for (let tries = 0; picks.length < count && tries < 100 * count; tries++) {
      const l = Math.floor(this.next() * locator.layers), e = Math.floor(this.next() * locator.expertCount);
      if (!locator.hasExperts(l) || this.seen.has(l * locator.expertCount + e)) continue;
      this.seen.add(l * locator.expertCount + e);
      picks.push([l, e]);
    }
    this.bytes = 0;
    const t0 = performance.now();
    for (let i = 0; i < picks.length; i += k) {
      const entries = await Promise.all(picks.slice(i, i + k).map(([l, e]) => this.cache.getOrLoad(l, e, (entry) => this.reader.load(entry))));
      entries.forEach((entry: HostEntry) => this.cache.release(entry));
    }
    return { bytes: this.bytes, ms: performance.now() - t0 };
  }

  close(): void {
    this.file.close();
  }
}

/** Buffered sequential read of up to `maxBytes` from the start of the file, 4 MiB chunks, 4 in flight (cold after a cache drop). */
async function sequentialRead(path: string, fileBytes: number, maxBytes: number): Promise<number> {
  const chunk = 4 * MiB;
  const inFlight = 4;
  const end = Math.min(fileBytes, maxBytes);
  const file = new PositionedFile(path);
  const buffers = Array.from({ length: inFlight }, () => new Uint8Array(chunk));
  try {
    const t0 = performance.now();
    for (let at = 0; at < end; at += chunk * inFlight) {
      const reads: Promise<void>[] = [];
      for (let j = 0; j < inFlight && at + j * chunk < end; j++) {
        const pos = at + j * chunk;
        reads.push(file.readInto(pos, buffers[j]!.subarray(0, Math.min(chunk, end - pos))));
      }
      await Promise.all(reads);
    }
    return end / ((performance.now() - t0) / 1000) / 1e9;
  } finally {
    file.close();
  }
}

/** Real experts from the file in shared slabs, for the expert-FFN throughput (read once, measured on 1 and all threads). */
interface FfnExperts { slabs: SharedArrayBuffer[]; experts: BatchExpert[]; bytes: number }

async function loadFfnExperts(path: string, locator: ExpertLocator, count: number): Promise<FfnExperts> {
  const file = new PositionedFile(path);
  const slabs: SharedArrayBuffer[] = [];
  const experts: BatchExpert[] = [];
  let bytes = 0;
  try {
    for (const range of randomExperts(locator, count, 7)) {
      const size = EXPERT_MATRICES.reduce((n, m) => n + range[m].byteLength, 0);
      const slab = new SharedArrayBuffer(size);
      let offset = 0;
      const inSlab = (m: (typeof EXPERT_MATRICES)[number]): MatrixInSlab => {
        const r = range[m];
        const at = offset;
        offset += r.byteLength;
        return { offset: at, byteLength: r.byteLength, type: r.type, rows: r.rows, cols: r.cols };
      };
      const [gate, up, down] = [inSlab('gate'), inSlab('up'), inSlab('down')];
      await Promise.all([gate, up, down].map((m, i) => file.readInto(range[EXPERT_MATRICES[i]!].offset, new Uint8Array(slab, m.offset, m.byteLength))));
      experts.push({ slab: slabs.push(slab) - 1, gate, up, down, rowStart: experts.length, nTokens: 1 });
      bytes += size;
    }
  } finally {
    file.close();
  }
  return { slabs, experts, bytes };
}

/**
 * `threads` threads at once, one token: the expert FFN (gate, up, down matmuls) of all the experts as one
 * batch on this thread and the pool's workers lent to the native thread pool (the way a decode computes
 * a layer's experts, without the decode's lookups, routing and attention in between), GB/s of expert
 * bytes for all threads together. With more than one thread this is what the machine gives when every
 * thread computes: they share one memory bus, so it is less than `threads` x the one-thread figure, and
 * it is the honest compute bound for a decode on `threads`.
 */
async function expertFfnThroughput({ slabs, experts, bytes }: FfnExperts, pool: ExpertPool, quick: boolean): Promise<Summary> {
  const nEmbd = experts[0]!.gate.cols;
  const x = new Float32Array(new SharedArrayBuffer(nEmbd * 4));
  x.set(randomFloats(nEmbd, 3));
  const rows = new Int32Array(new SharedArrayBuffer(experts.length * 4)); // every expert reads token row 0
  const out = new Float32Array(new SharedArrayBuffer(experts.length * experts[0]!.down.rows * 4));
  let failure: unknown;
  pool.lendWorkers((err) => { failure = err; });
  try {
    // Timed once the workers are lent (a worker starting up would take a core from the passes).
    for (let i = 0; i < 400 && threadLending.lentNow() < pool.servingWorkers; i++) await new Promise((r) => setTimeout(r, 5));
    const seconds = await timePasses(() => {
      computeBatch({ slabs, experts, x, rows, out }, pool.threads);
      if (failure !== undefined) throw failure;
    }, quick ? { warmup: 1, reps: 4, minSeconds: 0 } : { warmup: 2, reps: 8, minSeconds: 1 });
    return summarize(seconds.map((s) => bytes / s / 1e9));
  } finally {
    pool.parkServingWhenIdle(0); // no lent thread may spin while a decode row runs
  }
}

/** Bytes of the resident matrices a decode token multiplies: attention q/k/v/output, routers, output (token_embd: one row). */
function residentBytesPerToken(file: GGUFFile): number {
  let n = 0;
  for (const t of file.tensors.values()) {
    if (/^blk\.\d+\.(attn_(q|k|v|output)|ffn_gate_inp|ffn_(gate|up|down)_shexp)\.weight$/.test(t.name) || t.name === 'output.weight') n += t.byteLength;
  }
  return n;
}

interface TokenDelta { ms: number; hits: number; misses: number; bytesRead: number; stallMs: number; wallMs: number; computeMs: number }

function delta(a: ExpertStatsSnapshot, b: ExpertStatsSnapshot, ms: number): TokenDelta {
  const d = (k: keyof ExpertStatsSnapshot['total']) => b.total[k] - a.total[k];
  return { ms, hits: d('hits'), misses: d('misses'), bytesRead: d('bytesRead'), stallMs: d('stallMs'), wallMs: d('wallMs'), computeMs: d('computeMs') };
}

/** What a row does between decode tokens, outside their timing. */
interface DecodeHooks {
  /** After the warm-up tokens, right before the first timed token. */
  beforeTimed?: () => Promise<void> | void;
  /** After each timed token but the last; `timed` counts the timed tokens done. */
  betweenTimed?: (timed: number) => Promise<void> | void;
}

async function decodeRun(path: string, percent: number, io: DecodeRow['io'], prefetch: boolean, s: OffloadSettings, hooks: DecodeHooks = {}):
  Promise<Omit<DecodeRow, 'readBoundMs' | 'computeBoundMs' | 'boundMs' | 'ratio' | 'rowReadGbps' | 'rowFfnGbps' | 'readBoundMsGlobalBandwidth' | 'pageCache'>> {
  const model = await loadModel(path, { threads: s.threads, offload: { ramCache: `${percent}%`, threads: s.threads, directIo: io === 'direct', prefetch } });
  try {
    const prompt = model.tokenizer.encode(PROMPT, { addSpecial: true });
    const seq = model.newSequence();
    // Seeded sampling, not greedy: greedy decoding of random weights falls into a loop of 3-4 tokens,
    // whose repeated routing would flatter the cache. Offloaded logits are bit-identical at every
    // budget, so every setting decodes the same tokens.
    const sampler = new Sampler({ temperature: 1, topK: 0, topP: 1, minP: 0, seed: 1 });
    let t0 = performance.now();
    let logits = await seq.eval(prompt, { lastOnly: true });
    const promptMs = performance.now() - t0;
    const timed: TokenDelta[] = [];
    const io0 = ioCounters();
    const hookReads = { zeroCopy: 0, bounced: 0 };
    let prefetch0 = model.expertStats()!.prefetch;
    for (let i = 0; i < s.warmupTokens + s.timedTokens; i++) {
      const token = sampler.sample(logits);
      if (i === s.warmupTokens) await hooks.beforeTimed?.();
      const before = model.expertStats()!;
      if (i === s.warmupTokens) prefetch0 = before.prefetch;
      t0 = performance.now();
      logits = await seq.eval([token], { lastOnly: true });
      const ms = performance.now() - t0;
      if (i >= s.warmupTokens) {
        timed.push(delta(before, model.expertStats()!, ms));
        if (timed.length < s.timedTokens && hooks.betweenTimed) {
          // The hook's own direct reads (probe slices) are not the decode's.
          const h0 = ioCounters();
          await hooks.betweenTimed(timed.length);
          const h1 = ioCounters();
          hookReads.zeroCopy += h1.zeroCopyReads - h0.zeroCopyReads;
          hookReads.bounced += h1.bouncedReads - h0.bouncedReads;
        }
      }
    }
    const io1 = ioCounters();
    const prefetch1 = model.expertStats()!.prefetch;
    let timeline: TokenTimeline[] | undefined;
    if (io === 'direct' && !prefetch && percent === s.timelinePercent && s.timelineTokens > 0) {
      timeline = await recordTimeline(s.timelineTokens, async () => {
        logits = await seq.eval([sampler.sample(logits)], { lastOnly: true });
      });
    }
    const n = timed.length;
    const sum = (k: keyof TokenDelta) => timed.reduce((a, t) => a + t[k], 0);
    const msPerToken = summarize(timed.map((t) => t.ms));
    return {
      ramCachePercent: percent, ramCacheBytes: model.expertStats()!.ramCacheBytes, io,
      ...(prefetch ? { prefetch: { issued: prefetch1.issued - prefetch0.issued, used: prefetch1.used - prefetch0.used, wasted: prefetch1.wasted - prefetch0.wasted } } : {}),
      promptTokens: prompt.length, promptMs,
      msPerToken, tokensPerS: 1000 / msPerToken.median,
      hitRate: sum('hits') / Math.max(1, sum('hits') + sum('misses')),
      bytesReadPerToken: sum('bytesRead') / n, stallMsPerToken: sum('stallMs') / n,
      expertWallMsPerToken: sum('wallMs') / n, computeMsPerToken: sum('computeMs') / n,
      directReads: { zeroCopy: io1.zeroCopyReads - io0.zeroCopyReads - hookReads.zeroCopy, bounced: io1.bouncedReads - io0.bouncedReads - hookReads.bounced },
      ...(timeline ? { timeline } : {}),
    };
  } finally {
    await model.close();
  }
}

export async function benchOffload(s: OffloadSettings, progress: (msg: string) => void): Promise<OffloadBenchResult> {
  const start = performance.now();
  const loadBefore = loadavg()[0]!;
  let shape = s.shape;
  let note: string | undefined;
  const free = freeDiskBytes(tmpdir());
  if (free < 8e9 && !existsSync(modelPath(shape))) {
    note = `only ${(free / 1e9).toFixed(1)} GB free in ${tmpdir()}: the smaller ${OLMOE_LIKE_QUICK.nLayer}-layer model instead`;
    shape = OLMOE_LIKE_QUICK;
    progress(note);
  }
  const model = ensureOffloadModel(shape, progress);
  if (model.created) progress(`generated in ${model.seconds.toFixed(1)} s`);
  const file = GGUFFile.open(model.path);
  const locator = new ExpertLocator(file);
  const resident = residentBytesPerToken(file);
  file.close();
  const expertBytes = locator.expertBytes(0, 0);
  const computedExperts = locator.expertUsedCount * locator.layers * expertBytes;

  progress('read bandwidth: dropping the page cache');
  const dropError = dropPageCache();
  let sequentialColdRead: ReadBandwidth | null = null;
  if (dropError === null) {
    const maxBytes = s.quick ? 256 * MiB : 1024 * MiB;
    progress(`read bandwidth: sequential cold read of ${maxBytes / MiB} MiB (buffered)`);
    sequentialColdRead = { what: `sequential buffered read of ${maxBytes / MiB} MiB after dropping the page cache`, gbps: summarize([await sequentialRead(model.path, model.bytes, maxBytes)]) };
  }
  progress(`read bandwidth: ${s.bandwidthExperts} random experts with O_DIRECT, ${locator.expertUsedCount} at a time`);
  const directRead: ReadBandwidth = { what: `O_DIRECT reads of random expert ranges (${s.bandwidthExperts} experts/pass, ${locator.expertUsedCount} in flight)`, gbps: null };
  try {
    directRead.gbps = await expertReadBandwidth(model.path, locator, true, s.bandwidthExperts, 2);
  } catch (err) {
    directRead.note = `n/a (${errorText(err)})`;
  }
  progress('read bandwidth: the same from the page cache');
  const pageCacheRead: ReadBandwidth = {
    what: `buffered reads of random expert ranges already in the page cache (${s.bandwidthExperts} experts/pass)`,
    gbps: await expertReadBandwidth(model.path, locator, false, s.bandwidthExperts, 3),
  };
  progress(`expert FFN throughput: 1 thread, 1 token, ${s.kernelExperts} experts in rotation`);
  const ffnExperts = await loadFfnExperts(model.path, locator, s.kernelExperts);
  // One pool per thread count for every FFN measurement of the run (its workers stay up between them).
  const ffnPoolOne = new ExpertPool({ threads: 1 });
  const ffnPool = new ExpertPool({ threads: s.threads });
  const expertFfnGbps = await expertFfnThroughput(ffnExperts, ffnPoolOne, s.quick);
  await ffnPoolOne.close();
  progress(`expert FFN throughput: ${s.threads} threads at once, 1 token, ${s.kernelExperts} experts in rotation`);
  const expertFfnAllThreadsGbps = await expertFfnThroughput(ffnExperts, ffnPool, s.quick);

  // The attention streams the K/V cache too (f16, generate's default): every layer's K and V rows of every
  // position up to the token's own. Known once a row has encoded the prompt; the same for every row.
  let kvCache = 0;
  const kvBytesPerToken = (promptTokens: number): number => {
    const meanPositions = promptTokens + s.warmupTokens + (s.timedTokens + 1) / 2;
    return shape.nLayer * 2 * shape.nEmbd * 2 * meanPositions; // nHeadKv x headDim = nEmbd here (no GQA)
  };
  const runs: [number, DecodeRow['io'], boolean][] = [
    ...s.ramCachePercents.map((p): [number, DecodeRow['io'], boolean] => [p, 'direct', false]),
    ...s.prefetchPercents.map((p): [number, DecodeRow['io'], boolean] => [p, 'direct', true]),
    // Page-cache rows run as `generate` does by default: buffered reads, prefetching below 100%.
    ...s.pageCachePercents.map((p): [number, DecodeRow['io'], boolean] => [p, 'page cache', p < 100]),
  ];
  const runsOf: DecodeRow[][] = runs.map(() => []);
  try {
    for (let rep = 0; rep < s.repeats; rep++) {
      const order = rep % 2 === 0 ? [...runs.keys()] : [...runs.keys()].reverse();
      for (const ri of order) runsOf[ri]!.push(await decodeRow(ri, rep));
    }
  } finally {
    await ffnPool.close();
  }
  // Each row: its run with the median ratio (for an even count the higher middle one: no flattering), and every ratio.
  const rows = runsOf.map((runsOfRow) => {
    const byRatio = [...runsOfRow].sort((a, b) => a.ratio - b.ratio);
    const median = byRatio[byRatio.length >> 1]!;
    return s.repeats > 1 ? { ...median, ratioRuns: runsOfRow.map((r) => r.ratio) } : median;
  });

  async function decodeRow(ri: number, rep: number): Promise<DecodeRow> {
    const [percent, io, prefetch] = runs[ri]!;
    const direct = io === 'direct';
    // Page-cache rows are the cold case the read bound assumes: the page cache is dropped right before
    // each probe and slice, right after each slice and right before the timed tokens (the prompt and
    // the warm-up tokens read nearly every expert). Where dropping is not permitted, the state is unknown.
    let pageCache: DecodeRow['pageCache'] = direct ? undefined : (dropError === null ? 'cold' : 'unknown');
    const drop = (): void => {
      if (pageCache !== 'cold') return;
      const err = dropPageCache();
      if (err !== null) { pageCache = 'unknown'; progress(`page cache drop failed (${err}): this row's page cache state is unknown`); }
    };
    progress(`decode: RAM cache ${percent}%, misses read ${direct ? 'with O_DIRECT' : `through the page cache (${pageCache === 'cold' ? 'dropped: cold' : 'not dropped: state unknown'})`}`
      + `${prefetch ? ', next layer prefetched' : ''} (read bandwidth probed before, every ${s.probeSliceEveryTokens} timed tokens, and after)`);
    const probe = await RowReadProbe.open(model.path, locator, direct, 300 + ri + 1000 * rep, s.rowProbeExperts).catch(() => null);
    const sample = async (count: number): Promise<ProbeSample | null> => (probe ? probe.read(count).catch(() => null) : null);
    let r: Awaited<ReturnType<typeof decodeRun>>, before: ProbeSample | null, after: ProbeSample | null;
    let ffnBefore: Summary, ffnAfter: Summary;
    const slices: (ProbeSample | null)[] = [];
    try {
      drop();
      before = await sample(s.rowProbeExperts);
      // The compute rate too is probed right before and right after the row: the machine's speed drifts
      // within a run (a shared VM), and the bound should be what the machine gave while the row ran.
      ffnBefore = await expertFfnThroughput(ffnExperts, ffnPool, true);
      r = await decodeRun(model.path, percent, io, prefetch, s, {
        beforeTimed: drop,
        betweenTimed: async (timed) => {
          if (timed % s.probeSliceEveryTokens !== 0) return;
          // Cold slice, then dropped again so the decode does not find the slice's experts cached.
          drop();
          slices.push(await sample(locator.expertUsedCount));
          drop();
        },
      });
      ffnAfter = await expertFfnThroughput(ffnExperts, ffnPool, true);
      drop();
      after = await sample(s.rowProbeExperts);
    } finally {
      probe?.close();
    }
    // All probes of the row together: total bytes / total time (the byte-weighted harmonic mean).
    const ok = [before, ...slices, after].filter((x): x is ProbeSample => x !== null && x.bytes > 0);
    const combined = gbpsOf(ok.length ? ok.reduce((a, x) => ({ bytes: a.bytes + x.bytes, ms: a.ms + x.ms })) : null);
    // Cold page-cache rows read from the disk: their fallback and old figure is the disk's, not the hot page cache's.
    const globalBw = (direct || pageCache === 'cold' ? directRead.gbps : pageCacheRead.gbps)?.median ?? Infinity;
    const bw = Number.isFinite(combined) ? combined : globalBw;
    const readBoundMs = r.bytesReadPerToken / (bw * 1e9) * 1000;
    kvCache = kvBytesPerToken(r.promptTokens);
    // Equal work before and after: the combined rate is their harmonic mean.
    const ffnCombined = 2 / (1 / ffnBefore.median + 1 / ffnAfter.median);
    const computeBoundMs = (computedExperts + resident + kvCache) / (ffnCombined * 1e9) * 1000;
    const boundMs = Math.max(readBoundMs, computeBoundMs);
    return { ...r, ...(pageCache ? { pageCache } : {}), readBoundMs, computeBoundMs, boundMs, ratio: r.msPerToken.median / boundMs,
      rowReadGbps: { before: gbpsOf(before), after: gbpsOf(after), slices: slices.map(gbpsOf), combined },
      rowFfnGbps: { before: ffnBefore.median, after: ffnAfter.median, combined: ffnCombined },
      readBoundMsGlobalBandwidth: r.bytesReadPerToken / (globalBw * 1e9) * 1000 };
  }
  return {
    model: { path: model.path, fileBytes: model.bytes, created: model.created, generateSeconds: model.seconds, shape, note },
    threads: s.threads, expertBytes,
    computedBytesPerToken: { experts: computedExperts, resident, kvCache, total: computedExperts + resident + kvCache },
    pageCacheDrop: dropError === null ? 'dropped (echo 1 > /proc/sys/vm/drop_caches)' : `not permitted: ${dropError}`,
    probeSliceEveryTokens: s.probeSliceEveryTokens,
    sequentialColdRead, directRead, pageCacheRead, expertFfnGbps, expertFfnAllThreadsGbps, rows, loadAverage: { before: loadBefore, after: loadavg()[0]! },
    seconds: (performance.now() - start) / 1000,
  };
}

export function offloadTable(r: OffloadBenchResult): string {
  const f = (v: number, d = 2) => v.toFixed(d);
  const mb = (b: number) => f(b / 1e6, 1);
  const sh = r.model.shape;
  const viaOf = (x: DecodeRow) => `${x.io}${x.pageCache ? (x.pageCache === 'cold' ? ', cold' : ', state unknown') : ''}${x.prefetch ? ' + prefetch' : x.ramCachePercent < 100 ? ', no prefetch' : ''}`;
  const bwLine = (b: ReadBandwidth | null) => (b?.gbps ? `${f(b.gbps.median)} GB/s [${f(b.gbps.min)}..${f(b.gbps.max)}]` : (b?.note ?? 'n/a'));
  const lines = [
    `moe-offload offload bench: ${sh.nLayer} layers, ${sh.nExpert} experts of ${sh.nEmbd}x${sh.nFf} (${mb(r.expertBytes)} MB q4_0), top-${sh.nUsed}, ${r.threads} threads`,
    `model ${r.model.path} (${f(r.model.fileBytes / 1e9)} GB, ${r.model.created ? `generated in ${f(r.model.generateSeconds, 1)} s` : 'reused'})${r.model.note ? `; ${r.model.note}` : ''}`,
    `page cache: ${r.pageCacheDrop}`,
    ...(r.sequentialColdRead ? [`sequential cold read: ${bwLine(r.sequentialColdRead)} (${r.sequentialColdRead.what})`] : []),
    `disk read:        ${bwLine(r.directRead)} (${r.directRead.what})`,
    `page-cache read:  ${bwLine(r.pageCacheRead)} (${r.pageCacheRead.what}; information only: page-cache rows are decoded cold)`,
    `expert FFN:       ${f(r.expertFfnGbps.median)} GB/s [${f(r.expertFfnGbps.min)}..${f(r.expertFfnGbps.max)}] one thread alone (gate+up+down matmuls, 1 token, experts from RAM)`,
    `                  ${f(r.expertFfnAllThreadsGbps.median)} GB/s [${f(r.expertFfnAllThreadsGbps.min)}..${f(r.expertFfnAllThreadsGbps.max)}] ${r.threads} threads at once, together (${f(r.expertFfnAllThreadsGbps.median / r.expertFfnGbps.median)}x one thread: they share the memory bus)`,
    `computed per token: ${mb(r.computedBytesPerToken.total)} MB = experts ${mb(r.computedBytesPerToken.experts)} (k x layers x expert) + resident ${mb(r.computedBytesPerToken.resident)} (attention, routers, output) + KV cache ${mb(r.computedBytesPerToken.kvCache)} (f16 K and V the attention reads, mean over the timed tokens)`,
    'bound = max(read MB/token / the row\'s bound GB/s, computed MB/token / the row\'s FFN GB/s); ratio = median ms/token / bound',
    'FFN GB/s = expert FFN of all threads at once, probed right before and right after the row (harmonic mean)',
    'row GB/s = the decode\'s read path (O_DIRECT or buffered, as the row) probed right before / during / right after that row: during = slices of',
    `k experts read after every ${r.probeSliceEveryTokens} timed tokens, outside the token timing (harmonic mean); bound GB/s = all their bytes / all their time, the read bound's rate`,
    r.pageCacheDrop.startsWith('dropped')
      ? 'page cache, cold: the page cache dropped right before each probe and slice, after each slice and before the timed tokens, so misses read the disk'
      : 'page cache, state unknown: dropping the page cache is not permitted here, so probes and misses may find pages cached (the bound assumes disk reads)',
    '',
  ];
  const header = ['RAM cache', 'misses via', 'row GB/s', 'bound GB/s', 'FFN GB/s', 'tok/s', 'ms/tok', 'min', 'max', 'hit %', 'read MB/tok', 'stall ms', 'experts ms', 'worker ms', 'other ms', 'read bnd', 'comp bnd', 'ratio', ''];
  const rows = [header, ...r.rows.map((x) => [
    `${x.ramCachePercent}% ${f(x.ramCacheBytes / 1e9)} GB`, viaOf(x), `${f(x.rowReadGbps.before)}/${f(harmonic(x.rowReadGbps.slices))}/${f(x.rowReadGbps.after)}`, f(x.rowReadGbps.combined), f(x.rowFfnGbps.combined), f(x.tokensPerS), f(x.msPerToken.median, 1), f(x.msPerToken.min, 1), f(x.msPerToken.max, 1),
    f(100 * x.hitRate, 1), mb(x.bytesReadPerToken), f(x.stallMsPerToken, 1), f(x.expertWallMsPerToken, 1), f(x.computeMsPerToken, 1),
    f(x.msPerToken.median - x.expertWallMsPerToken, 1), f(x.readBoundMs, 1), f(x.computeBoundMs, 1),
    x.ratioRuns ? `${f(x.ratio)} [${x.ratioRuns.map((v) => f(v)).join(' ')}]` : f(x.ratio),
    x.ratio <= TARGET_RATIO ? 'met' : `NOT met (target <= ${TARGET_RATIO})`,
  ])];
  const widths = header.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  for (const row of rows) lines.push(row.map((c, i) => (i <= 2 || i === row.length - 1 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd());
  if (r.rows.some((x) => x.ratioRuns)) lines.push('each row: the run with the median ratio of [every run\'s ratio, in run order]; rows ran forward, then in reverse, and so on');
  lines.push('per token: experts ms = wall time of the MoE expert stages; worker ms = time computing experts (with 2+ threads the');
  lines.push('wall time of the batches, each one native call on all threads); other ms = ms/tok - experts ms (attention, norms,');
  lines.push('routers, output)');
  for (const x of r.rows) {
    if (!x.prefetch) continue;
    const p = x.prefetch;
    lines.push(`prefetch, ${x.ramCachePercent}% ${x.io}: ${p.used}/${p.issued} prefetched experts used, ${p.wasted} evicted unused, in the timed tokens`
      + ` (${f(p.issued / Math.max(1, x.msPerToken.samples), 1)} issued/token)`);
  }
  for (const x of r.rows) {
    if (!x.timeline?.length) continue;
    const n = x.timeline.length;
    const avg = (g: (t: TokenTimeline) => number) => f(x.timeline!.reduce((a, t) => a + g(t), 0) / n, 1);
    lines.push(`timeline, ${x.ramCachePercent}% ${x.io}, ${n} extra tokens (ms/token, reads timed on the pool threads): ${avg((t) => t.ms)} ms, disk idle ${avg((t) => t.diskIdle.totalMs)} ms =`);
    lines.push(`  between expert stages (attention, norms, routers) ${avg((t) => t.diskIdle.betweenLayersMs)} + stages without reads ${avg((t) => t.diskIdle.noReadStagesMs)}`
      + ` + routing->first read ${avg((t) => t.diskIdle.beforeFirstReadMs)} (of which before the first load was issued ${avg((t) => t.diskIdle.beforeFirstLoadIssuedMs)}) + gaps between reads ${avg((t) => t.diskIdle.gapsMs)} + last read->stage end ${avg((t) => t.diskIdle.afterLastReadMs)};`
      + ` reads in flight while reading ${avg((t) => t.meanReadsInFlight)}, at ${f(x.timeline.reduce((a, t) => a + t.gbpsWhileReading, 0) / n)} GB/s`);
    lines.push(`  direct reads in the timed tokens: ${x.directReads.zeroCopy} into the slot, ${x.directReads.bounced} through a scratch buffer`);
  }
  lines.push(`offload part took ${f(r.seconds, 1)} s; load average ${f(r.loadAverage.before)} before, ${f(r.loadAverage.after)} after (${r.threads} cores; others' load slows every number)`);
  return `${lines.join('\n')}\n`;
}
