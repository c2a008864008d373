// The moe-offload routing trace format (version 1): gzipped JSON lines. src/trace/FORMAT.md has the
// user-facing description; in short:
//
//   line 1:  {"format":"moe-offload-trace","version":1,"model":..,"architecture":..,"layers":L,
//             "experts":E,"k":K,"shared_experts":S,"prompt_ids":[..], optional "expert_bytes", "created", ...}
//   then one line per token and sequence step:
//            {"seq":0,"pos":5,"batch":3,"experts":[[..k ids..] x L],"weights":[[..] x L],
//             "tier":[["gpu"|"ram"|"disk" x k] x L],"stall_us":[[..] x L]}
//
// experts[l] is layer l's selection in router order; weights, tier and stall_us (optional) have the same
// shape. batch (optional) is the index of the eval call that processed the token within its sequence.
// prefetched / prefetch_cached (optional): per layer, the ids prefetch read / found cached during the
// token's batch (the same on every line of a batch). The plain import layout (import.ts) is the same
// token lines without the header.
//
// Streaming and crash safety: the writer appends to FILE.partial and renames it to FILE on close(). The
// lines are compressed in batches, each batch a complete gzip member (a gzip file may be a series of
// members; gunzip and zcat read them as one stream), written with one write call every FLUSH_TOKENS
// tokens or FLUSH_MS milliseconds. Memory is one batch. A run that dies leaves FILE.partial holding every
// batch written before: readable by zcat and by the reader, which also accepts a cut-off last member and
// returns the complete lines before the cut.
import { closeSync, createReadStream, fsyncSync, openSync, renameSync, statSync, writeSync } from 'node:fs';
import { createGunzip, constants as zlibConstants, gzipSync } from 'node:zlib';
import { FileAccessError, UnsupportedError, UsageError } from '../model/errors.js';
import { parseTokenLine, type TokenRecord } from './import.js';

export type { TokenRecord, Tier } from './import.js';

/** A token line as this format has it: the import layout's fields plus the optional batch index. */
export interface TraceTokenRecord extends TokenRecord {
  /** Index of the eval call (batch) that processed this token, within its sequence: 0 = the prompt. */
  batch?: number;
  /**
   * Per MoE layer, the experts the live cache started reading for that layer (prefetch) during this
   * token's batch, before the layer's lookups. The same on every line of a batch; absent: none.
   */
  prefetched?: number[][];
  /** Per MoE layer, the experts prefetch asked for that were already cached (it only marked them recently used). */
  prefetch_cached?: number[][];
}

/** The optional per-layer id lists a token line may carry besides "experts". */
export const PREFETCH_FIELDS = ['prefetched', 'prefetch_cached'] as const;

export const TRACE_FORMAT = 'moe-offload-trace';
export const TRACE_VERSION = 1;

export interface TraceHeader {
  format: typeof TRACE_FORMAT;
  version: number;
  model: string;
  architecture: string;
  /** MoE layers recorded (each token line has this many selections). */
  layers: number;
  /** Routed experts per layer. */
  experts: number;
  /** Experts selected per token and layer. */
  k: number;
  shared_experts: number;
  /** Token ids of the prompt(s); one array per sequence when several. */
  prompt_ids: number[] | number[][];
  /** Bytes of one routed expert (all its matrices), when known. */
  expert_bytes?: number;
  /** Bytes one expert takes in the live RAM cache (matrices padded to 64 bytes), when known. */
  slot_bytes?: number;
  /** ISO time the recording started. */
  created?: string;
  [extra: string]: unknown;
}

/** Tokens per gzip member, and the longest a written token waits before its member is flushed. */
const FLUSH_TOKENS = 256;
const FLUSH_MS = 1000;

export class TraceWriter {
  private readonly lines: string[] = [];
  private lastFlush = Date.now();
  private closed = false;

  private constructor(private readonly fd: number, readonly path: string, readonly partialPath: string) {}

  /** Starts PATH.partial with the header line; close() renames it to PATH. */
  static create(path: string, header: Omit<TraceHeader, 'format' | 'version'>): TraceWriter {
    const partialPath = `${path}.partial`;
    let fd: number;
    try {
      fd = openSync(partialPath, 'w');
    } catch (err) {
      throw new FileAccessError(`cannot write trace file '${partialPath}': ${(err as Error).message}`, 'choose a writable --trace path');
    }
    const w = new TraceWriter(fd, path, partialPath);
    w.lines.push(JSON.stringify({ format: TRACE_FORMAT, version: TRACE_VERSION, created: new Date().toISOString(), ...header }));
    w.flush();
    return w;
  }

