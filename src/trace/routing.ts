// Routing of a whole trace in memory, in the compact form the metrics work on: per sequence one
// Int32Array of expert ids laid out [token][layer][slot] (k slots, router order). 1M token-layers of
// top-8 routing is 32 MB.
import { UsageError } from '../model/errors.js';

export interface SequenceRouting {
  /** The sequence id from the trace. */
  seq: number;
  tokens: number;
  /** tokens * layers * k expert ids (0..experts-1), token-major, then layer, then router order. */
  ids: Int32Array;
}

export interface RoutingData {
  layers: number;
  experts: number;
  /** Experts selected per token and layer. */
  k: number;
  sequences: SequenceRouting[];
}

/** Total number of tokens over all sequences. */
export function tokenCount(r: RoutingData): number {
  let n = 0;
  for (const s of r.sequences) n += s.tokens;
  return n;
}

/**
 * Collects token selections (in any sequence order; tokens of one sequence in position order, or sorted
 * by position at the end) into RoutingData. Checks the shape of every token: the same layer count and k
 * as the first token, integer ids, no repeated id within one layer's selection.
 */
export class RoutingBuilder {
  private layers = -1;
  private k = -1;
  private maxId = -1;
  private readonly bySeq = new Map<number, { ids: Int32Array; tokens: number; pos: number[]; sorted: boolean }>();

  /** experts[l] = layer l's selection. `where` names the input position for error messages. */
  add(seq: number, pos: number, experts: readonly (readonly number[])[], where = ''): void {
    const at = where ? `${where}: ` : '';
    if (this.layers < 0) {
      if (experts.length === 0) throw new UsageError(`${at}token with no layers`, 'each token needs "experts": [[ids of layer 0], ...]');
      this.layers = experts.length;
      this.k = experts[0]!.length;
      if (this.k === 0) throw new UsageError(`${at}token selects no experts`, 'each layer needs at least one expert id');
    }
    if (experts.length !== this.layers) {
      throw new UsageError(`${at}token has ${experts.length} layers, earlier tokens have ${this.layers}`, 'every token must list every MoE layer');
    }
    let s = this.bySeq.get(seq);
    if (!s) {
      s = { ids: new Int32Array(64 * this.layers * this.k), tokens: 0, pos: [], sorted: true };
      this.bySeq.set(seq, s);
    }
    const width = this.layers * this.k;
    if ((s.tokens + 1) * width > s.ids.length) {
      const grown = new Int32Array(s.ids.length * 2);
      grown.set(s.ids);
      s.ids = grown;
    }
    let o = s.tokens * width;
    for (let l = 0; l < this.layers; l++) {
      const sel = experts[l]!;
      if (sel.length !== this.k) {
        throw new UsageError(`${at}layer ${l} selects ${sel.length} experts, earlier selections have ${this.k}`, 'every layer must select the same number of experts (k)');
      }
      for (let j = 0; j < this.k; j++) {
        const e = sel[j]!;
        if (!Number.isInteger(e) || e < 0 || e > 0x7fffffff) throw new UsageError(`${at}layer ${l} has a bad expert id ${JSON.stringify(e)}`, 'expert ids are non-negative integers');
        for (let i = 0; i < j; i++) if (sel[i] === e) throw new UsageError(`${at}layer ${l} selects expert ${e} twice`, 'a layer selects k distinct experts');
        if (e > this.maxId) this.maxId = e;
        s.ids[o++] = e;
      }
    }
    if (s.pos.length > 0 && pos <= s.pos[s.pos.length - 1]!) s.sorted = false;
    s.pos.push(pos);
    s.tokens++;
  }

  /** The largest expert id seen so far (-1 if none). */
  get largestId(): number {
    return this.maxId;
  }

  /** Sequences in ascending id order, tokens in position order. `experts` defaults to the largest id + 1. */
  finish(experts?: number): RoutingData {
    if (this.layers < 0) throw new UsageError('the trace has no tokens', 'record or import a trace with at least one token');
    const E = experts ?? this.maxId + 1;
    if (this.maxId >= E) throw new UsageError(`the trace uses expert ${this.maxId} but the expert count is ${E}`, 'give a larger --experts or leave it out');
    const width = this.layers * this.k;
    const sequences: SequenceRouting[] = [];
    for (const seq of [...this.bySeq.keys()].sort((a, b) => a - b)) {
      const s = this.bySeq.get(seq)!;
      let ids = s.ids.subarray(0, s.tokens * width);
      if (!s.sorted) {
        const order = s.pos.map((p, i) => [p, i] as const).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
        const sorted = new Int32Array(ids.length);
        order.forEach(([, from], to) => sorted.set(ids.subarray(from * width, (from + 1) * width), to * width));
        ids = sorted;
      }
      sequences.push({ seq, tokens: s.tokens, ids });
    }
    return { layers: this.layers, experts: E, k: this.k, sequences };
  }
}

/** Builds RoutingData directly from nested arrays: seqs[s][t][l] = selection. For tests and small uses. */
export function routingFromArrays(seqs: readonly (readonly (readonly (readonly number[])[])[])[], experts?: number): RoutingData {
  const b = new RoutingBuilder();
  seqs.forEach((tokens, s) => tokens.forEach((t, pos) => b.add(s, pos, t)));
  return b.finish(experts);
}
