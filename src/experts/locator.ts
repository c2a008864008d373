// Where each expert's weights live in a GGUF file. The experts of one layer are three stacked tensors,
// blk.L.ffn_{gate,up,down}_exps.weight, with the expert index outermost (dims [cols, rows, experts] in
// ggml order), so expert e's matrix is the e-th contiguous slice of rows*rowBytes bytes. The three
// matrices of one expert are in three different tensors, hence NOT adjacent in the file.
import { requireString, requireU32, getU32, tensorRowBytes, type GGUFTensorInfo, type MetadataSource } from '../model/gguf.js';
import type { GGMLType } from '../model/ggml-types.js';
import { ModelError } from '../model/errors.js';

export type ExpertMatrix = 'gate' | 'up' | 'down';
export const EXPERT_MATRICES: readonly ExpertMatrix[] = ['gate', 'up', 'down'];

/** blk.<layer>.ffn_<matrix>_exps.weight */
export const EXPERT_TENSOR = /^blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$/;

export function expertTensorName(layer: number, matrix: ExpertMatrix): string {
  return `blk.${layer}.ffn_${matrix}_exps.weight`;
}

/** One expert matrix inside the file: `rows` rows of `cols` values of `type`, at absolute `offset`. */
export interface MatrixRange {
  offset: number;
  byteLength: number;
  type: GGMLType;
  rows: number;
  cols: number;
}

export type ExpertRange = Record<ExpertMatrix, MatrixRange>;

/** What the locator needs from a model file: metadata and the tensor index (a GGUFFile has both). */
export interface TensorSource extends MetadataSource {
  readonly tensors: ReadonlyMap<string, GGUFTensorInfo>;
  readonly path?: string;
}

const CONVERT_HINT = 'the model file is inconsistent or not a complete MoE model; convert it again with a current llama.cpp';

/** The three stacked tensors of one layer, checked against each other and the metadata. */
type LayerTensors = Record<ExpertMatrix, GGUFTensorInfo>;

export class ExpertLocator {
  readonly arch: string;
  /** block_count: layers in the model, with or without experts. */
  readonly layers: number;
  readonly expertCount: number;
  /** k: experts routed per token. */
  readonly expertUsedCount: number;
  /** Bytes of all stacked expert tensors together. */
  readonly totalExpertBytes: number;
  private readonly perLayer: (LayerTensors | undefined)[];
  private readonly source: TensorSource;

  /** arch: the metadata prefix; defaults to general.architecture. */
  constructor(source: TensorSource, arch: string = requireString(source, 'general.architecture')) {
    this.source = source;
    this.arch = arch;
    this.layers = requireU32(source, `${arch}.block_count`);
    this.expertCount = requireU32(source, `${arch}.expert_count`);
    this.expertUsedCount = getU32(source, `${arch}.expert_used_count`) ?? 0;
    if (this.expertCount < 1) throw new ModelError(`${arch}.expert_count is 0: not a mixture-of-experts model`, CONVERT_HINT);
    if (this.expertUsedCount > this.expertCount) {
      throw new ModelError(`${arch}.expert_used_count ${this.expertUsedCount} is larger than ${arch}.expert_count ${this.expertCount}`, CONVERT_HINT);
    }

    for (const name of source.tensors.keys()) {
      const m = EXPERT_TENSOR.exec(name);
      if (m && Number(m[1]) >= this.layers) {
        throw new ModelError(`expert tensor ${name} is beyond the model's ${this.layers} layers (${arch}.block_count)`, CONVERT_HINT);
      }
    }
    this.perLayer = [];
    let total = 0;
    for (let layer = 0; layer < this.layers; layer++) {
      const t = this.layerTensors(layer);
      this.perLayer.push(t);
      if (t) total += t.gate.byteLength + t.up.byteLength + t.down.byteLength;
    }
    if (total === 0) throw new ModelError(`no stacked expert tensors (blk.N.ffn_gate_exps.weight) in ${source.path ?? 'the model'}`, CONVERT_HINT);
    this.totalExpertBytes = total;
  }

  /** Dense layers (no stacked expert tensors) are allowed, e.g. DeepSeek's first layer. */
  hasExperts(layer: number): boolean {
    return this.perLayer[layer] !== undefined;
  }

