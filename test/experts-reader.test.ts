// Positioned native reads (native/src/io.cc via src/native/io.ts) and the expert reader on top of them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, truncateSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PositionedFile, rawIo } from '../src/native/io.js';
import { FileAccessError } from '../src/model/errors.js';
import { fsRead, pseudoRandomBytes } from './reference/files.js';

const dir = mkdtempSync(join(tmpdir(), 'moe-io-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** A file of `n` pseudo-random bytes in the test's directory. */
function randomFile(name: string, n: number, seed = 12345): string {
  const path = join(dir, name);
  writeFileSync(path, pseudoRandomBytes(n, seed));
  return path;
}

const SIZE = 3 * 1024 * 1024 + 1234;
const RANGES: [number, number][] = [[0, 1], [0, 4096], [1, 4095], [4095, 2], [12345, 100000], [SIZE - 17, 17], [777, 2 * 1024 * 1024 + 3], [0, SIZE]];

test('readInto: ranges equal fs.readSync, including unaligned and whole-file reads', async () => {
  const path = randomFile('a.bin', SIZE);
  const f = new PositionedFile(path);
  try {
    for (const [pos, len] of RANGES) {
      const dst = new Uint8Array(len);
      await f.readInto(pos, dst);
      assert.deepEqual(dst, fsRead(path, pos, len), `range ${pos}+${len}`);
    }
  } finally {
    f.close();
  }
});

test('readInto: into a SharedArrayBuffer view at an offset, leaving neighbours untouched', async () => {
  const path = randomFile('b.bin', 100000, 99);
  const f = new PositionedFile(path);
  const sab = new SharedArrayBuffer(70000);
  const all = new Uint8Array(sab);
  all.fill(0xa5);
  try {
    // several reads in flight at once into disjoint parts of one slab
    await Promise.all([
      f.readInto(10, new Uint8Array(sab, 64, 5000)),
      f.readInto(50000, new Uint8Array(sab, 5064, 30000)),
    ]);
  } finally {
    f.close();
  }
  assert.deepEqual(all.subarray(64, 5064), fsRead(path, 10, 5000));
  assert.deepEqual(all.subarray(5064, 35064), fsRead(path, 50000, 30000));
  assert.ok(all.subarray(0, 64).every((b) => b === 0xa5));
  assert.ok(all.subarray(35064).every((b) => b === 0xa5));
});

test('readInto: a zero-length read resolves', async () => {
  const f = new PositionedFile(randomFile('z.bin', 10));
  try {
    await f.readInto(5, new Uint8Array(0));
  } finally {
    f.close();
  }
});

test('readInto: a file truncated after open rejects with the path and offset (no hang)', async () => {
  const path = randomFile('c.bin', 200000, 7);
  const f = new PositionedFile(path);
  try {
    truncateSync(path, 1000);
    await assert.rejects(f.readInto(500, new Uint8Array(4000)), (err: Error) => {
      assert.ok(err instanceof FileAccessError);
      assert.match(err.message, /end of file/);
      assert.match(err.message, /c\.bin/);
      assert.match(err.message, /offset 500/);
      assert.match(err.message, /got 500 bytes/);
      return true;
    });
    // A range fully past the end also rejects.
    await assert.rejects(f.readInto(150000, new Uint8Array(10)), /end of file/);
  } finally {
    f.close();
  }
});

test('readInto: a removed file stays readable through its open fd (POSIX), a closed fd rejects', async () => {
  const path = randomFile('d.bin', 8192, 3);
  const want = fsRead(path, 100, 50);
  const f = new PositionedFile(path);
  rmSync(path);
  const dst = new Uint8Array(50);
  await f.readInto(100, dst);
  assert.deepEqual(dst, want);
  f.close();
  await assert.rejects(f.readInto(0, new Uint8Array(1)), /after it was closed/);
  // The raw fd after close: EBADF, reported as not open.
  const fd = rawIo.openFile(randomFile('e.bin', 100), false);
  rawIo.closeFile(fd);
  await assert.rejects(rawIo.readInto(fd, 0, new Uint8Array(1)), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'EBADF');
    assert.match(err.message, /not open/);
    return true;
  });
  assert.throws(() => rawIo.closeFile(fd), /already closed/);
});

test('openFile: a missing file is a FileAccessError naming it', () => {
  const missing = join(dir, 'no-such-file.gguf');
  assert.ok(!existsSync(missing));
  assert.throws(() => new PositionedFile(missing), (err: Error) => {
    assert.ok(err instanceof FileAccessError);
    assert.match(err.message, /cannot open .*no-such-file\.gguf: No such file/);
    return true;
  });
});

