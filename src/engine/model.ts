// A loaded model and the sequences evaluated on it: the API that generate, tests and the offloading
// engine build on. loadModel checks the file against its architecture table (keys, tensors, shapes)
// up front, so a bad file fails with one clear error before any compute.
import { GGUFFile, getNumber, getU32, requireNumber, requireString, requireU32 } from '../model/gguf.js';
import { resolveArchitecture, type Architecture } from '../model/arch/index.js';
import { ModelError, UnsupportedError, UsageError } from '../model/errors.js';
import { loadTokenizer, type Tokenizer } from '../model/tokenizer/index.js';
import { ExpertLocator, type ExpertMatrix } from '../experts/locator.js';
import { ExpertOffload, type OffloadOptions } from '../experts/offload.js';
import type { ExpertStatsSnapshot } from '../experts/stats.js';
import { causalAttention } from './attention.js';
import { checkKVType, KVCache, type KVType } from './kv-cache.js';
import { moeForward, type ExpertWeights, type SharedExpert } from './moe-layer.js';
import { rmsNorm } from './norm.js';
import { route } from './router.js';
import { applyRope, ropeAngles, type RopeAngles, type RopeParams } from './rope.js';
import { readVector, readWeight, Weight } from './weights.js';

export interface LoadOptions {
  /** CPU threads for the native kernels (default 1). */
  threads?: number;
  /**
   * Called for every routing decision: layer, the token's absolute position in its sequence, the
   * selected experts (most probable first) and their weights (after renormalisation where the
   * architecture does it).
   */
  onRoute?: (layer: number, position: number, experts: number[], weights: number[]) => void;
  /**
   * Offload the experts: they are not read at load time, but on demand into a RAM cache with a byte
   * budget and computed by a pool of worker threads (src/experts/). Results are bit-identical to the
   * resident path (no `offload`), which reads every expert into memory at load time.
   */
  offload?: OffloadOptions;
  /** The KV cache's element type (default 'f16', llama.cpp's default; 'f32' keeps K and V exactly). */
  kvType?: KVType;
}

export type { OffloadOptions, ExpertStatsSnapshot };

export interface Model {
  /** general.architecture */
  readonly arch: string;
  readonly vocabSize: number;
  readonly contextLength: number;
  readonly tokenizer: Tokenizer;
  newSequence(): Sequence;
  /** Offloading counters (hits, misses, bytes read, stall and compute time); undefined without offload. */
  expertStats(): ExpertStatsSnapshot | undefined;
  /** Releases the file and, with offload, the worker pool (awaitable; the pool stops asynchronously). */
  close(): Promise<void> | void;
}

export interface EvalOptions {
  /**
   * Return only the last token's logits (one row of vocabSize). Generation needs no more, and a long
   * prompt on a large vocabulary would otherwise allocate prompt x vocab floats.
   */
  lastOnly?: boolean;
}

export interface Sequence {
  /** Tokens evaluated so far (the KV cache length). */
  readonly length: number;
  /**
   * Appends `tokens` as one batch and returns their logits: tokens.length rows of vocabSize, row-major
   * (only the last row with { lastOnly: true }). The prompt goes through as one batch, not token by token.
   */
  eval(tokens: readonly number[], options?: EvalOptions): Promise<Float32Array>;
}

/** Hyper-parameters read from P.* metadata (P = the architecture prefix). */
export interface HyperParams {
  nLayer: number;
  contextLength: number;
  nEmbd: number;
  nHead: number;
  nHeadKv: number;
  headDim: number;
  eps: number;
  ropeBase: number;
  nRot: number;
  nExpert: number;
  nExpertUsed: number;
  nFfExpert: number;
  nVocab: number;
}

interface LayerWeights {
  attnNorm: Float32Array;
  q: Weight;
  k: Weight;
  v: Weight;
  qBias?: Float32Array;
  kBias?: Float32Array;
  vBias?: Float32Array;
  qNorm?: Float32Array;
  kNorm?: Float32Array;
  output: Weight;
  ffnNorm: Float32Array;
  router: Weight;
  shared?: SharedExpert;
}

const CONVERT_HINT = 'the model file does not match its own metadata; convert it again with a current llama.cpp';

