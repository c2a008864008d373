// Independent reference forward pass for the four MoE architectures, written from the architecture
// facts (llama.cpp's behaviour), not from src/engine: float64, one token at a time, nested loops.
// It exists to check the engine; clarity beats speed here.
import { GGMLType } from '../../src/model/ggml-types.js';
import type { GGUFFile, MetadataSource } from '../../src/model/gguf.js';
import { dequantize } from '../../src/model/quant/index.js';
import { roundActivations } from './activations.js';

export interface RefTensor {
  /** ggml order: dims[0] is the row length. */
  dims: number[];
  data: Float32Array;
  /** How the tensor is stored (default F32); decides activation rounding when that is emulated. */
  type?: GGMLType;
}

/** Where the reference gets metadata and f32 weights from. */
export interface WeightSource {
  meta: MetadataSource;
  tensor(name: string): RefTensor | undefined;
}

/** A GGUF file, every tensor dequantized to f32 on first use. */
export function ggufWeights(file: GGUFFile): WeightSource {
  const cache = new Map<string, RefTensor>();
  return {
    meta: file,
    tensor(name) {
      const info = file.tensors.get(name);
      if (!info) return undefined;
      let t = cache.get(name);
      if (!t) {
        const bytes = file.readTensor(name);
        const data = info.type === GGMLType.F32
          ? new Float32Array(bytes.slice().buffer, 0, info.elements)
          : dequantize(info.type, bytes, info.elements);
        t = { dims: info.dims, data, type: info.type };
        cache.set(name, t);
      }
      return t;
    },
  };
}

/** Weights held in memory (e.g. a fixture's unquantized values straight from the generator). */
export function memoryWeights(meta: MetadataSource, tensors: readonly { name: string; dims: number[]; values: Float32Array }[]): WeightSource {
  const byName = new Map(tensors.map((t) => [t.name, { dims: t.dims, data: t.values }]));
  return { meta, tensor: (name) => byName.get(name) };
}

export interface ReferenceResult {
  /** logits[pos][token] */
  logits: Float64Array[];
  /** experts[layer][pos]: the routed experts in choice order (largest probability first). */
  experts: number[][][];
  /** Router logit gap between the k-th and (k+1)-th expert, per layer and position (how near a flip is). */
  routerMargins: number[][];
}

interface Config {
  arch: string;
  nLayer: number;
  nEmbd: number;
  nHead: number;
  nHeadKv: number;
  headDim: number;
  nRot: number;
  eps: number;
  ropeBase: number;
  nExpert: number;
  nUsed: number;
  neoxRope: boolean;
  normalizeTopK: boolean;
}

function num(meta: MetadataSource, key: string, fallback?: number): number {
  const v = meta.get(key);
  if (v === undefined) {
    if (fallback === undefined) throw new Error(`reference: missing metadata ${key}`);
    return fallback;
  }
  return Number(v);
}

function readConfig(meta: MetadataSource): Config {
  const arch = String(meta.get('general.architecture'));
  const P = arch;
  const nEmbd = num(meta, `${P}.embedding_length`);
  const nHead = num(meta, `${P}.attention.head_count`);
  const headDim = num(meta, `${P}.attention.key_length`, nEmbd / nHead);
  return {
    arch,
    nLayer: num(meta, `${P}.block_count`),
    nEmbd,
    nHead,
    nHeadKv: num(meta, `${P}.attention.head_count_kv`, nHead),
    headDim,
    nRot: num(meta, `${P}.rope.dimension_count`, headDim),
    eps: num(meta, `${P}.attention.layer_norm_rms_epsilon`),
    ropeBase: num(meta, `${P}.rope.freq_base`, 10000),
    nExpert: num(meta, `${P}.expert_count`),
    nUsed: num(meta, `${P}.expert_used_count`),
    neoxRope: arch !== 'llama',
    normalizeTopK: arch === 'llama' || arch === 'qwen3moe',
  };
}

export interface ForwardOptions {
  /**
   * Round the input of every matmul with a quantized weight the way llama.cpp's CPU backend does
   * (8-bit blocks, see activations.ts), so the result is what llama.cpp computes, up to float
   * summation order. Off: exact products with the dequantized weights.
   */
  roundActivations?: boolean;
}

let emulateActivationRounding = false;