test('readInto: bad arguments are TypeErrors/RangeErrors, not crashes', () => {
  assert.throws(() => rawIo.readInto(0, -1, new Uint8Array(1)), RangeError);
  assert.throws(() => rawIo.readInto(0, 0, new Float32Array(1) as unknown as Uint8Array), TypeError);
  assert.throws(() => (rawIo.readInto as (...a: unknown[]) => unknown)(0, 0), TypeError);
});

// O_DIRECT: tmpfs refuses it (EINVAL at open), ext4/xfs accept it. Test whatever this machine's temp
// dir does, and the aligned-scratch path for unaligned requests when it is accepted.
const shm = existsSync('/dev/shm') ? mkdtempSync('/dev/shm/moe-io-') : undefined;
process.on('exit', () => { if (shm) rmSync(shm, { recursive: true, force: true }); });
const directDirs = [dir, ...(shm ? [shm] : [])];

for (const where of directDirs) test(`direct I/O in ${where}: reads equal fs.readSync, or the refusal is a clear error`, async (t) => {
  const path = join(where, 'f.bin');
  writeFileSync(path, fsRead(randomFile('f-src.bin', SIZE, 42), 0, SIZE));
  let f: PositionedFile;
  try {
    f = new PositionedFile(path, { direct: true });
  } catch (err) {
    assert.ok(err instanceof FileAccessError);
    assert.match((err as Error).message, /refuses direct I\/O \(O_DIRECT\)/);
    assert.match((err as FileAccessError).hint ?? '', /without --direct-io/);
    t.diagnostic(`O_DIRECT refused here: ${(err as Error).message}`);
    return;
  }
  try {
    for (const [pos, len] of RANGES) {
      const dst = new Uint8Array(len);
      await f.readInto(pos, dst);
      assert.deepEqual(dst, fsRead(path, pos, len), `direct range ${pos}+${len}`);
    }
    // Aligned request into an aligned SharedArrayBuffer (the direct, no-scratch path).
    const sab = new SharedArrayBuffer(3 * 8192);
    const view = new Uint8Array(sab, 8192, 8192);
    await f.readInto(4096, view);
    assert.deepEqual(view, fsRead(path, 4096, 8192));
    // Early end of file through the scratch path.
    truncateSync(path, 5000);
    await assert.rejects(f.readInto(4000, new Uint8Array(2000)), /end of file/);
  } finally {
    f.close();
  }
});

// The expert reader: a HostCache miss filled from a real fixture equals the bytes of the stacked tensors.
test('ExpertReader fills a cache slot with the expert\'s three ranges, reporting bytes and time', async () => {
  const { GGUFFile } = await import('../src/model/gguf.js');
  const { ExpertLocator, EXPERT_MATRICES } = await import('../src/experts/locator.js');
  const { HostCache, matrixView } = await import('../src/experts/host-cache.js');
  const { ExpertReader } = await import('../src/experts/reader.js');
  const path = new URL('../../fixtures/qwen2moe-q4_0.gguf', import.meta.url).pathname;
  const gguf = GGUFFile.open(path);
  const file = new PositionedFile(path);
  try {
    const loc = new ExpertLocator(gguf);
    const reads: [number, number][] = [];
    const reader = new ExpertReader(file, loc, (layer, bytes) => reads.push([layer, bytes]));
    const cache = new HostCache({ budgetBytes: 4 * 1024 * 1024, experts: loc });
    for (const [layer, expert] of [[0, 0], [1, 5], [loc.layers - 1, loc.expertCount - 1]] as const) {
      const entry = await cache.getOrLoad(layer, expert, (e) => reader.load(e));
      for (const m of EXPERT_MATRICES) {
        // independent of the locator's arithmetic: slice the whole stacked tensor as the GGUF reader reads it
        const stacked = gguf.readTensor(`blk.${layer}.ffn_${m}_exps.weight`);
        const per = stacked.byteLength / loc.expertCount;
        assert.deepEqual(matrixView(entry, m), stacked.subarray(expert * per, (expert + 1) * per), `layer ${layer} expert ${expert} ${m}`);
      }
      cache.release(entry);
    }
    assert.deepEqual(reads.map(([l]) => l), [0, 1, loc.layers - 1]);
    for (const [, bytes] of reads) assert.equal(bytes, loc.expertBytes(0, 0));
  } finally {
    file.close();
    gguf.close();
  }
});
