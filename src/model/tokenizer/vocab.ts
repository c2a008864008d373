// The tokenizer's view of GGUF metadata, read and checked the way llama.cpp's llama_vocab::load does:
// per-model defaults for special ids and flags, token types, and the text-based EOG heuristics.
import { getArray, getBool, getString, getU32, requireArray, type MetadataSource } from '../gguf.js';
import { ModelError, UnsupportedError } from '../errors.js';
import { preTokenizerFor, type PreTokenizer } from './pretokenize.js';

/** tokenizer.ggml.token_type values (llama_token_type). */
export const TokenType = {
  UNDEFINED: 0, NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6,
} as const;

export interface Vocabulary {
  kind: 'gpt2' | 'llama';
  tokens: string[];
  /** Token types after llama.cpp's fix-ups (EOG-looking tokens become CONTROL). */
  types: Uint8Array;
  /** SentencePiece scores (zeros when absent). */
  scores: Float32Array;
  /** Text -> id; a duplicated text maps to its last id, as in llama.cpp. */
  ids: Map<string, number>;
  /** BPE merge ranks keyed by mergeKey(left, right). */
  ranks: Map<string, number>;
  pre: PreTokenizer | undefined;
  bos: number | undefined;
  eos: number | undefined;
  unk: number | undefined;
  eot: number | undefined;
  eom: number | undefined;
  eog: Set<number>;
  addBos: boolean;
  addEos: boolean;
  addSpacePrefix: boolean;
}

/** Unambiguous key of a merge pair (symbols may contain spaces in hand-made vocabularies). */
export function mergeKey(left: string, right: string): string {
  return `${left.length}:${left}${right}`;
}

const FIX_HINT = 'the model file\'s tokenizer metadata is broken; convert it again with a current llama.cpp';

/** Token texts that llama.cpp treats as end-of-generation (and forces to CONTROL). */
const EOG_TEXTS = [
  '<|eot_id|>', '<|im_end|>', '<|end|>', '<|return|>', '<|call|>', '<end_of_turn>', '<|endoftext|>',
  '<|eom_id|>', '<EOT>', '_<EOT>', '<|end_of_text|>', '<end_of_utterance>',
];
/** Texts llama.cpp picks an EOT id from when tokenizer.ggml.eot_token_id is absent. */
const EOT_TEXTS = [
  '<|eot_id|>', '<|im_end|>', '<|end|>', '<end_of_turn>', '<|endoftext|>', '<EOT>', '_<EOT>',
  '<\uFF5Cend\u2581of\u2581sentence\uFF5C>', '<end_of_utterance>',
];

function stringArray(meta: MetadataSource, key: string, required: boolean): string[] | undefined {
  const arr = required ? requireArray(meta, key) : getArray(meta, key);
  if (arr === undefined) return undefined;
  for (let i = 0; i < arr.length; i++) {
    if (typeof arr[i] !== 'string') throw new ModelError(`${key}[${i}] is not a string`, FIX_HINT);
  }
  return arr as string[];
}

function numberArray(meta: MetadataSource, key: string, n: number): number[] | undefined {
  const arr = getArray(meta, key);
  if (arr === undefined) return undefined;
  if (arr.length !== n) throw new ModelError(`${key} has ${arr.length} entries but there are ${n} tokens`, FIX_HINT);
  return arr.map((v, i) => {
    if (typeof v === 'number') return v;
    if (typeof v === 'bigint') return Number(v);
    throw new ModelError(`${key}[${i}] is not a number`, FIX_HINT);
  });
}

