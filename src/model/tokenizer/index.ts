// Tokenizers built from GGUF metadata that give llama.cpp's token ids: byte-level BPE ('gpt2') and
// SentencePiece ('llama'). Encoding follows llama_vocab::tokenize: special-token partition, then the
// model's own algorithm per plain fragment, BOS/EOS per the file's flags.
import type { MetadataSource } from '../gguf.js';
import { byteDecode, byteEncode } from './byte-unicode.js';
import { bpeWordIds } from './bpe.js';
import { preTokenize } from './pretokenize.js';
import { partition, specialTokens, type Fragment, type SpecialTokens } from './special.js';
import { byteTokens, spmTokenize } from './spm.js';
import { readVocabulary, TokenType, type Vocabulary } from './vocab.js';

export { TokenType, readVocabulary, type Vocabulary } from './vocab.js';
export { preTokenize, preTokenizerFor, SUPPORTED_PRE_TOKENIZERS, type PreTokenizer } from './pretokenize.js';
export { BYTE_TO_CHAR, CHAR_TO_BYTE, byteEncode, byteDecode } from './byte-unicode.js';
export type { Fragment } from './special.js';

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

const SPM_SPACE = '\u2581';
const WORD_CACHE_LIMIT = 100_000;
const EMPTY = new Uint8Array(0);
const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

export class GGUFTokenizer implements Tokenizer {
  readonly kind: 'gpt2' | 'llama';
  readonly vocabSize: number;
  readonly bos: number | undefined;
  readonly eos: number | undefined;
  readonly eog: ReadonlySet<number>;
  readonly addBos: boolean;
  readonly addEos: boolean;
  readonly addSpacePrefix: boolean;
  private readonly specials: SpecialTokens;
  private readonly bytes: (number | undefined)[];
  private readonly wordCache = new Map<string, number[]>();
  private readonly pieceCache: (Uint8Array | undefined)[] = [];

  constructor(readonly vocab: Vocabulary) {
    this.kind = vocab.kind;
    this.vocabSize = vocab.tokens.length;
    this.bos = vocab.bos;
    this.eos = vocab.eos;
    this.eog = vocab.eog;
    this.addBos = vocab.addBos;
    this.addEos = vocab.addEos;
    this.addSpacePrefix = vocab.addSpacePrefix;
    this.specials = specialTokens(vocab);
    this.bytes = vocab.kind === 'llama' ? byteTokens(vocab) : [];
  }

  /** The input split around special tokens (what encode tokenizes piece by piece). */
  fragments(text: string, parseSpecial = true): Fragment[] {
    return partition(text, this.vocab, this.specials, parseSpecial);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const addSpecial = options.addSpecial ?? true;
    const out: number[] = [];
    if (addSpecial && this.addBos) out.push(this.bos!);
    const fragments = this.fragments(text, options.parseSpecial ?? true);
    if (this.kind === 'gpt2') this.encodeBpe(fragments, out);
    else this.encodeSpm(fragments, out);
    if (addSpecial && this.addEos) out.push(this.eos!);
    return out;
  }

  private encodeBpe(fragments: Fragment[], out: number[]): void {
    const pre = this.vocab.pre!;
    for (const frag of fragments) {
      if (typeof frag === 'number') {
        out.push(frag);
        continue;
      }
      for (const piece of preTokenize(frag, pre)) {
        const word = byteEncode(piece);
        let ids = this.wordCache.get(word);
        if (!ids) {
          ids = bpeWordIds(word, this.vocab, pre.ignoreMerges);
          if (this.wordCache.size >= WORD_CACHE_LIMIT) this.wordCache.clear();
          this.wordCache.set(word, ids);
        }
        for (const id of ids) out.push(id);
      }
    }
  }

  private encodeSpm(fragments: Fragment[], out: number[]): void {
    // llama.cpp puts the space prefix before the first fragment and after every special token.
    let afterSpecial = true;
    for (const frag of fragments) {
      if (typeof frag === 'number') {
        out.push(frag);
        afterSpecial = true;
        continue;
      }
      const text = (this.addSpacePrefix && afterSpecial ? ' ' : '') + frag;
      spmTokenize(text.replaceAll(' ', SPM_SPACE), this.vocab, this.bytes, out);
      afterSpecial = false;
    }
  }

  tokenText(id: number): string {
    this.checkId(id);
    return this.vocab.tokens[id]!;
  }

  /** tokenizer.ggml.token_type of the token, after llama.cpp's fix-ups (see TokenType). */
  tokenType(id: number): number {
    this.checkId(id);
    return this.vocab.types[id]!;
  }

  /**
   * The bytes a token stands for in output text, as llama.cpp's token_to_piece with special=false:
   * control, unknown and unused tokens render as nothing.
   */
  pieceBytes(id: number): Uint8Array {
    this.checkId(id);
    let p = this.pieceCache[id];
    if (p) return p;
    const text = this.vocab.tokens[id]!;
    switch (this.vocab.types[id]) {
      case TokenType.USER_DEFINED: p = utf8.encode(text); break;
      case TokenType.NORMAL: p = this.kind === 'gpt2' ? byteDecode(text) : utf8.encode(text.replaceAll(SPM_SPACE, ' ')); break;
      case TokenType.BYTE: p = this.kind === 'llama' ? spmByte(text) : EMPTY; break;
      default: p = EMPTY;
    }
    this.pieceCache[id] = p;
    return p;
  }

  /**
   * One token as text: its bytes decoded on their own (a partial UTF-8 character shows as U+FFFD);
   * with `special`, control and unknown tokens show their vocabulary text instead of nothing.
   */
  piece(id: number, special = false): string {
    const t = this.tokenType(id);
    if (special && (t === TokenType.CONTROL || t === TokenType.UNKNOWN)) return this.vocab.tokens[id]!;
    return utf8Decoder.decode(this.pieceBytes(id));
  }

  /**
   * Text of the ids. With add_space_prefix, the space that encoding put in front of the text is
   * dropped from the first piece that renders anything (llama.cpp's detokenize drops it only from the
   * very first token, so a leading BOS keeps it there; here decode(encode(x)) gives x back).
   */
  decode(ids: readonly number[]): string {
    const parts: Uint8Array[] = [];
    let total = 0;
    let stripSpace = this.addSpacePrefix;
    for (const id of ids) {
      let p = this.pieceBytes(id);
      if (p.length === 0) continue;
      if (stripSpace && p[0] === 0x20) p = p.subarray(1);
      stripSpace = false;
      parts.push(p);
      total += p.length;
    }
    const all = new Uint8Array(total);
    let at = 0;
    for (const p of parts) { all.set(p, at); at += p.length; }
    return utf8Decoder.decode(all);
  }

  createDecoder(): StreamDecoder {
    const decoder = new TextDecoder();
    return {
      push: (id) => decoder.decode(this.pieceBytes(id), { stream: true }),
      flush: () => decoder.decode(),
    };
  }

  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
    }
  }
}

/** The byte of a SentencePiece byte token '<0xXX>'. */
function spmByte(text: string): Uint8Array {
  const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(text);
  return m ? Uint8Array.of(parseInt(m[1]!, 16)) : EMPTY;
}

export function loadTokenizer(meta: MetadataSource): Tokenizer {
  return new GGUFTokenizer(readVocabulary(meta));
}