  /** Records one token of one sequence. */
  token(record: TraceTokenRecord): void {
    if (this.closed) throw new Error('TraceWriter.token after close');
    this.lines.push(JSON.stringify(record));
    if (this.lines.length >= FLUSH_TOKENS || Date.now() - this.lastFlush >= FLUSH_MS) this.flush();
  }

  /** Writes the buffered lines as one complete gzip member. */
  flush(): void {
    this.lastFlush = Date.now();
    if (this.lines.length === 0) return;
    const member = gzipSync(`${this.lines.join('\n')}\n`);
    this.lines.length = 0;
    let off = 0;
    while (off < member.length) off += writeSync(this.fd, member, off);
  }

  /** Flushes, syncs and renames PATH.partial to PATH. */
  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    fsyncSync(this.fd);
    closeSync(this.fd);
    renameSync(this.partialPath, this.path);
  }
}

export interface ReadProgress {
  /** Bytes of the file read so far, and its size. */
  (bytesRead: number, totalBytes: number): void;
}

/**
 * The lines of a trace file, gzipped (any number of members, the last possibly cut off) or plain, with
 * their 1-based numbers. A last line with no newline is returned with `last: true`, so callers can treat a
 * cut-off line as the end of a truncated file rather than as an error.
 */
export async function* readLines(path: string, onProgress?: ReadProgress): AsyncGenerator<{ text: string; line: number; last: boolean }> {
  let size: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new Error('not a regular file');
    size = st.size;
  } catch (err) {
    throw new FileAccessError(`cannot read trace '${path}': ${(err as Error).message}`, 'give the path of a trace file (.jsonl or .jsonl.gz)');
  }
  const raw = createReadStream(path);
  let read = 0;
  let gzipped = false;
  const chunks = (async function* () {
    for await (const chunk of raw as AsyncIterable<Buffer>) {
      read += chunk.length;
      onProgress?.(read, size);
      yield chunk;
    }
  })();
  async function* body(): AsyncGenerator<Buffer> {
    const it = chunks[Symbol.asyncIterator]();
    const head = await it.next();
    if (head.done) return;
    gzipped = head.value.length >= 2 && head.value[0] === 0x1f && head.value[1] === 0x8b;
    if (!gzipped) {
      yield head.value;
      for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
      return;
    }
    // Sync-flush finishing makes a cut-off gzip stream end quietly after its last complete block.
    const gunzip = createGunzip({ finishFlush: zlibConstants.Z_SYNC_FLUSH });
    const feed = (async () => {
      try {
        gunzip.write(head.value);
        for (let r = await it.next(); !r.done; r = await it.next()) {
          if (!gunzip.write(r.value)) await new Promise((res) => gunzip.once('drain', res));
        }
        gunzip.end();
      } catch (err) {
        gunzip.destroy(err as Error);
      }
    })();
    try {
      for await (const out of gunzip as AsyncIterable<Buffer>) yield out;
    } catch (err) {
      // A damaged (not merely cut-off) member: keep what came before it.
      if (!/unexpected end|incorrect header check|invalid/i.test((err as Error).message)) throw err;
    }
    await feed;
  }
  let rest = '';
  let line = 0;
  try {
    for await (const buf of body()) {
      const text = rest + buf.toString('utf8');
      const parts = text.split('\n');
      rest = parts.pop()!;
      for (const p of parts) {
        line++;
        yield { text: p, line, last: false };
      }
    }
  } finally {
    raw.destroy();
  }
  if (rest.length > 0) yield { text: rest, line: line + 1, last: true };
}

export interface OpenedTrace {
  /** Our header, or null for the plain import layout. */
  header: TraceHeader | null;
  /** The token records in file order. */
  records: AsyncGenerator<TraceTokenRecord>;
  /** Set once `records` is exhausted: whether the file ended in a cut-off line (an interrupted run). */
  readonly truncated: boolean;
  /** The line number of the record last returned. */
  readonly line: number;
}