export function readHyperParams(file: GGUFFile, arch: Architecture): HyperParams {
  const P = arch.name;
  const nEmbd = requireU32(file, `${P}.embedding_length`);
  const nHead = requireU32(file, `${P}.attention.head_count`);
  const nHeadKv = getU32(file, `${P}.attention.head_count_kv`) ?? nHead;
  if (nHead === 0 || nHeadKv === 0 || nHead % nHeadKv !== 0) {
    throw new ModelError(`${P}.attention.head_count ${nHead} is not a multiple of head_count_kv ${nHeadKv}`, CONVERT_HINT);
  }
  const headDim = getU32(file, `${P}.attention.key_length`) ?? nEmbd / nHead;
  const valueDim = getU32(file, `${P}.attention.value_length`) ?? headDim;
  if (!Number.isInteger(headDim) || headDim === 0) {
    throw new ModelError(`${P}.embedding_length ${nEmbd} is not a multiple of ${P}.attention.head_count ${nHead}`, CONVERT_HINT);
  }
  if (valueDim !== headDim) {
    throw new UnsupportedError(`${P}.attention.value_length ${valueDim} differs from key_length ${headDim}`, 'models whose value heads differ in size from key heads are not supported');
  }
  const nRot = getU32(file, `${P}.rope.dimension_count`) ?? headDim;
  if (nRot % 2 !== 0 || nRot > headDim) {
    throw new ModelError(`${P}.rope.dimension_count ${nRot} must be even and at most the head size ${headDim}`, CONVERT_HINT);
  }
  if (file.get(`${P}.expert_count`) === undefined && !file.tensors.has('blk.0.ffn_gate_exps.weight')) {
    throw new UnsupportedError(`${file.path} is a dense ${P} model (no ${P}.expert_count, no expert tensors)`,
      'moe-offload runs Mixture-of-Experts models only; use llama.cpp for dense models');
  }
  const nExpert = requireU32(file, `${P}.expert_count`);
  const nExpertUsed = requireU32(file, `${P}.expert_used_count`);
  if (nExpert === 0 || nExpertUsed === 0 || nExpertUsed > nExpert) {
    throw new ModelError(`${P}.expert_used_count ${nExpertUsed} must be between 1 and ${P}.expert_count ${nExpert}`, CONVERT_HINT);
  }
  const embd = file.tensor('token_embd.weight');
  return {
    nLayer: requireU32(file, `${P}.block_count`),
    contextLength: requireU32(file, `${P}.context_length`),
    nEmbd, nHead, nHeadKv, headDim,
    eps: requireNumber(file, `${P}.attention.layer_norm_rms_epsilon`),
    ropeBase: getNumber(file, `${P}.rope.freq_base`) ?? 10000,
    nRot, nExpert, nExpertUsed,
    nFfExpert: requireU32(file, `${P}.${arch.expertFfnKey}`),
    nVocab: embd.dims[1] ?? 0,
  };
}

/** Expert matrices sliced out of the stacked tensors, all read into memory at load time. */
class InMemoryExperts implements ExpertWeights {
  private readonly stacked = new Map<string, { offset: number; data: Uint8Array }>();
  constructor(private readonly file: GGUFFile, private readonly locator: ExpertLocator) {}

  matrix(layer: number, expert: number, which: ExpertMatrix): Weight {
    const r = this.locator.locate(layer, expert, which);
    const name = `blk.${layer}.ffn_${which}_exps.weight`;
    let s = this.stacked.get(name);
    if (!s) {
      s = { offset: this.file.tensor(name).offset, data: this.file.readTensor(name) };
      this.stacked.set(name, s);
    }
    const at = r.offset - s.offset;
    return new Weight(r.type, r.rows, r.cols, s.data.subarray(at, at + r.byteLength));
  }

  /** Reads every stacked tensor now (so the first eval does no I/O). */
  preload(layers: number): void {
    for (let l = 0; l < layers; l++) for (const m of ['gate', 'up', 'down'] as const) this.matrix(l, 0, m);
  }
}

function checkExpertShapes(file: GGUFFile, arch: Architecture, hp: HyperParams, layer: number): void {
  const want: Record<ExpertMatrix, number[]> = {
    gate: [hp.nEmbd, hp.nFfExpert, hp.nExpert],
    up: [hp.nEmbd, hp.nFfExpert, hp.nExpert],
    down: [hp.nFfExpert, hp.nEmbd, hp.nExpert],
  };
  for (const m of ['gate', 'up', 'down'] as const) {
    const t = file.tensor(`blk.${layer}.ffn_${m}_exps.weight`);
    const w = want[m];
    if (t.dims.length !== 3 || t.dims.some((d, i) => d !== w[i])) {
      throw new ModelError(`tensor ${t.name} has dims [${t.dims.join(', ')}], expected [${w.join(', ')}] `
        + `(${arch.name}.embedding_length, ${arch.name}.${arch.expertFfnKey}, ${arch.name}.expert_count)`, CONVERT_HINT);
    }
  }
}

