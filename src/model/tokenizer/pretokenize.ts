// Pre-tokenizers of byte-level BPE models, keyed by tokenizer.ggml.pre, as llama.cpp defines them
// (llama-vocab.cpp, llm_tokenizer_bpe). A pre-tokenizer is a list of regexes applied in turn: each one
// splits every piece made so far into its matches, and the text between matches becomes a piece too.
//
// llama.cpp's whitespace class is Unicode White_Space (U+0085 included, U+FEFF not), which differs
// from JS's \s, so the patterns spell it out. Its hand-written matchers for the GPT-2 and llama3
// patterns treat leftover whitespace as `\s+`; the JS versions say so explicitly.
import { UnsupportedError } from '../errors.js';

/** Contents of a character class: llama.cpp's whitespace. */
const W = '\\t-\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000';
const WS_TAIL = `[${W}]+(?![^${W}])|[${W}]+`;

const GPT2 = `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^${W}\\p{L}\\p{N}]+|${WS_TAIL}`;
const CONTRACTIONS_ANY_CASE = `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])`;
const llama3Like = (digits: string) =>
  `${CONTRACTIONS_ANY_CASE}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|${digits}| ?[^${W}\\p{L}\\p{N}]+[\\r\\n]*|[${W}]*[\\r\\n]+|${WS_TAIL}`;
const LLAMA3 = llama3Like('\\p{N}{1,3}');
const QWEN2 = llama3Like('\\p{N}');

export interface PreTokenizer {
  /** The name family, for messages. */
  readonly name: string;
  readonly regexes: readonly RegExp[];
  /** llama3-style: a piece that is already a vocabulary entry is taken whole, without merging. */
  readonly ignoreMerges: boolean;
  /** llama.cpp turns add_bos on for these unless the file says otherwise. */
  readonly addBosDefault: boolean;
}

interface Spec { patterns: string[]; ignoreMerges?: boolean; addBos?: boolean }

const DEFAULT: Spec = { patterns: ['[\\p{P}$+<=>^~|]+', GPT2, '\\p{N}+', '[0-9][0-9][0-9]'] };
const GPT2_SPEC: Spec = { patterns: [GPT2] };
const LLAMA3_SPEC: Spec = { patterns: [LLAMA3], ignoreMerges: true, addBos: true };
const QWEN2_SPEC: Spec = { patterns: [QWEN2] };
const STARCODER_SPEC: Spec = { patterns: ['\\p{N}', GPT2] };

const SPECS: Record<string, Spec> = {
  default: DEFAULT,
  'gpt-2': GPT2_SPEC, 'phi-2': GPT2_SPEC, mpt: GPT2_SPEC, olmo: GPT2_SPEC,
  llama3: LLAMA3_SPEC, 'llama-v3': LLAMA3_SPEC, 'llama-bpe': LLAMA3_SPEC, falcon3: LLAMA3_SPEC,
  dbrx: { patterns: [LLAMA3] }, 'smaug-bpe': { patterns: [LLAMA3] },
  qwen2: QWEN2_SPEC, 'deepseek-r1-qwen': QWEN2_SPEC, stablelm2: QWEN2_SPEC,
  starcoder: STARCODER_SPEC, refact: STARCODER_SPEC, smollm: STARCODER_SPEC,
};

export const SUPPORTED_PRE_TOKENIZERS: readonly string[] = Object.keys(SPECS);

const cache = new Map<string, PreTokenizer>();

/** The pre-tokenizer for tokenizer.ggml.pre (undefined: llama.cpp's 'default'). */
export function preTokenizerFor(pre: string | undefined): PreTokenizer {
  const name = pre ?? 'default';
  const hit = cache.get(name);
  if (hit) return hit;
  const spec = Object.hasOwn(SPECS, name) ? SPECS[name] : undefined;
  if (!spec) {
    throw new UnsupportedError(`tokenizer pre-tokenizer '${name}' (tokenizer.ggml.pre) is not supported`,
      `supported: ${SUPPORTED_PRE_TOKENIZERS.join(', ')}`);
  }
  const p: PreTokenizer = {
    name,
    regexes: spec.patterns.map((s) => new RegExp(s, 'gu')),
    ignoreMerges: spec.ignoreMerges ?? false,
    addBosDefault: spec.addBos ?? false,
  };
  cache.set(name, p);
  return p;
}

/** Splits text into pieces: every regex in turn, matches and the gaps between them both kept. */
export function preTokenize(text: string, p: PreTokenizer): string[] {
  let pieces = text.length > 0 ? [text] : [];
  for (const re of p.regexes) {
    const next: string[] = [];
    for (const piece of pieces) {
      let end = 0;
      for (const m of piece.matchAll(re)) {
        if (m[0].length === 0) continue;
        if (m.index > end) next.push(piece.slice(end, m.index));
        next.push(m[0]);
        end = m.index + m[0].length;
      }
      if (end < piece.length) next.push(piece.slice(end));
    }
    pieces = next;
  }
  return pieces;
}