  locate(layer: number, expert: number, matrix: ExpertMatrix): MatrixRange {
    const t = this.tensorsOf(layer, expert)[matrix];
    const rows = t.dims[1]!;
    const byteLength = rows * tensorRowBytes(t);
    return { offset: t.offset + expert * byteLength, byteLength, type: t.type, rows, cols: t.dims[0]! };
  }

  expertRange(layer: number, expert: number): ExpertRange {
    return { gate: this.locate(layer, expert, 'gate'), up: this.locate(layer, expert, 'up'), down: this.locate(layer, expert, 'down') };
  }

  /** Bytes of one expert (gate + up + down). */
  expertBytes(layer: number, expert: number): number {
    const r = this.expertRange(layer, expert);
    return r.gate.byteLength + r.up.byteLength + r.down.byteLength;
  }

  /** The largest expertBytes over all layers (all layers are usually the same). */
  maxExpertBytes(): number {
    let max = 0;
    for (let l = 0; l < this.layers; l++) if (this.hasExperts(l)) max = Math.max(max, this.expertBytes(l, 0));
    return max;
  }

  /** Every tensor that is not a stacked expert tensor: dense weights, router, shared experts (ffn_*_shexp). */
  residentTensors(): GGUFTensorInfo[] {
    return [...this.source.tensors.values()].filter((t) => !EXPERT_TENSOR.test(t.name));
  }

  private tensorsOf(layer: number, expert: number): LayerTensors {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.layers) throw new RangeError(`layer ${layer} out of range 0..${this.layers - 1}`);
    if (!Number.isInteger(expert) || expert < 0 || expert >= this.expertCount) throw new RangeError(`expert ${expert} out of range 0..${this.expertCount - 1}`);
    const t = this.perLayer[layer];
    if (!t) throw new RangeError(`layer ${layer} has no experts (a dense layer)`);
    return t;
  }

  /** The layer's three stacked tensors, validated; undefined when the layer has none (dense). */
  private layerTensors(layer: number): LayerTensors | undefined {
    const found = EXPERT_MATRICES.map((m) => this.source.tensors.get(expertTensorName(layer, m)));
    if (found.every((t) => t === undefined)) return undefined;
    const missing = EXPERT_MATRICES.map(expertTensorName.bind(null, layer)).filter((_, i) => !found[i]);
    if (missing.length) {
      throw new ModelError(`tensor ${missing[0]} not found, but layer ${layer} has other expert tensors`, CONVERT_HINT);
    }
    const [gate, up, down] = found as GGUFTensorInfo[];
    const E = this.expertCount;
    for (const t of [gate!, up!, down!]) {
      if (t.dims.length !== 3 || t.dims[2] !== E) {
        throw new ModelError(`tensor ${t.name} has dims [${t.dims.join(', ')}], expected 3 dims with ${E} experts last (${this.arch}.expert_count)`, CONVERT_HINT);
      }
      const expected = E * t.dims[1]! * tensorRowBytes(t);
      if (t.byteLength !== expected) {
        throw new ModelError(`tensor ${t.name} holds ${t.byteLength} bytes, but ${E} experts of [${t.dims[0]}, ${t.dims[1]}] need ${expected}`, CONVERT_HINT);
      }
    }
    // gate, up: [n_embd, n_ff]; down: [n_ff, n_embd]
    const [nEmbd, nFf] = [gate!.dims[0]!, gate!.dims[1]!];
    if (up!.dims[0] !== nEmbd || up!.dims[1] !== nFf) {
      throw new ModelError(`tensor ${up!.name} has dims [${up!.dims.join(', ')}], expected [${nEmbd}, ${nFf}, ${E}] like ${gate!.name}`, CONVERT_HINT);
    }
    if (down!.dims[0] !== nFf || down!.dims[1] !== nEmbd) {
      throw new ModelError(`tensor ${down!.name} has dims [${down!.dims.join(', ')}], expected [${nFf}, ${nEmbd}, ${E}] (the transpose of ${gate!.name})`, CONVERT_HINT);
    }
    return { gate: gate!, up: up!, down: down! };
  }
}
