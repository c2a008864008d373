// Records a running model's routing as a trace (format.ts): the engine reports one routing decision per
// (layer, token) through LoadOptions.onRoute; the recorder gathers a token's MoE layers and writes the
// token as one line once every layer has arrived (and, when tiers are recorded, once every selected
// expert has been reported served). Memory: the tokens of the batch in flight.
//
// Wiring:
//   const rec = openTraceRecorder(path, readTraceModelInfo(modelPath), promptIds);
//   loadModel(modelPath, { onRoute: rec.route })            // routing
//   rec.serveExpert(layer, expert, tier, stallUs, rows?)    // optional: where each expert came from
//   rec.prefetch(layer, expert, read)                       // optional: OffloadOptions.onPrefetch
//   rec.close()                                             // renames PATH.partial to PATH
//
// One sequence at a time (onRoute does not say which sequence a token belongs to); nextSequence() starts
// the next one. A process that exits without close() still flushes the complete tokens to PATH.partial
// (exit handler); a killed one leaves every batch written before, which the readers accept.
//
// Batches: each token line carries "batch", the index of the eval call that processed it (the prompt is
// batch 0, each decode step the next). A batch starts when the first MoE layer routes again after a
// later layer routed or an expert was served; so with a single MoE layer and no tier reports, decode
// steps cannot be told apart and share one batch number.
import { basename } from 'node:path';
import { GGUFFile, getString, requireString } from '../model/gguf.js';
import { resolveArchitecture } from '../model/arch/index.js';
import { ExpertLocator, type TensorSource } from '../experts/locator.js';
import { slotBytesOf } from '../experts/host-cache.js';
import { TraceWriter, type TraceHeader, type TraceTokenRecord } from './format.js';
import type { Tier } from './import.js';

/** What the trace header says about the model, plus which blocks are MoE layers. */
export interface TraceModelInfo {
  model: string;
  architecture: string;
  /** Routed experts per layer. */
  experts: number;
  k: number;
  shared_experts: number;
  /** Bytes of one routed expert (gate + up + down). */
  expert_bytes: number;
  /** Bytes one expert takes in the RAM cache (each matrix padded to 64 bytes; the largest over layers). */
  slot_bytes: number;
  /** Block index of each MoE layer, ascending (trace layer l = block moeBlocks[l]). */
  moeBlocks: number[];
}

/** Header facts from a model's metadata and tensor index (a GGUFFile is one). */
export function traceModelInfo(source: TensorSource): TraceModelInfo {
  const architecture = requireString(source, 'general.architecture');
  const locator = new ExpertLocator(source, architecture);
  const moeBlocks: number[] = [];
  for (let b = 0; b < locator.layers; b++) if (locator.hasExperts(b)) moeBlocks.push(b);
  const fallbackName = source.path ? basename(source.path).replace(/\.gguf$/i, '') : 'unknown';
  return {
    model: getString(source, 'general.name') ?? fallbackName,
    architecture,
    experts: locator.expertCount,
    k: locator.expertUsedCount,
    shared_experts: resolveArchitecture(architecture).sharedExpert ? 1 : 0,
    expert_bytes: locator.maxExpertBytes(),
    slot_bytes: slotBytesOf(locator),
    moeBlocks,
  };
}

/** traceModelInfo of a GGUF file on disk (reads its header only). */
export function readTraceModelInfo(modelPath: string): TraceModelInfo {
  const file = GGUFFile.open(modelPath);
  try {
    return traceModelInfo(file);
  } finally {
    file.close();
  }
}

/** Where a record goes: a TraceWriter, or anything with its token/flush/close. */
export interface TokenSink {
  token(record: TraceTokenRecord): void;
  flush(): void;
  close(): void;
}

export interface RecorderOptions {
  /**
   * Expect tier and stall reports (serve/serveExpert) for every selected expert and wait for them before
   * writing a token. Tokens whose reports are incomplete when their batch ends are written without them.
   */
  tiers?: boolean;
}

interface PendingToken {
  pos: number;
  batch: number;
  experts: (number[] | undefined)[];
  weights: (number[] | undefined)[];
  tier: (Tier | undefined)[][] | undefined;
  stallUs: number[][] | undefined;
  layersSeen: number;
  /** Selections still without a tier report (when tiers are recorded). */
  unserved: number;
}

/**
 * The shortest decimal that reads back as the same float32: router weights are mixed as float32, so
 * this is exact and compact.
 */
