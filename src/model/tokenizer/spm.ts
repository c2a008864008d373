// SentencePiece (tokenizer.ggml.model 'llama') as llama.cpp's llm_tokenizer_spm_session does it: start
// from single characters, repeatedly merge the adjacent pair whose concatenation is a vocabulary entry
// with the highest score (ties: the leftmost pair); leftover characters that are not tokens become
// byte tokens <0xXX>.
import { ModelError } from '../errors.js';
import { PriorityQueue } from './priority-queue.js';
import type { Vocabulary } from './vocab.js';

interface Bigram { left: number; right: number; score: number; size: number }

const bigramFirst = (a: Bigram, b: Bigram) => a.score > b.score || (a.score === b.score && a.left < b.left);

/** Token id for each byte value: <0xXX>, else the one-character token, else unk. */
export function byteTokens(v: Vocabulary): (number | undefined)[] {
  const out: (number | undefined)[] = [];
  for (let b = 0; b < 256; b++) {
    const hex = `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
    out.push(v.ids.get(hex) ?? (b < 0x80 ? v.ids.get(String.fromCharCode(b)) : undefined) ?? v.unk);
  }
  return out;
}

const utf8 = new TextEncoder();

/** Appends the ids of `text` (already whitespace-escaped with U+2581) to `out`. */
export function spmTokenize(text: string, v: Vocabulary, bytes: readonly (number | undefined)[], out: number[]): void {
  const sym = Array.from(text);
  const n = sym.length;
  if (n === 0) return;
  const prev = Array.from({ length: n }, (_, i) => i - 1);
  const next = Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
  const queue = new PriorityQueue<Bigram>(bigramFirst);
  const tryAdd = (left: number, right: number) => {
    if (left < 0 || right < 0) return;
    const joined = sym[left]! + sym[right]!;
    const id = v.ids.get(joined);
    if (id !== undefined) queue.push({ left, right, score: v.scores[id]!, size: joined.length });
  };
  for (let i = 1; i < n; i++) tryAdd(i - 1, i);
  for (let b = queue.pop(); b !== undefined; b = queue.pop()) {
    const l = sym[b.left]!;
    const r = sym[b.right]!;
    // Symbols only grow, so a changed length means a neighbour merged first.
    if (l === '' || r === '' || l.length + r.length !== b.size) continue;
    sym[b.left] = l + r;
    sym[b.right] = '';
    next[b.left] = next[b.right]!;
    if (next[b.right]! >= 0) prev[next[b.right]!] = b.left;
    tryAdd(prev[b.left]!, b.left);
    tryAdd(b.left, next[b.left]!);
  }
  for (let i = 0; i !== -1; i = next[i]!) {
    const s = sym[i]!;
    const id = v.ids.get(s);
    if (id !== undefined) {
      out.push(id);
      continue;
    }
    for (const byte of utf8.encode(s)) {
      const bid = bytes[byte];
      if (bid === undefined) {
        throw new ModelError(`the vocabulary has no token for byte 0x${byte.toString(16).padStart(2, '0')} (no <0xXX> byte tokens and no unknown token)`,
          'this SentencePiece vocabulary cannot encode the text; use a model with byte-fallback tokens');
      }
      out.push(bid);
    }
  }
}
