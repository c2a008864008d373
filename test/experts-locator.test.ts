import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GGUFFile } from '../src/model/gguf.js';
import { GGUFWriter } from '../src/model/gguf-writer.js';
import { GGMLType } from '../src/model/ggml-types.js';
import { ModelError } from '../src/model/errors.js';
import { ExpertLocator } from '../src/experts/locator.js';
import { HostCache } from '../src/experts/host-cache.js';

const dir = mkdtempSync(join(tmpdir(), 'experts-locator-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;

/** Distinct, position-dependent bytes so a wrong slice cannot compare equal by accident. */
function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed * 2654435761 >>> 0;
  for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) >>> 0; b[i] = x >>> 24; }
  return b;
}

interface T { name: string; dims: number[]; type: GGMLType; bytes: number }

// Hand-computed sizes (alignment 32):
//   token_embd     F32 [32, 5]      = 640 bytes            rel offset 0
//   blk.0.ffn_up   F32 [32, 2]      = 256                  rel 640   (layer 0 is dense)
//   blk.1.ffn_gate_inp F32 [32, 3]  = 384                  rel 896
//   gate_exps      F32 [32, 4, 3]   = 3 x 512 = 1536       rel 1280  (expert: 4 rows x 128 bytes)
//   up_exps        Q8_0 [32, 4, 3]  = 3 x 136 = 408 -> 416 rel 2816  (expert: 4 rows x 34 bytes)
//   down_exps      F16 [4, 32, 3]   = 3 x 256 = 768        rel 3232  (expert: 32 rows x 8 bytes)
//   ffn_gate_shexp F32 [32, 2]      = 256                  rel 4000
const TENSORS: T[] = [
  { name: 'token_embd.weight', dims: [32, 5], type: GGMLType.F32, bytes: 640 },
  { name: 'blk.0.ffn_up.weight', dims: [32, 2], type: GGMLType.F32, bytes: 256 },
  { name: 'blk.1.ffn_gate_inp.weight', dims: [32, 3], type: GGMLType.F32, bytes: 384 },
  { name: 'blk.1.ffn_gate_exps.weight', dims: [32, 4, 3], type: GGMLType.F32, bytes: 1536 },
  { name: 'blk.1.ffn_up_exps.weight', dims: [32, 4, 3], type: GGMLType.Q8_0, bytes: 408 },
  { name: 'blk.1.ffn_down_exps.weight', dims: [4, 32, 3], type: GGMLType.F16, bytes: 768 },
  { name: 'blk.1.ffn_gate_shexp.weight', dims: [32, 2], type: GGMLType.F32, bytes: 256 },
];
const REL = [0, 640, 896, 1280, 2816, 3232, 4000];

function writeModel(tensors: T[], meta: { blocks?: number; experts?: number } = {}): { path: string; data: Map<string, Uint8Array> } {
  const w = new GGUFWriter();
  w.setString('general.architecture', 'qwen3moe');
  w.setU32('qwen3moe.block_count', meta.blocks ?? 2);
  w.setU32('qwen3moe.expert_count', meta.experts ?? 3);
  w.setU32('qwen3moe.expert_used_count', 2);
  const data = new Map<string, Uint8Array>();
  tensors.forEach((t, i) => {
    const d = bytes(t.bytes, i + 1);
    data.set(t.name, d);
    w.addTensor(t.name, t.dims, t.type, d);
  });
  const path = join(dir, `m${fileNo++}.gguf`);
  w.write(path);
  return { path, data };
}

