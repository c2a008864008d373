// What each supported architecture IS, as data: metadata prefix, which optional tensors it has, how
// rope pairs dimensions, how q/k are normalised and how router weights are combined. The engine reads
// these flags; it has no per-architecture branches beyond them.
import { UnsupportedError } from '../errors.js';
import { llama } from './llama.js';
import { qwen2moe } from './qwen2moe.js';
import { qwen3moe } from './qwen3moe.js';
import { olmoe } from './olmoe.js';

export type RopeStyle = 'normal' | 'neox';
/** 'per-head': RMSNorm of each head's vector (weight [head_dim]); 'whole': of the whole projection. */
export type QKNorm = 'none' | 'per-head' | 'whole';

export interface Architecture {
  /** general.architecture value and metadata key prefix. */
  readonly name: string;
  /** 'normal' rotates adjacent pairs (x[2i], x[2i+1]); 'neox' rotates (x[i], x[i + n_rot/2]). */
  readonly rope: RopeStyle;
  readonly qkNorm: QKNorm;
  /** blk.N.attn_{q,k,v}.bias exist and are added after the projections. */
  readonly qkvBias: boolean;
  /** Divide the k selected router probabilities by their sum. */
  readonly normalizeExpertWeights: boolean;
  /** Sigmoid-gated shared expert (blk.N.ffn_{gate_inp,gate,up,down}_shexp). */
  readonly sharedExpert: boolean;
  /** Metadata key (without prefix) holding the width of one expert's FFN. */
  readonly expertFfnKey: 'expert_feed_forward_length' | 'feed_forward_length';
}

const ARCHITECTURES: readonly Architecture[] = [llama, qwen2moe, qwen3moe, olmoe];

/** The architecture table for a general.architecture value, or an UnsupportedError listing the known ones. */
export function resolveArchitecture(name: string): Architecture {
  const arch = ARCHITECTURES.find((a) => a.name === name);
  if (!arch) {
    throw new UnsupportedError(`unsupported architecture '${name}'`,
      `supported architectures: ${ARCHITECTURES.map((a) => a.name).join(', ')}`);
  }
  return arch;
}
