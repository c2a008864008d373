// Test files and the plain way to read them back: pseudo-random contents, and fs.readSync as the
// reference that the native positioned reads (native/src/io.cc) are checked against.
import { openSync, readSync, closeSync } from 'node:fs';

/** `n` pseudo-random bytes (xorshift32, seeded): the same seed gives the same bytes. */
export function pseudoRandomBytes(n: number, seed: number): Uint8Array {
  const buf = new Uint8Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    buf[i] = s & 0xff;
  }
  return buf;
}

/** Bytes [position, position + length) of the file through fs.readSync (fewer at the end of the file). */
export function fsRead(path: string, position: number, length: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, out, done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
    return out.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}