export function readVocabulary(meta: MetadataSource): Vocabulary {
  const model = getString(meta, 'tokenizer.ggml.model');
  if (model === undefined) {
    throw new ModelError('missing required key tokenizer.ggml.model', 'the file has no tokenizer; use a GGUF model converted with its tokenizer');
  }
  if (model !== 'gpt2' && model !== 'llama') {
    throw new UnsupportedError(`tokenizer model '${model}' (tokenizer.ggml.model) is not supported`,
      "supported: 'gpt2' (byte-level BPE) and 'llama' (SentencePiece)");
  }
  const tokens = stringArray(meta, 'tokenizer.ggml.tokens', true)!;
  const n = tokens.length;
  if (n === 0) throw new ModelError('tokenizer.ggml.tokens is empty', FIX_HINT);

  const types = new Uint8Array(n).fill(TokenType.NORMAL);
  const rawTypes = numberArray(meta, 'tokenizer.ggml.token_type', n);
  if (rawTypes) rawTypes.forEach((t, i) => { types[i] = t >= 1 && t <= 6 ? t : TokenType.UNDEFINED; });
  const scores = new Float32Array(n);
  const rawScores = numberArray(meta, 'tokenizer.ggml.scores', n);
  if (rawScores) scores.set(rawScores);

  const ids = new Map<string, number>();
  tokens.forEach((t, i) => ids.set(t, i));

  const ranks = new Map<string, number>();
  let pre: PreTokenizer | undefined;
  if (model === 'gpt2') {
    pre = preTokenizerFor(getString(meta, 'tokenizer.ggml.pre'));
    const merges = stringArray(meta, 'tokenizer.ggml.merges', false);
    if (!merges) throw new ModelError('missing required key tokenizer.ggml.merges (byte-level BPE needs its merges)', FIX_HINT);
    merges.forEach((m, rank) => {
      // llama.cpp splits at the first space after the first character; a merge without one is inert.
      const at = m.indexOf(' ', 1);
      const key = at < 0 ? mergeKey('', '') : mergeKey(m.slice(0, at), m.slice(at + 1));
      if (!ranks.has(key)) ranks.set(key, rank);
    });
  }

  const id = (key: string, fallback: number | undefined): number | undefined => {
    const v = getU32(meta, `tokenizer.ggml.${key}`);
    if (v !== undefined && v < n) return v;
    return fallback !== undefined && fallback < n ? fallback : undefined;
  };
  const spm = model === 'llama';
  const bos = id('bos_token_id', spm ? 1 : 11);
  const eos = id('eos_token_id', spm ? 2 : 11);
  const unk = id('unknown_token_id', spm ? 0 : undefined);
  let eot = id('eot_token_id', undefined);
  let eom = id('eom_token_id', undefined);

  const control = (t: number) => { types[t] = TokenType.CONTROL; };
  if (eot === undefined) {
    for (const text of EOT_TEXTS) {
      const t = ids.get(text);
      if (t !== undefined) { eot = t; control(t); break; }
    }
  }
  if (eom === undefined) {
    const t = ids.get('<|eom_id|>');
    if (t !== undefined) { eom = t; control(t); }
  }
  const eog = new Set<number>();
  for (const text of EOG_TEXTS) {
    const t = ids.get(text);
    if (t !== undefined) { eog.add(t); control(t); }
  }
  for (const t of [eos, eot, eom]) if (t !== undefined) eog.add(t);

  const addBos = getBool(meta, 'tokenizer.ggml.add_bos_token') ?? (spm || (pre?.addBosDefault ?? false));
  const addEos = getBool(meta, 'tokenizer.ggml.add_eos_token') ?? false;
  const addSpacePrefix = getBool(meta, 'tokenizer.ggml.add_space_prefix') ?? spm;
  if (addBos && bos === undefined) throw new ModelError('tokenizer.ggml.add_bos_token is true but there is no valid bos_token_id', FIX_HINT);
  if (addEos && eos === undefined) throw new ModelError('tokenizer.ggml.add_eos_token is true but there is no valid eos_token_id', FIX_HINT);

  return {
    kind: model, tokens, types, scores, ids, ranks, pre, bos, eos, unk, eot, eom, eog, addBos, addEos, addSpacePrefix,
  };
}
