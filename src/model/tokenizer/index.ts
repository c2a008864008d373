// CONTRACT STUB (owner: tokenizer helper) — replace the bodies, keep the exported names and shapes.
import type { MetadataSource } from '../gguf.js';

export interface EncodeOptions {
  /** Add BOS/EOS as tokenizer.ggml.add_bos_token / add_eos_token say (default true), like llama.cpp. */
  addSpecial?: boolean;
  /** Recognise special/control token text such as <|im_start|> in the input (default true). */
  parseSpecial?: boolean;
}

export interface StreamDecoder {
  /** Text completed by this token (incomplete UTF-8 sequences are held back). */
  push(id: number): string;
  /** Whatever is held back, with U+FFFD for invalid bytes. */
  flush(): string;
}

export interface Tokenizer {
  readonly kind: 'gpt2' | 'llama';
  readonly vocabSize: number;
  readonly bos: number | undefined;
  readonly eos: number | undefined;
  /** End-of-generation ids: eos, eot, eom and the like. */
  readonly eog: ReadonlySet<number>;
  readonly addBos: boolean;
  readonly addEos: boolean;
  encode(text: string, options?: EncodeOptions): number[];
  decode(ids: readonly number[]): string;
  /** The vocabulary entry as stored in GGUF. */
  tokenText(id: number): string;
  createDecoder(): StreamDecoder;
}

export function loadTokenizer(_meta: MetadataSource): Tokenizer {
  throw new Error('not implemented');
}