test('locate: offsets, sizes and bytes of each expert matrix match the hand layout', () => {
  const { path, data } = writeModel(TENSORS);
  const f = GGUFFile.open(path);
  try {
    // The reader's offsets agree with the hand-computed layout (so the checks below rest on it).
    TENSORS.forEach((t, i) => assert.equal(f.tensor(t.name).offset, f.dataOffset + REL[i]!, t.name));
    const loc = new ExpertLocator(f);
    assert.equal(loc.layers, 2);
    assert.equal(loc.expertCount, 3);
    assert.equal(loc.expertUsedCount, 2);
    assert.equal(loc.hasExperts(0), false);
    assert.equal(loc.hasExperts(1), true);
    assert.equal(loc.totalExpertBytes, 1536 + 408 + 768);

    const per = { gate: { rel: 1280, size: 512, rows: 4, cols: 32, type: GGMLType.F32 },
      up: { rel: 2816, size: 136, rows: 4, cols: 32, type: GGMLType.Q8_0 },
      down: { rel: 3232, size: 256, rows: 32, cols: 4, type: GGMLType.F16 } };
    for (let e = 0; e < 3; e++) {
      for (const m of ['gate', 'up', 'down'] as const) {
        const r = loc.locate(1, e, m);
        const want = per[m];
        assert.deepEqual(r, { offset: f.dataOffset + want.rel + e * want.size, byteLength: want.size, type: want.type, rows: want.rows, cols: want.cols });
        const wrote = data.get(`blk.1.ffn_${m}_exps.weight`)!.subarray(e * want.size, (e + 1) * want.size);
        assert.deepEqual(f.readRange(r.offset, r.byteLength), wrote, `layer 1 expert ${e} ${m}`);
      }
      assert.equal(loc.expertBytes(1, e), 512 + 136 + 256);
      const rr = loc.expertRange(1, e);
      assert.deepEqual(rr.up, loc.locate(1, e, 'up'));
      // Not adjacent: up of expert e does not start where gate of expert e ends.
      assert.notEqual(rr.up.offset, rr.gate.offset + rr.gate.byteLength);
    }
    assert.equal(loc.maxExpertBytes(), 904);
    assert.deepEqual(loc.residentTensors().map((t) => t.name),
      ['token_embd.weight', 'blk.0.ffn_up.weight', 'blk.1.ffn_gate_inp.weight', 'blk.1.ffn_gate_shexp.weight']);
    // The locator gives the cache its sizes: slot = 512 + 136 (padded to 192) + 256 = 960 bytes.
    const cache = new HostCache({ budgetBytes: 2 * 960, experts: loc, backing: 'none' });
    assert.equal(cache.slotBytes, 960);
    assert.equal(cache.capacity, 2);
    assert.throws(() => cache.access(0, 0), /no experts/);
    assert.throws(() => loc.locate(0, 0, 'gate'), /dense/);
    assert.throws(() => loc.locate(1, 3, 'gate'), RangeError);
    assert.throws(() => loc.locate(2, 0, 'gate'), RangeError);
  } finally {
    f.close();
  }
});

function expectModelError(tensors: T[], pattern: RegExp, meta?: { blocks?: number; experts?: number }): void {
  const { path } = writeModel(tensors, meta);
  const f = GGUFFile.open(path);
  try {
    assert.throws(() => new ExpertLocator(f), (err: unknown) => err instanceof ModelError && pattern.test(err.message));
  } finally {
    f.close();
  }
}

test('missing or inconsistent expert tensors are ModelErrors naming the tensor', () => {
  expectModelError(TENSORS.filter((t) => !t.name.includes('up_exps')), /blk\.1\.ffn_up_exps\.weight not found/);
  // expert_count disagrees with the stacked dimension
  expectModelError(TENSORS, /blk\.1\.ffn_gate_exps\.weight has dims \[32, 4, 3\].*4 experts/, { experts: 4 });
  // down not the transpose of gate
  const badDown = TENSORS.map((t) => (t.name.includes('down_exps') ? { ...t, dims: [4, 16, 3], bytes: 384 } : t));
  expectModelError(badDown, /blk\.1\.ffn_down_exps\.weight has dims \[4, 16, 3\]/);
  // up with a different width than gate
  const badUp = TENSORS.map((t) => (t.name.includes('up_exps') ? { ...t, dims: [32, 2, 3], bytes: 204 } : t));
  expectModelError(badUp, /blk\.1\.ffn_up_exps\.weight has dims \[32, 2, 3\]/);
  // expert tensors of a layer the metadata does not have
  expectModelError(TENSORS, /blk\.1\.ffn_gate_exps\.weight is beyond the model's 1 layers/, { blocks: 1 });
  // no experts at all
  expectModelError(TENSORS.filter((t) => !t.name.includes('_exps')), /no stacked expert tensors/);
});