export function compactF32(v: number): number {
  const f = Math.fround(v);
  if (!Number.isFinite(f) || f === 0) return f;
  for (let p = 1; p < 9; p++) {
    const d = Number(f.toPrecision(p));
    if (Math.fround(d) === f) return d;
  }
  return Number(f.toPrecision(9));
}

export class TraceRecorder {
  /** The sequence id written on token lines; nextSequence() advances it. */
  seq = 0;
  private readonly nLayers: number;
  /** block index -> trace layer index (-1: not a MoE layer). */
  private readonly layerOf: Int32Array;
  private readonly tiers: boolean;
  /** Tokens routed but not yet written, in arrival (= position) order. */
  private readonly pending = new Map<number, PendingToken>();
  /** Positions of the current batch routed through each trace layer, in batch row order (ExpertJob rows). */
  private readonly batchPositions: number[][];
  /** An event other than a first-layer route happened since the last first-layer route: the next one starts a batch. */
  private batchMoved = false;
  /** The current batch's prefetches per trace layer (read, and found cached); null until the batch has one. */
  private batchPrefetch: { read: number[][]; cached: number[][] } | null = null;
  /** The current batch's index in the sequence (its eval call): written as "batch" on token lines. */
  private batch = 0;
  private closed = false;
  private tokensWritten = 0;

  constructor(private readonly sink: TokenSink, moeBlocks: readonly number[], options: RecorderOptions = {}) {
    if (moeBlocks.length === 0) throw new Error('TraceRecorder: the model has no MoE layers');
    this.nLayers = moeBlocks.length;
    this.layerOf = new Int32Array(Math.max(...moeBlocks) + 1).fill(-1);
    moeBlocks.forEach((b, l) => { this.layerOf[b] = l; });
    this.tiers = options.tiers ?? false;
    this.batchPositions = Array.from({ length: this.nLayers }, () => []);
  }

  /** Token lines written so far. */
  get written(): number {
    return this.tokensWritten;
  }

  /** LoadOptions.onRoute: block `layer` routed the token at `position` to `experts` with `weights`. */
  readonly route = (layer: number, position: number, experts: readonly number[], weights: readonly number[]): void => {
    if (this.closed) return;
    const l = this.layerOf[layer] ?? -1;
    if (l < 0) return;
    if (l === 0) {
      if (this.batchMoved) {
        this.endBatch();
        this.batch++;
      }
      this.batchMoved = false;
    } else this.batchMoved = true;
    this.batchPositions[l]!.push(position);
    let t = this.pending.get(position);
    if (!t) {
      t = {
        pos: position, batch: this.batch, experts: new Array(this.nLayers), weights: new Array(this.nLayers),
        tier: this.tiers ? new Array(this.nLayers) : undefined, stallUs: this.tiers ? new Array(this.nLayers) : undefined,
        layersSeen: 0, unserved: 0,
      };
      this.pending.set(position, t);
    }
    if (t.experts[l] === undefined) t.layersSeen++;
    else if (t.tier) t.unserved -= t.tier[l]!.filter((x) => x === undefined).length; // routed twice: keep the latest
    t.experts[l] = [...experts];
    t.weights[l] = weights.map(compactF32);
    if (t.tier && t.stallUs) {
      t.tier[l] = new Array<Tier | undefined>(experts.length).fill(undefined);
      t.stallUs[l] = new Array<number>(experts.length).fill(0);
      t.unserved += experts.length;
    }
    this.writeReady();
  };

  /**
   * The expert `expert` of block `layer` was served from `tier`, the token at `position` waiting
   * `stallUs` microseconds for it. Ignored for a token or expert not routed there.
   */
  serve(layer: number, position: number, expert: number, tier: Tier, stallUs: number): void {
    if (this.closed || !this.tiers) return;
    const l = this.layerOf[layer] ?? -1;
    if (l < 0) return;
    this.batchMoved = true;
    const t = this.pending.get(position);
    const sel = t?.experts[l];
    if (!t || !sel) return;
    const j = sel.indexOf(expert);
    if (j < 0) return;
    if (t.tier![l]![j] === undefined) t.unserved--;
    t.tier![l]![j] = tier;
    t.stallUs![l]![j] = Math.max(0, Math.round(stallUs));
    this.writeReady();
  }

  /**
   * The dispatcher's form: expert `expert` of block `layer` was served from `tier` for the latest batch
   * routed through that layer. `rows` (row indices into that batch, as in an ExpertJob) limits it to
   * those tokens; without it, every token of the batch that selected the expert.
   */
  serveExpert(layer: number, expert: number, tier: Tier, stallUs: number, rows?: ArrayLike<number>): void {
    const l = this.layerOf[layer] ?? -1;
    if (l < 0 || this.closed || !this.tiers) return;
    const positions = this.batchPositions[l]!;
    if (rows) {
      for (let i = 0; i < rows.length; i++) {
        const p = positions[rows[i]!];
        if (p !== undefined) this.serve(layer, p, expert, tier, stallUs);
      }
    } else for (const p of [...positions]) this.serve(layer, p, expert, tier, stallUs);
  }