/** y = W x for W with dims [in, out, ...]; `matrix` picks the matrix of a stacked 3-D tensor. */
function matVec(w: RefTensor, input: ArrayLike<number>, matrix = 0): Float64Array {
  const x = emulateActivationRounding && w.type !== undefined ? roundActivations(w.type, input) : input;
  const nIn = w.dims[0]!;
  const nOut = w.dims[1] ?? 1;
  if (x.length !== nIn) throw new Error(`reference: vector of ${x.length} into a matrix with rows of ${nIn}`);
  const base = matrix * nIn * nOut;
  const y = new Float64Array(nOut);
  for (let r = 0; r < nOut; r++) {
    let s = 0;
    const row = base + r * nIn;
    for (let c = 0; c < nIn; c++) s += w.data[row + c]! * x[c]!;
    y[r] = s;
  }
  return y;
}

function rmsNorm(x: ArrayLike<number>, weight: RefTensor, eps: number): Float64Array {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i]! * x[i]!;
  const scale = 1 / Math.sqrt(ss / x.length + eps);
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = x[i]! * scale * weight.data[i]!;
  return y;
}

function addBias(y: Float64Array, bias: RefTensor | undefined): void {
  if (bias) for (let i = 0; i < y.length; i++) y[i]! += bias.data[i]!;
}

const silu = (z: number) => z / (1 + Math.exp(-z));
const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));

function softmax(v: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < v.length; i++) max = Math.max(max, v[i]!);
  const out = new Float64Array(v.length);
  let sum = 0;
  for (let i = 0; i < v.length; i++) sum += out[i] = Math.exp(v[i]! - max);
  for (let i = 0; i < v.length; i++) out[i]! /= sum;
  return out;
}

/** Rotates the first nRot dims of one head (vec[off .. off+headDim)) in place for position pos. */
function rope(vec: Float64Array, off: number, pos: number, cfg: Config): void {
  const half = cfg.nRot / 2;
  for (let i = 0; i < half; i++) {
    const theta = pos * Math.pow(cfg.ropeBase, (-2 * i) / cfg.nRot);
    const cos = Math.cos(theta);
    const sin = Math.sin(theta);
    const ia = cfg.neoxRope ? off + i : off + 2 * i;
    const ib = cfg.neoxRope ? off + i + half : off + 2 * i + 1;
    const a = vec[ia]!;
    const b = vec[ib]!;
    vec[ia] = a * cos - b * sin;
    vec[ib] = a * sin + b * cos;
  }
}

/** SwiGLU FFN of one expert (matrix `e` of stacked tensors, or the only matrix of 2-D ones). */
function ffn(gate: RefTensor, up: RefTensor, down: RefTensor, x: Float64Array, e = 0): Float64Array {
  const g = matVec(gate, x, e);
  const u = matVec(up, x, e);
  const a = new Float64Array(g.length);
  for (let i = 0; i < a.length; i++) a[i] = silu(g[i]!) * u[i]!;
  return matVec(down, a, e);
}

/** Logits for every position of `tokens` (a causal prompt starting at position 0), plus routing. */
export function referenceForward(src: WeightSource, tokens: readonly number[], options: ForwardOptions = {}): ReferenceResult {
  emulateActivationRounding = options.roundActivations ?? false;
  try {
    return forward(src, tokens);
  } finally {
    emulateActivationRounding = false;
  }
}