function readLayer(file: GGUFFile, arch: Architecture, hp: HyperParams, l: number): LayerWeights {
  const b = `blk.${l}.`;
  const qDim = hp.nHead * hp.headDim;
  const kvDim = hp.nHeadKv * hp.headDim;
  const P = arch.name;
  const heads = `${P}.attention.head_count x head size`;
  const kvHeads = `${P}.attention.head_count_kv x head size`;
  const w: LayerWeights = {
    attnNorm: readVector(file, `${b}attn_norm.weight`, hp.nEmbd, `${P}.embedding_length`),
    q: readWeight(file, `${b}attn_q.weight`, hp.nEmbd, qDim, `${P}.embedding_length, ${heads}`),
    k: readWeight(file, `${b}attn_k.weight`, hp.nEmbd, kvDim, `${P}.embedding_length, ${kvHeads}`),
    v: readWeight(file, `${b}attn_v.weight`, hp.nEmbd, kvDim, `${P}.embedding_length, ${kvHeads}`),
    output: readWeight(file, `${b}attn_output.weight`, qDim, hp.nEmbd, `${heads}, ${P}.embedding_length`),
    ffnNorm: readVector(file, `${b}ffn_norm.weight`, hp.nEmbd, `${P}.embedding_length`),
    router: readWeight(file, `${b}ffn_gate_inp.weight`, hp.nEmbd, hp.nExpert, `${P}.embedding_length, ${P}.expert_count`),
  };
  if (arch.qkvBias) {
    w.qBias = readVector(file, `${b}attn_q.bias`, qDim, heads);
    w.kBias = readVector(file, `${b}attn_k.bias`, kvDim, kvHeads);
    w.vBias = readVector(file, `${b}attn_v.bias`, kvDim, kvHeads);
  }
  if (arch.qkNorm === 'per-head') {
    w.qNorm = readVector(file, `${b}attn_q_norm.weight`, hp.headDim, 'head size');
    w.kNorm = readVector(file, `${b}attn_k_norm.weight`, hp.headDim, 'head size');
  } else if (arch.qkNorm === 'whole') {
    w.qNorm = readVector(file, `${b}attn_q_norm.weight`, qDim, heads);
    w.kNorm = readVector(file, `${b}attn_k_norm.weight`, kvDim, kvHeads);
  }
  if (arch.sharedExpert) {
    const gate = file.tensor(`${b}ffn_gate_shexp.weight`);
    const nFf = gate.dims[1] ?? 0;
    const declared = getU32(file, `${P}.expert_shared_feed_forward_length`);
    if (declared !== undefined && declared !== nFf) {
      throw new ModelError(`tensor ${gate.name} has dims [${gate.dims.join(', ')}], expected [${hp.nEmbd}, ${declared}] (${P}.expert_shared_feed_forward_length)`, CONVERT_HINT);
    }
    const gi = file.tensor(`${b}ffn_gate_inp_shexp.weight`);
    if (gi.elements !== hp.nEmbd) {
      throw new ModelError(`tensor ${gi.name} has dims [${gi.dims.join(', ')}], expected [${hp.nEmbd}] (${P}.embedding_length)`, CONVERT_HINT);
    }
    w.shared = {
      gateInp: new Weight(gi.type, 1, hp.nEmbd, file.readTensor(gi.name)),
      gate: readWeight(file, gate.name, hp.nEmbd, nFf, `${P}.embedding_length, shared expert width`),
      up: readWeight(file, `${b}ffn_up_shexp.weight`, hp.nEmbd, nFf, `${P}.embedding_length, shared expert width`),
      down: readWeight(file, `${b}ffn_down_shexp.weight`, nFf, hp.nEmbd, `shared expert width, ${P}.embedding_length`),
    };
  }
  checkExpertShapes(file, arch, hp, l);
  return w;
}

class LoadedModel implements Model {
  readonly arch: string;
  readonly vocabSize: number;
  readonly contextLength: number;
  readonly tokenizer: Tokenizer;
  readonly hp: HyperParams;
  readonly architecture: Architecture;
  readonly threads: number;
  readonly onRoute: LoadOptions['onRoute'];
  readonly kvType: KVType;
  readonly tokenEmbd: Weight;
  readonly outputNorm: Float32Array;
  readonly output: Weight;
  readonly layers: LayerWeights[];
  readonly experts: ExpertWeights;
  /** Set when offloading: the MoE layers hand their experts to it. */
  readonly offload: ExpertOffload | undefined;
  private readonly file: GGUFFile;

