// The mixture-of-experts FFN of one layer for a batch of tokens: route every token, group the tokens
// by expert, run each chosen expert ONCE on all of its tokens (one native matmul per matrix), then
// combine each token's k expert outputs in its own selection order, as llama.cpp sums them.
import { route, type Route } from './router.js';
import type { Weight } from './weights.js';
import type { ExpertMatrix } from '../experts/locator.js';
import type { ExpertRunner } from '../experts/dispatcher.js';
import { expertFfnBytes as expertFfn } from '../experts/ffn.js';
import { moeCombine } from '../native/index.js';

/** down · (silu(gate · x) * (up · x)) for nTokens rows of x: the one definition, which the offloading workers run too. */
export { expertFfn };

/** Where expert matrices come from. May read them from disk on demand, hence possibly async. */
export interface ExpertWeights {
  matrix(layer: number, expert: number, which: ExpertMatrix): Weight | Promise<Weight>;
}

export interface SharedExpert {
  /** ffn_gate_inp_shexp as a 1-row weight: sigmoid of its output scales the shared expert. */
  gateInp: Weight;
  gate: Weight;
  up: Weight;
  down: Weight;
}

export interface MoeLayerParams {
  layer: number;
  nEmbd: number;
  nExpert: number;
  nExpertUsed: number;
  normalize: boolean;
  threads: number;
  router: Weight;
  shared?: SharedExpert;
  experts: ExpertWeights;
  /**
   * When set, the routed experts are handed to it (offloading: RAM cache, reads, worker pool) instead
   * of being computed here from `experts`; the results are combined the same way, so they are identical.
   */
  runner?: ExpertRunner & { prefetch?(layer: number, experts: readonly number[]): void };
  /**
   * Experts predicted for a later layer: handed to runner.prefetch right after this layer's experts
   * went to the runner (so this layer's own reads are queued first), before waiting for them.
   */
  prefetch?: { layer: number; experts: readonly number[] };
  /** Called once per token with its selection (position = absolute position in the sequence). */
  onRoute?: (layer: number, position: number, experts: number[], weights: number[]) => void;
  /** Absolute position of the first token of the batch. */
  start: number;
}

/** x: nTokens rows of nEmbd (the ffn-normed hidden state). Returns the layer's FFN output, same shape. */
export async function moeForward(x: Float32Array, nTokens: number, p: MoeLayerParams): Promise<Float32Array> {
  const { nEmbd, nExpert, nExpertUsed: k, threads } = p;
  const logits = p.router.matmul(x, nTokens, threads);
  const routes: Route[] = [];
  for (let t = 0; t < nTokens; t++) {
    const r = route(logits, t * nExpert, nExpert, k, p.normalize);
    routes.push(r);
    p.onRoute?.(p.layer, p.start + t, r.experts, r.weights);
  }

  // tokensOf[e] = [(token, slot)] for every token that chose expert e in selection slot `slot`
  const tokensOf: { token: number; slot: number }[][] = Array.from({ length: nExpert }, () => []);
  routes.forEach((r, t) => r.experts.forEach((e, slot) => tokensOf[e]!.push({ token: t, slot })));

  // The combine reads every expert's output rows in place: offsets[t*k + slot] is where token t's slot-th
  // expert row starts in one Float32Array (the runner's shared output buffer, else a concatenation).
  const weights = new Float32Array(nTokens * k);
  routes.forEach((r, t) => weights.set(r.weights, t * k));
  const used = tokensOf.map((users, e) => ({ users, e })).filter(({ users }) => users.length > 0);
  let ys: Float32Array[];
  if (p.runner) {
    const running = p.runner.runExperts(p.layer, x, nEmbd, used.map(({ users, e }) => ({ expert: e, rows: Int32Array.from(users, (u) => u.token) })));
    if (p.prefetch) p.runner.prefetch?.(p.prefetch.layer, p.prefetch.experts);
    ys = await running;
  } else {
    ys = [];
    for (const { users, e } of used) {
      const [gate, up, down] = await Promise.all([
        p.experts.matrix(p.layer, e, 'gate'), p.experts.matrix(p.layer, e, 'up'), p.experts.matrix(p.layer, e, 'down'),
      ]);
      const batch = new Float32Array(users.length * nEmbd);
      users.forEach((u, i) => batch.set(x.subarray(u.token * nEmbd, (u.token + 1) * nEmbd), i * nEmbd));
      ys.push(expertFfn(gate, up, down, batch, users.length, threads));
    }
  }
  used.forEach(({ users, e }, i) => {  // rows are read in place below: a short result must not read its neighbour's
    if (ys[i]?.length !== users.length * nEmbd) {
      throw new Error(`expert ${e} of layer ${p.layer}: ${ys[i]?.length ?? 'no'} output values for ${users.length} rows of ${nEmbd}`);
    }
  });
  const { all, starts } = backToBack(ys);
  const offsets = new Int32Array(nTokens * k);
  used.forEach(({ users }, i) => users.forEach((u, j) => { offsets[u.token * k + u.slot] = starts[i]! + j * nEmbd; }));
  const out = new Float32Array(nTokens * nEmbd);
  moeCombine(all, offsets, weights, nTokens, k, nEmbd, out);

  if (p.shared) {
    const gateLogit = p.shared.gateInp.matmul(x, nTokens, threads);
    const y = expertFfn(p.shared.gate, p.shared.up, p.shared.down, x, nTokens, threads);
    for (let t = 0; t < nTokens; t++) {
      const g = Math.fround(1 / (1 + Math.exp(-gateLogit[t]!)));
      for (let c = 0; c < nEmbd; c++) out[t * nEmbd + c] = out[t * nEmbd + c]! + Math.fround(y[t * nEmbd + c]! * g);
    }
  }
  return out;
}

/**
 * One Float32Array holding every array of `ys` and where each starts in it: the buffer they all view
 * when they share one (the offload dispatcher's output buffer: no copy), else a concatenation.
 */
function backToBack(ys: readonly Float32Array[]): { all: Float32Array; starts: number[] } {
  const buffer = ys[0]?.buffer;
  if (buffer && ys.every((y) => y.buffer === buffer) && buffer.byteLength / 4 <= 0x7fffffff) {
    return { all: new Float32Array(buffer, 0, Math.floor(buffer.byteLength / 4)), starts: ys.map((y) => y.byteOffset / 4) };
  }
  const all = new Float32Array(ys.reduce((n, y) => n + y.length, 0));
  const starts: number[] = [];
  let at = 0;
  for (const y of ys) {
    starts.push(at);
    all.set(y, at);
    at += y.length;
  }
  return { all, starts };
}

/**
 * The combine in plain TypeScript, the definition the native moeCombine must match bit for bit:
 * out[t*nEmbd + c] = sum over slots in selection order of fround(y * w), summed left to right in f32
 * (llama.cpp's order), where y = ys[offsets[t*k + slot] + c] and w = weights[t*k + slot].
 */
export function moeCombineReference(ys: Float32Array, offsets: Int32Array, weights: Float32Array, nTokens: number,
  k: number, nEmbd: number, out: Float32Array): Float32Array {
  for (let t = 0; t < nTokens; t++) {
    for (let c = 0; c < nEmbd; c++) {
      let s = Math.fround(ys[offsets[t * k]! + c]! * weights[t * k]!);
      for (let slot = 1; slot < k; slot++) {
        s = Math.fround(s + Math.fround(ys[offsets[t * k + slot]! + c]! * weights[t * k + slot]!));
      }
      out[t * nEmbd + c] = s;
    }
  }
  return out;
}