  /**
   * OffloadOptions.onPrefetch: during the current batch, prefetch started reading expert `expert` of
   * block `layer` (read) or found it already cached (!read). Written on the batch's token lines as
   * "prefetched" / "prefetch_cached" of that layer.
   */
  prefetch(layer: number, expert: number, read: boolean): void {
    if (this.closed) return;
    const l = this.layerOf[layer] ?? -1;
    if (l < 0) return;
    this.batchMoved = true;
    this.batchPrefetch ??= { read: Array.from({ length: this.nLayers }, () => []), cached: Array.from({ length: this.nLayers }, () => []) };
    (read ? this.batchPrefetch.read : this.batchPrefetch.cached)[l]!.push(expert);
  }

  /** Ends the current sequence (its tokens are written) and starts numbering the next one. */
  nextSequence(): void {
    this.endBatch();
    this.seq++;
    this.batch = 0;
    this.batchMoved = false;
  }

  /** Writes finished tokens and flushes the sink (complete tokens only: half-routed ones wait). */
  flush(): void {
    this.writeReady();
    this.sink.flush();
  }

  /** Writes every routed token (unfinished tier reports dropped) and closes the sink. */
  close(): void {
    if (this.closed) return;
    this.endBatch();
    this.closed = true;
    this.sink.close();
  }

  /** A new batch begins: every pending token is as complete as it will get. */
  private endBatch(): void {
    for (const t of this.pending.values()) this.write(t);
    this.pending.clear();
    for (const rows of this.batchPositions) rows.length = 0;
    this.batchPrefetch = null;
  }

  /** Writes tokens from the front of the queue while they are complete (keeps lines in position order). */
  private writeReady(): void {
    for (const t of this.pending.values()) {
      if (t.layersSeen < this.nLayers || t.unserved > 0) return;
      this.write(t);
      this.pending.delete(t.pos);
    }
  }

  private write(t: PendingToken): void {
    if (t.layersSeen < this.nLayers) return; // never fully routed (interrupted mid-forward)
    const rec: TraceTokenRecord = { seq: this.seq, pos: t.pos, batch: t.batch, experts: t.experts as number[][], weights: t.weights as number[][] };
    if (t.tier && t.unserved === 0) {
      rec.tier = t.tier as Tier[][];
      rec.stall_us = t.stallUs!;
    }
    // Prefetches of the batch all come before its tokens are complete (each layer's before its routing).
    if (this.batchPrefetch && t.batch === this.batch) {
      rec.prefetched = this.batchPrefetch.read.map((ids) => [...ids]);
      rec.prefetch_cached = this.batchPrefetch.cached.map((ids) => [...ids]);
    }
    this.sink.token(rec);
    this.tokensWritten++;
  }
}

/** Recorders still open: flushed if the process exits without closing them. */
const open = new Set<TraceRecorder>();
let exitHookInstalled = false;

/**
 * Starts recording to PATH.partial (renamed to PATH by close()) with the model's header and the prompt
 * ids (one array per sequence, or one array for a single prompt).
 */
export function openTraceRecorder(path: string, info: TraceModelInfo, promptIds: number[] | number[][], options: RecorderOptions = {}): TraceRecorder {
  const header: Omit<TraceHeader, 'format' | 'version'> = {
    model: info.model,
    architecture: info.architecture,
    layers: info.moeBlocks.length,
    experts: info.experts,
    k: info.k,
    shared_experts: info.shared_experts,
    prompt_ids: promptIds,
    expert_bytes: info.expert_bytes,
    slot_bytes: info.slot_bytes,
  };
  const writer = TraceWriter.create(path, header);
  const rec = new TraceRecorder({
    token: (r) => writer.token(r),
    flush: () => writer.flush(),
    close: () => {
      open.delete(rec);
      writer.close();
    },
  }, info.moeBlocks, options);
  open.add(rec);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // Synchronous, so it runs on process.exit() too: complete tokens reach PATH.partial, which stays
    // named .partial (the run did not finish).
    process.on('exit', () => {
      for (const r of open) {
        try {
          r.flush();
        } catch { /* exiting anyway */ }
      }
    });
  }
  return rec;
}