  constructor(file: GGUFFile, options: LoadOptions) {
    this.file = file;
    this.architecture = resolveArchitecture(requireString(file, 'general.architecture'));
    this.arch = this.architecture.name;
    const hp = readHyperParams(file, this.architecture);
    this.hp = hp;
    this.vocabSize = hp.nVocab;
    this.contextLength = hp.contextLength;
    this.threads = Math.max(1, Math.floor(options.threads ?? 1));
    this.onRoute = options.onRoute;
    this.kvType = checkKVType(options.kvType ?? 'f16');
    const P = this.arch;
    this.tokenEmbd = readWeight(file, 'token_embd.weight', hp.nEmbd, hp.nVocab, `${P}.embedding_length, vocabulary size`);
    this.outputNorm = readVector(file, 'output_norm.weight', hp.nEmbd, `${P}.embedding_length`);
    this.output = file.tensors.has('output.weight')
      ? readWeight(file, 'output.weight', hp.nEmbd, hp.nVocab, `${P}.embedding_length, vocabulary size of token_embd.weight`)
      : this.tokenEmbd; // tied embeddings
    this.layers = [];
    for (let l = 0; l < hp.nLayer; l++) this.layers.push(readLayer(file, this.architecture, hp, l));
    const locator = new ExpertLocator(file, P);
    const experts = new InMemoryExperts(file, locator);
    this.experts = experts;
    this.tokenizer = loadTokenizer(file);
    if (this.tokenizer.vocabSize !== hp.nVocab) {
      throw new ModelError(`the tokenizer has ${this.tokenizer.vocabSize} tokens but token_embd.weight has ${hp.nVocab} rows`, CONVERT_HINT);
    }
    // Last, so that nothing after it can fail and leave the worker pool running.
    if (options.offload) {
      this.offload = new ExpertOffload(file.path, locator, options.offload);
    } else {
      experts.preload(hp.nLayer);
      this.offload = undefined;
    }
  }

  expertStats(): ExpertStatsSnapshot | undefined {
    return this.offload?.stats();
  }

  newSequence(): Sequence {
    return new ModelSequence(this);
  }

  close(): Promise<void> | void {
    if (!this.offload) return this.file.close();
    return this.offload.close().finally(() => this.file.close());
  }
}

class ModelSequence implements Sequence {
  private n = 0;
  private readonly cache: KVCache;
  private readonly rope: RopeParams;

  constructor(private readonly m: LoadedModel) {
    const hp = m.hp;
    this.cache = new KVCache(hp.nLayer, hp.nHeadKv * hp.headDim, hp.contextLength, m.kvType);
    this.rope = { style: m.architecture.rope, nRot: hp.nRot, headDim: hp.headDim, base: hp.ropeBase };
  }

  get length(): number { return this.n; }

  async eval(tokens: readonly number[], options: EvalOptions = {}): Promise<Float32Array> {
    const { hp, threads } = this.m;
    const n = tokens.length;
    if (n === 0) return new Float32Array(0);
    if (this.n + n > hp.contextLength) {
      throw new UsageError(`the sequence would be ${this.n + n} tokens, more than the model's context length ${hp.contextLength}`,
        'use a shorter prompt or fewer new tokens (--max-tokens)');
    }
    for (const t of tokens) {
      if (!Number.isInteger(t) || t < 0 || t >= hp.nVocab) throw new UsageError(`token id ${t} is outside the vocabulary (0..${hp.nVocab - 1})`);
    }
    const E = hp.nEmbd;
    const x = new Float32Array(n * E);
    tokens.forEach((t, i) => this.m.tokenEmbd.row(t, x.subarray(i * E, (i + 1) * E)));

    // With offloading, workers read the normed states from shared memory without a copy.
    const xn = new Float32Array(this.m.offload ? new SharedArrayBuffer(n * E * 4) : new ArrayBuffer(n * E * 4));
    const angles = Array.from({ length: n }, (_, t) => ropeAngles(this.n + t, this.rope.nRot, this.rope.base));
    for (let l = 0; l < hp.nLayer; l++) {
      const w = this.m.layers[l]!;
      rmsNorm(x, n, E, hp.eps, w.attnNorm, xn);
      const attn = this.attention(l, w, xn, n, angles);
      const o = w.output.matmul(attn, n, threads);
      for (let i = 0; i < x.length; i++) x[i] = x[i]! + o[i]!;

      const prefetch = l + 1 < hp.nLayer && this.m.offload?.prefetching ? this.predictExperts(l + 1, x, n) : undefined;
      rmsNorm(x, n, E, hp.eps, w.ffnNorm, xn);
      const ffn = await moeForward(xn, n, {
        layer: l, nEmbd: E, nExpert: hp.nExpert, nExpertUsed: hp.nExpertUsed,
        normalize: this.m.architecture.normalizeExpertWeights, threads, router: w.router, shared: w.shared,
        experts: this.m.experts, runner: this.m.offload, onRoute: this.m.onRoute, start: this.n,
        ...(prefetch ? { prefetch } : {}),
      });
      for (let i = 0; i < x.length; i++) x[i] = x[i]! + ffn[i]!;
    }
    await this.m.offload?.settle();
    const rows = options.lastOnly ? 1 : n;
    const final = x.subarray((n - rows) * E);
    rmsNorm(final, rows, E, hp.eps, this.m.outputNorm, xn);
    const logits = this.m.output.matmul(xn, rows, threads);
    this.n += n;
    return logits;
  }

