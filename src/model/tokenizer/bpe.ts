// Byte-level BPE inside one pre-tokenized piece, as llama.cpp's llm_tokenizer_bpe_session does:
// repeatedly merge the adjacent pair with the lowest merge rank (ties: the leftmost pair).
import { PriorityQueue } from './priority-queue.js';
import { mergeKey, type Vocabulary } from './vocab.js';

interface Bigram { left: number; right: number; text: string; rank: number }

const bigramFirst = (a: Bigram, b: Bigram) => a.rank < b.rank || (a.rank === b.rank && a.left < b.left);

/** The symbols a byte-encoded word merges into. */
export function bpeMerge(word: string, ranks: ReadonlyMap<string, number>): string[] {
  const sym = Array.from(word);
  const n = sym.length;
  if (n < 2) return sym;
  const prev = Array.from({ length: n }, (_, i) => i - 1);
  const next = Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
  const queue = new PriorityQueue<Bigram>(bigramFirst);
  const addBigram = (left: number, right: number) => {
    if (left < 0 || right < 0) return;
    const rank = ranks.get(mergeKey(sym[left]!, sym[right]!));
    if (rank !== undefined) queue.push({ left, right, text: sym[left]! + sym[right]!, rank });
  };
  for (let i = 1; i < n; i++) addBigram(i - 1, i);
  for (let b = queue.pop(); b !== undefined; b = queue.pop()) {
    const l = sym[b.left]!;
    const r = sym[b.right]!;
    // Entries go stale when a neighbour merged first; their text no longer matches.
    if (l === '' || r === '' || l + r !== b.text) continue;
    sym[b.left] = b.text;
    sym[b.right] = '';
    next[b.left] = next[b.right]!;
    if (next[b.right]! >= 0) prev[next[b.right]!] = b.left;
    addBigram(prev[b.left]!, b.left);
    addBigram(b.left, next[b.left]!);
  }
  const out: string[] = [];
  for (let i = 0; i !== -1; i = next[i]!) out.push(sym[i]!);
  return out;
}

const utf8 = new TextEncoder();

/** Token ids of one byte-encoded word. */
export function bpeWordIds(word: string, v: Vocabulary, ignoreMerges: boolean): number[] {
  if (ignoreMerges) {
    const whole = v.ids.get(word);
    if (whole !== undefined) return [whole];
  }
  const out: number[] = [];
  for (const s of bpeMerge(word, v.ranks)) {
    const id = v.ids.get(s);
    if (id !== undefined) {
      out.push(id);
      continue;
    }
    // llama.cpp's fallback for a symbol missing from the vocabulary: look up each of its UTF-8 bytes
    // as a one-byte string; only ASCII can match, anything else is dropped.
    for (const b of utf8.encode(s)) {
      const byteId = b < 0x80 ? v.ids.get(String.fromCharCode(b)) : undefined;
      if (byteId !== undefined) out.push(byteId);
    }
  }
  return out;
}
