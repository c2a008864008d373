// GPT-2's bytes_to_unicode: byte-level BPE vocabularies spell every byte as a printable character.
// Printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 bytes map to
// U+0100, U+0101, ... in byte order.

function buildTable(): string[] {
  const table = new Array<string>(256);
  let next = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCharCode(printable ? b : 0x100 + next++);
  }
  return table;
}

/** byte -> its character in byte-level BPE vocabularies. */
export const BYTE_TO_CHAR: readonly string[] = buildTable();

/** The reverse of BYTE_TO_CHAR. */
export const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

const utf8 = new TextEncoder();

/** A text piece as byte-level BPE spells it: each UTF-8 byte becomes one character. */
export function byteEncode(text: string): string {
  let out = '';
  for (const b of utf8.encode(text)) out += BYTE_TO_CHAR[b];
  return out;
}

/**
 * The bytes a byte-level BPE token stands for. Characters outside the table (not produced by
 * byteEncode, but possible in hand-made vocabularies) keep their own UTF-8 bytes.
 */
export function byteDecode(tokenText: string): Uint8Array {
  const out: number[] = [];
  for (const ch of tokenText) {
    const b = CHAR_TO_BYTE.get(ch);
    if (b !== undefined) out.push(b);
    else out.push(...utf8.encode(ch));
  }
  return Uint8Array.from(out);
}
