// CONTRACT STUB (owner: engine helper) — replace the bodies, keep the exported names and shapes.
// A loaded model and the sequences evaluated on it: the API that generate, tests and later the
// offloading engine build on.
import type { Tokenizer } from '../model/tokenizer/index.js';

export interface LoadOptions {
  /** CPU threads for the native kernels (default 1). */
  threads?: number;
}

export interface Model {
  /** general.architecture */
  readonly arch: string;
  readonly vocabSize: number;
  readonly contextLength: number;
  readonly tokenizer: Tokenizer;
  newSequence(): Sequence;
  close(): void;
}

export interface Sequence {
  /** Tokens evaluated so far (the KV cache length). */
  readonly length: number;
  /**
   * Appends `tokens` as one batch and returns their logits: tokens.length rows of vocabSize, row-major.
   * The prompt goes through as one batch, not token by token.
   */
  eval(tokens: readonly number[]): Promise<Float32Array>;
}

export async function loadModel(_path: string, _options: LoadOptions = {}): Promise<Model> {
  throw new Error('not implemented');
}