  /**
   * A guess at layer l's experts made before the layer before it runs its experts: layer l's router
   * applied to the current hidden state normed with layer l's ffn norm. Only the batch's last token is
   * predicted (in decode, the only one): a prompt batch's union would not fit a small cache anyway.
   */
  private predictExperts(l: number, x: Float32Array, n: number): { layer: number; experts: number[] } {
    const { hp, threads, layers, architecture } = this.m;
    const E = hp.nEmbd;
    const w = layers[l]!;
    const row = rmsNorm(x.subarray((n - 1) * E, n * E), 1, E, hp.eps, w.ffnNorm, new Float32Array(E));
    const logits = w.router.matmul(row, 1, threads);
    return { layer: l, experts: route(logits, 0, hp.nExpert, hp.nExpertUsed, architecture.normalizeExpertWeights).experts };
  }

  /**
   * q/k/v projections, q/k norms, rope, KV cache append, causal attention: n rows of nHead*headDim.
   * angles[t]: the rope angles of token t's position (the same in every layer, so computed once per eval).
   */
  private attention(l: number, w: LayerWeights, xn: Float32Array, n: number, angles: readonly RopeAngles[]): Float32Array {
    const { hp, threads, architecture } = this.m;
    const [q, k, v] = Weight.matmulMany([w.q, w.k, w.v], xn, n, threads) as [Float32Array, Float32Array, Float32Array];
    if (w.qBias) addRowBias(q, w.qBias);
    if (w.kBias) addRowBias(k, w.kBias);
    if (w.vBias) addRowBias(v, w.vBias);
    const qDim = hp.nHead * hp.headDim;
    const kvDim = hp.nHeadKv * hp.headDim;
    if (architecture.qkNorm === 'per-head') {
      rmsNorm(q, n * hp.nHead, hp.headDim, hp.eps, w.qNorm);
      rmsNorm(k, n * hp.nHeadKv, hp.headDim, hp.eps, w.kNorm);
    } else if (architecture.qkNorm === 'whole') {
      rmsNorm(q, n, qDim, hp.eps, w.qNorm);
      rmsNorm(k, n, kvDim, hp.eps, w.kNorm);
    }
    for (let t = 0; t < n; t++) {
      applyRope(q, t * qDim, hp.nHead, this.n + t, this.rope, angles[t]);
      applyRope(k, t * kvDim, hp.nHeadKv, this.n + t, this.rope, angles[t]);
    }
    this.cache.write(l, this.n, n, k, v);
    const shape = { nHead: hp.nHead, nHeadKv: hp.nHeadKv, headDim: hp.headDim };
    return causalAttention(q, this.cache.keys(l), this.cache.values(l), this.n, n, shape, new Float32Array(n * qDim), threads);
  }
}

/** x (rows of bias.length values) += bias, per row. */
function addRowBias(x: Float32Array, bias: Float32Array): void {
  for (let i = 0; i < x.length; i++) x[i] = x[i]! + bias[i % bias.length]!;
}

export async function loadModel(path: string, options: LoadOptions = {}): Promise<Model> {
  const file = GGUFFile.open(path);
  try {
    return new LoadedModel(file, options);
  } catch (err) {
    file.close();
    throw err;
  }
}