function forward(src: WeightSource, tokens: readonly number[]): ReferenceResult {
  const cfg = readConfig(src.meta);
  const need = (name: string): RefTensor => {
    const t = src.tensor(name);
    if (!t) throw new Error(`reference: missing tensor ${name}`);
    return t;
  };
  const embd = need('token_embd.weight');
  const output = src.tensor('output.weight') ?? embd; // absent: tied to the embeddings
  const { nEmbd, nHead, nHeadKv, headDim } = cfg;
  const qDim = nHead * headDim;
  const groupSize = nHead / nHeadKv;
  const keys: Float64Array[][] = Array.from({ length: cfg.nLayer }, () => []);
  const values: Float64Array[][] = Array.from({ length: cfg.nLayer }, () => []);
  const result: ReferenceResult = {
    logits: [],
    experts: Array.from({ length: cfg.nLayer }, () => []),
    routerMargins: Array.from({ length: cfg.nLayer }, () => []),
  };

  for (let pos = 0; pos < tokens.length; pos++) {
    const tok = tokens[pos]!;
    const x = new Float64Array(nEmbd);
    for (let i = 0; i < nEmbd; i++) x[i] = embd.data[tok * nEmbd + i]!;

    for (let l = 0; l < cfg.nLayer; l++) {
      const b = `blk.${l}.`;
      // ---- attention
      const xn = rmsNorm(x, need(`${b}attn_norm.weight`), cfg.eps);
      let q = matVec(need(`${b}attn_q.weight`), xn);
      let k = matVec(need(`${b}attn_k.weight`), xn);
      const v = matVec(need(`${b}attn_v.weight`), xn);
      addBias(q, src.tensor(`${b}attn_q.bias`));
      addBias(k, src.tensor(`${b}attn_k.bias`));
      addBias(v, src.tensor(`${b}attn_v.bias`));
      if (cfg.arch === 'qwen3moe') {
        // RMSNorm of each head's vector with a [head_dim] weight
        const qNorm = need(`${b}attn_q_norm.weight`);
        const kNorm = need(`${b}attn_k_norm.weight`);
        for (let h = 0; h < nHead; h++) q.set(rmsNorm(q.subarray(h * headDim, (h + 1) * headDim), qNorm, cfg.eps), h * headDim);
        for (let h = 0; h < nHeadKv; h++) k.set(rmsNorm(k.subarray(h * headDim, (h + 1) * headDim), kNorm, cfg.eps), h * headDim);
      } else if (cfg.arch === 'olmoe') {
        // RMSNorm over the whole projection, before the split into heads
        q = rmsNorm(q, need(`${b}attn_q_norm.weight`), cfg.eps);
        k = rmsNorm(k, need(`${b}attn_k_norm.weight`), cfg.eps);
      }
      for (let h = 0; h < nHead; h++) rope(q, h * headDim, pos, cfg);
      for (let h = 0; h < nHeadKv; h++) rope(k, h * headDim, pos, cfg);
      keys[l]!.push(k);
      values[l]!.push(v);

      const attn = new Float64Array(qDim);
      for (let h = 0; h < nHead; h++) {
        const kvh = Math.floor(h / groupSize);
        const scores = new Float64Array(pos + 1);
        for (let j = 0; j <= pos; j++) {
          let s = 0;
          for (let d = 0; d < headDim; d++) s += q[h * headDim + d]! * keys[l]![j]![kvh * headDim + d]!;
          scores[j] = s / Math.sqrt(headDim);
        }
        const p = softmax(scores);
        for (let j = 0; j <= pos; j++) {
          for (let d = 0; d < headDim; d++) attn[h * headDim + d]! += p[j]! * values[l]![j]![kvh * headDim + d]!;
        }
      }
      const attnOut = matVec(need(`${b}attn_output.weight`), attn);
      for (let i = 0; i < nEmbd; i++) x[i]! += attnOut[i]!;

      // ---- mixture of experts
      const hn = rmsNorm(x, need(`${b}ffn_norm.weight`), cfg.eps);
      const routerLogits = matVec(need(`${b}ffn_gate_inp.weight`), hn);
      const probs = softmax(routerLogits);
      const order = Array.from(probs.keys()).sort((a, c) => probs[c]! - probs[a]! || a - c);
      const chosen = order.slice(0, cfg.nUsed);
      result.experts[l]!.push(chosen);
      result.routerMargins[l]!.push(cfg.nUsed < cfg.nExpert ? routerLogits[order[cfg.nUsed - 1]!]! - routerLogits[order[cfg.nUsed]!]! : Infinity);
      const weights = chosen.map((e) => probs[e]!);
      if (cfg.normalizeTopK) {
        const sum = weights.reduce((a, c) => a + c, 0);
        for (let j = 0; j < weights.length; j++) weights[j]! /= sum;
      }
      const moe = new Float64Array(nEmbd);
      const gate = need(`${b}ffn_gate_exps.weight`);
      const up = need(`${b}ffn_up_exps.weight`);
      const down = need(`${b}ffn_down_exps.weight`);
      chosen.forEach((e, j) => {
        const y = ffn(gate, up, down, hn, e);
        for (let i = 0; i < nEmbd; i++) moe[i]! += weights[j]! * y[i]!;
      });
      const sharedGate = src.tensor(`${b}ffn_gate_inp_shexp.weight`);
      if (sharedGate) {
        let s = 0;
        for (let i = 0; i < nEmbd; i++) s += sharedGate.data[i]! * hn[i]!;
        const y = ffn(need(`${b}ffn_gate_shexp.weight`), need(`${b}ffn_up_shexp.weight`), need(`${b}ffn_down_shexp.weight`), hn);
        for (let i = 0; i < nEmbd; i++) moe[i]! += sigmoid(s) * y[i]!;
      }
      for (let i = 0; i < nEmbd; i++) x[i]! += moe[i]!;
    }
    result.logits.push(matVec(output, rmsNorm(x, need('output_norm.weight'), cfg.eps)));
  }
  return result;
}
