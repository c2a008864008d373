// Splitting input text around special tokens before ordinary tokenization, as llama.cpp's
// tokenizer_st_partition does: each special token in turn (longest text first), every occurrence in
// every still-plain fragment, left to right. Control and unknown tokens count only when special text
// is parsed; user-defined tokens always do.
import { TokenType, type Vocabulary } from './vocab.js';

/** A piece of input: plain text to tokenize, or a token id already decided. */
export type Fragment = string | number;

export interface SpecialTokens {
  /** Ids in matching order: longest UTF-8 text first, ties by id. */
  readonly ordered: readonly number[];
}

const utf8 = new TextEncoder();

export function specialTokens(v: Vocabulary): SpecialTokens {
  const ids: number[] = [];
  const bytes = new Map<number, number>();
  for (let i = 0; i < v.tokens.length; i++) {
    const t = v.types[i];
    if ((t === TokenType.CONTROL || t === TokenType.USER_DEFINED || t === TokenType.UNKNOWN) && v.tokens[i]!.length > 0) {
      ids.push(i);
      bytes.set(i, utf8.encode(v.tokens[i]!).length);
    }
  }
  // llama.cpp sorts by byte length with an unstable sort; equal lengths keep id order here.
  ids.sort((a, b) => bytes.get(b)! - bytes.get(a)! || a - b);
  return { ordered: ids };
}

export function partition(text: string, v: Vocabulary, specials: SpecialTokens, parseSpecial: boolean): Fragment[] {
  let fragments: Fragment[] = text.length > 0 ? [text] : [];
  for (const id of specials.ordered) {
    if (!parseSpecial && v.types[id] !== TokenType.USER_DEFINED) continue;
    const needle = v.tokens[id]!;
    let next: Fragment[] | undefined;
    for (let f = 0; f < fragments.length; f++) {
      const frag = fragments[f]!;
      const at = typeof frag === 'string' ? frag.indexOf(needle) : -1;
      if (at < 0) {
        next?.push(frag);
        continue;
      }
      next ??= fragments.slice(0, f);
      let start = 0;
      for (let hit = at; hit >= 0; hit = (frag as string).indexOf(needle, start)) {
        if (hit > start) next.push((frag as string).slice(start, hit));
        next.push(id);
        start = hit + needle.length;
      }
      if (start < (frag as string).length) next.push((frag as string).slice(start));
    }
    if (next) fragments = next;
  }
  return fragments;
}
