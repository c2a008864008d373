// Zero-copy direct reads: the direct-read slot layout (src/experts/host-cache.ts) and
// PositionedFile.readIntoRegion (native/src/io.cc), checked against plain fs reads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostCache, matrixView, slotLayout, DIRECT_READ_ALIGNMENT, type ExpertSizes, type HostEntry } from '../src/experts/host-cache.js';
import { ExpertReader } from '../src/experts/reader.js';
import { EXPERT_MATRICES, type ExpertLocator, type ExpertMatrix } from '../src/experts/locator.js';
import { PositionedFile, ioCounters, pageOffsetOf } from '../src/native/io.js';
import { FileAccessError } from '../src/model/errors.js';
import { fsRead, pseudoRandomBytes } from './reference/files.js';

const A = DIRECT_READ_ALIGNMENT;
const dir = mkdtempSync(join(tmpdir(), 'moe-direct-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

// Experts big enough for the direct-read layout (padding under 1%), with matrix sizes that are not
// multiples of the block and file offsets that are only 32-byte aligned, like a GGUF file's.
const L: Record<ExpertMatrix, number> = { gate: 1_000_032, up: 1_000_032, down: 1_000_064 };
const EXPERTS = 3;
// Stacked tensors: tensor m starts at base[m]; expert e's matrix at base[m] + e * L[m].
const BASE: Record<ExpertMatrix, number> = { gate: 32, up: 32 + EXPERTS * 1_000_032 + 4064, down: 0 };
BASE.down = BASE.up + EXPERTS * L.up + 96;
const FILE_BYTES = BASE.down + EXPERTS * L.down + 1000; // not a multiple of the block: the last cover runs past the end

type Ranges = Record<ExpertMatrix, { offset: number; byteLength: number }>;
function sizes(): Omit<ExpertSizes, 'expertRange'> & { expertRange(layer: number, expert: number): Ranges } {
  const range = (_l: number, e: number) => {
    const r = {} as Ranges;
    for (const m of EXPERT_MATRICES) r[m] = { offset: BASE[m] + e * L[m], byteLength: L[m] };
    return r;
  };
  return { layers: 1, expertCount: EXPERTS, hasExperts: () => true, expertRange: range };
}

test('slotLayout: large experts get a region per matrix with a spare block, padding under 1%; small ones stay compact', () => {
  const big = slotLayout({ gate: { byteLength: 300 * A }, up: { byteLength: 300 * A }, down: { byteLength: 300 * A + 5 } });
  assert.ok(big.regions);
  // Hand-computed: regions of 301, 301 and 302 blocks back to back, one block for the shift.
  assert.deepEqual(big.regions, { gate: { offset: 0, byteLength: 301 * A }, up: { offset: 301 * A, byteLength: 301 * A }, down: { offset: 602 * A, byteLength: 302 * A } });
  assert.equal(big.slotBytes, A + 904 * A);
  assert.equal(big.expertBytes, 900 * A + 5);
  const small = slotLayout({ gate: { byteLength: 100 }, up: { byteLength: 100 }, down: { byteLength: 60 } });
  assert.equal(small.regions, undefined);
  assert.equal(small.slotBytes, 320);
});

test('direct-read layout: each matrix sits at its file offset mod 4096, and its covering block range fits in its own region', async () => {
  const experts = sizes();
  const cache = new HostCache({ budgetBytes: 40 * slotLayout(experts.expertRange(0, 0)).slotBytes, experts, slabBytes: 7 * 2 ** 20 });
  const entries: HostEntry[] = [];
  for (let e = 0; e < EXPERTS; e++) entries.push(await cache.getOrLoad(0, e, async () => {}));
  for (const entry of entries) {
    assert.ok(entry.regions);
    const file = experts.expertRange(0, entry.expert);
    const slot = entry.slot;
    const spans: [number, number][] = [];
    for (const m of EXPERT_MATRICES) {
      const r = entry.ranges[m], g = entry.regions[m];
      const lead = file[m].offset % A;
      assert.equal(pageOffsetOf(matrixView(entry, m)), lead, `${m}: address congruent to the file offset`);
      const coverStart = r.offset - lead, coverEnd = coverStart + Math.ceil((lead + r.byteLength) / A) * A;
      assert.ok(coverStart >= g.offset && coverEnd <= g.offset + g.byteLength, `${m}: covering range inside the region`);
      assert.ok(g.offset >= slot.offset && g.offset + g.byteLength <= slot.offset + slot.byteLength, `${m}: region inside the slot`);
      spans.push([g.offset, g.offset + g.byteLength]);
    }
    spans.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) assert.ok(spans[i]![0] >= spans[i - 1]![1], 'regions do not overlap');
  }
});

const directDirs = [tmpdir(), '/var/tmp'];
for (const where of directDirs) test(`direct reads in ${where}: land in the slot without a copy, bytes equal fs reads (page-cache reader too)`, async (t) => {
  const sub = mkdtempSync(join(where, 'moe-direct-'));
  t.after(() => rmSync(sub, { recursive: true, force: true }));
  const path = join(sub, 'experts.bin');
  writeFileSync(path, pseudoRandomBytes(FILE_BYTES, 7));
  let direct: PositionedFile;
  try {
    direct = new PositionedFile(path, { direct: true });
  } catch (err) {
    assert.ok(err instanceof FileAccessError);
    t.diagnostic(`O_DIRECT refused here: ${(err as Error).message}`);
    return;
  }
  const buffered = new PositionedFile(path);
  const experts = sizes();
  const slot = slotLayout(experts.expertRange(0, 0)).slotBytes;
  try {
    for (const [file, zeroCopies] of [[direct, EXPERTS * 3], [buffered, 0]] as const) {
      const cache = new HostCache({ budgetBytes: EXPERTS * slot, experts });
      const reader = new ExpertReader(file, experts as unknown as ExpertLocator);
      const before = ioCounters();
      // All experts at once: nine reads in flight into neighbouring regions of three slots.
      const entries = await Promise.all(Array.from({ length: EXPERTS }, (_, e) => cache.getOrLoad(0, e, (x) => reader.load(x))));
      const after = ioCounters();
      for (const entry of entries) {
        const r = experts.expertRange(0, entry.expert);
        for (const m of EXPERT_MATRICES) assert.deepEqual(matrixView(entry, m), fsRead(path, r[m].offset, r[m].byteLength), `${file.direct ? 'direct' : 'buffered'} expert ${entry.expert} ${m}`);
      }
      assert.equal(after.zeroCopyReads - before.zeroCopyReads, zeroCopies, 'reads straight into the slot');
      assert.equal(after.bouncedReads - before.bouncedReads, 0, 'no read through the scratch buffer');
    }
    // The wanted bytes placed so that the covering range cannot land in the region: the scratch path,
    // same bytes, and nothing outside [at, at + length) written.
    const cases: { pos: number; len: number; place: (po: number) => { at: number; regionLen: number } }[] = [
      // the block before the wanted bytes would start before the region
      { pos: A + 32, len: 10_000, place: () => ({ at: 0, regionLen: 10_000 }) },
      // plenty of room, but the address is one byte off the file offset mod 4096
      { pos: A, len: 2 * A, place: (po) => ({ at: (A - po + 1) % A, regionLen: 5 * A }) },
      // aligned, but the covering range's tail runs past the region's end
      { pos: 100, len: 5000, place: (po) => { const at = (100 - po + A) % A + A; return { at, regionLen: at + 5000 }; } },
    ];
    for (const { pos, len, place } of cases) {
      const probe = new Uint8Array(new SharedArrayBuffer(8 * A));
      const { at, regionLen } = place(pageOffsetOf(probe));
      const region = probe.subarray(0, regionLen);
      region.fill(0xa5);
      const before = ioCounters();
      await direct.readIntoRegion(pos, region, at, len);
      assert.equal(ioCounters().bouncedReads - before.bouncedReads, 1, `read at ${pos} into region[${at}] goes through the scratch buffer`);
      assert.deepEqual(region.subarray(at, at + len), fsRead(path, pos, len));
      assert.ok(region.subarray(0, at).every((b) => b === 0xa5) && region.subarray(at + len).every((b) => b === 0xa5), 'bytes outside the wanted range untouched');
    }
    await assert.rejects(direct.readIntoRegion(0, new Uint8Array(10), 5, 6), RangeError);
  } finally {
    direct.close();
    buffered.close();
  }
});