/** parseTokenLine plus the optional "batch" (a non-negative integer). */
function parseTraceTokenLine(obj: unknown, where: string): TraceTokenRecord {
  const rec: TraceTokenRecord = parseTokenLine(obj, where);
  const batch = (obj as { batch?: unknown }).batch;
  if (batch !== undefined) {
    if (typeof batch !== 'number' || !Number.isInteger(batch) || batch < 0) {
      throw new UsageError(`${where}: "batch" must be a non-negative integer, got ${JSON.stringify(batch)}`, 'leave "batch" out, or give the index of the eval call that processed the token');
    }
    rec.batch = batch;
  }
  for (const name of PREFETCH_FIELDS) {
    const v = (obj as Record<string, unknown>)[name];
    if (v !== undefined) rec[name] = parseLayerIdLists(v, rec.experts.length, name, where);
  }
  return rec;
}

/** One array of expert ids (non-negative integers, any count) per layer. */
function parseLayerIdLists(v: unknown, layers: number, name: string, where: string): number[][] {
  const hint = `"${name}" must hold one array of expert ids per MoE layer (${layers}), e.g. [[12, 40], [], ...]; leave it out if unknown`;
  if (!Array.isArray(v) || v.length !== layers) throw new UsageError(`${where}: "${name}" must have one array per layer (${layers})`, hint);
  v.forEach((row, l) => {
    if (!Array.isArray(row)) throw new UsageError(`${where}: "${name}"[${l}] is ${JSON.stringify(row)}, not an array of expert ids`, hint);
    row.forEach((x, j) => {
      if (typeof x !== 'number' || !Number.isInteger(x) || x < 0) throw new UsageError(`${where}: "${name}"[${l}][${j}] is ${JSON.stringify(x)}, not an expert id`, hint);
    });
  });
  return v as number[][];
}

function isHeader(obj: unknown): obj is TraceHeader {
  return typeof obj === 'object' && obj !== null && (obj as { format?: unknown }).format === TRACE_FORMAT;
}

function checkHeader(h: TraceHeader, where: string): void {
  if (typeof h.version !== 'number' || h.version > TRACE_VERSION) {
    throw new UnsupportedError(`${where}: trace format version ${String(h.version)} is newer than this tool reads (${TRACE_VERSION})`, 'upgrade moe-offload');
  }
  for (const key of ['layers', 'experts', 'k'] as const) {
    if (!Number.isInteger(h[key]) || (h[key] as number) < 1) throw new UsageError(`${where}: header field "${key}" must be a positive integer`, 'the header line is damaged; re-record the trace');
  }
}

/**
 * Opens a trace in our format or in the plain import layout (detected from the first line). Token lines
 * are checked as they are read; a bad line throws UsageError naming the file and line.
 */
export async function openTrace(path: string, onProgress?: ReadProgress): Promise<OpenedTrace> {
  const lines = readLines(path, onProgress);
  let truncated = false;
  let current = 0;
  // Every non-empty line's JSON value; an unparsable last line is a trace cut off mid-write and ends it.
  async function* values(): AsyncGenerator<{ obj: unknown; line: number }> {
    for await (const { text, line, last } of lines) {
      if (text.trim() === '') continue;
      let obj: unknown;
      try {
        obj = JSON.parse(text);
      } catch {
        if (last) {
          truncated = true;
          return;
        }
        throw new UsageError(`${path}:${line}: not a JSON object`, 'each line of a trace is one JSON object');
      }
      yield { obj, line };
    }
  }
  const it = values();
  // The first line tells the layouts apart: our header, or already a token line.
  let header: TraceHeader | null = null;
  let pending: TraceTokenRecord | null = null;
  const first = await it.next();
  if (!first.done) {
    const { obj, line } = first.value;
    if (isHeader(obj)) {
      checkHeader(obj, `${path}:${line}`);
      header = obj;
    } else pending = parseTraceTokenLine(obj, `${path}:${line}`);
    current = line;
  }
  async function* records(): AsyncGenerator<TraceTokenRecord> {
    if (pending) yield pending;
    for await (const { obj, line } of it) {
      const rec = parseTraceTokenLine(obj, `${path}:${line}`);
      if (header && rec.experts.length !== header.layers) {
        throw new UsageError(`${path}:${line}: token has ${rec.experts.length} layers, the header says ${header.layers}`, 'the trace is damaged; re-record it');
      }
      current = line;
      yield rec;
    }
  }
  return {
    header,
    records: records(),
    get truncated() {
      return truncated;
    },
    get line() {
      return current;
    },
  };
}
