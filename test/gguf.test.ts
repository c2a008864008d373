import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs, { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gguf } from '@huggingface/gguf';
import { GGUFFile, GGUFValueType as T, getNumber, getString, metadataFrom, requireKey, requireU32, tensorRowBytes, tensorRows, type GGUFValue } from '../src/model/gguf.js';
import { GGUFWriter } from '../src/model/gguf-writer.js';
import { GGMLType } from '../src/model/ggml-types.js';
import { ModelError } from '../src/model/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'gguf-test-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;
const tmpFile = () => join(dir, `f${fileNo++}.gguf`);

/** One value per GGUF value type, at the edges of its range; f32 values are exactly representable. */
const SCALARS: [string, T, GGUFValue][] = [
  ['t.u8', T.UINT8, 255],
  ['t.i8', T.INT8, -128],
  ['t.u16', T.UINT16, 65535],
  ['t.i16', T.INT16, -32768],
  ['t.u32', T.UINT32, 4294967295],
  ['t.i32', T.INT32, -2147483648],
  ['t.f32', T.FLOAT32, -0.375],
  ['t.bool_true', T.BOOL, true],
  ['t.bool_false', T.BOOL, false],
  ['t.string', T.STRING, 'héllo ▁wörld 🙂'],
  ['t.empty_string', T.STRING, ''],
  ['t.u64', T.UINT64, 2n ** 64n - 1n],
  ['t.i64', T.INT64, -(2n ** 63n)],
  ['t.f64', T.FLOAT64, Math.PI],
];

const ARRAYS: [string, T, GGUFValue[]][] = [
  ['a.u8', T.UINT8, [0, 1, 255]],
  ['a.i8', T.INT8, [-128, 0, 127]],
  ['a.u16', T.UINT16, [0, 65535]],
  ['a.i16', T.INT16, [-32768, 32767]],
  ['a.u32', T.UINT32, [0, 4294967295]],
  ['a.i32', T.INT32, [-1, 2147483647]],
  ['a.f32', T.FLOAT32, [0.5, -2.25, Math.fround(0.1)]],
  ['a.bool', T.BOOL, [true, false, true]],
  ['a.string', T.STRING, ['a', '', 'Ġthe', '<|im_end|>']],
  ['a.u64', T.UINT64, [0n, 2n ** 64n - 1n]],
  ['a.i64', T.INT64, [-(2n ** 63n), 2n ** 63n - 1n]],
  ['a.f64', T.FLOAT64, [Math.E, -0.1]],
  ['a.empty', T.INT32, []],
  ['a.nested', T.ARRAY, [[1, 2, 3], [], [4]]],
  ['a.nested_strings', T.ARRAY, [['x', 'y'], ['z']]],
  ['a.nested3', T.ARRAY, [[[1.5], [2.5, 3.5]], [[4.5]]]],
];

interface TensorSpec { name: string; dims: number[]; type: GGMLType; bytes: number }
/** Byte sizes computed by hand from the ggml block tables (elements / block size * block bytes). */
const TENSORS: TensorSpec[] = [
  { name: 'token_embd.weight', dims: [8, 5], type: GGMLType.F32, bytes: 8 * 5 * 4 },
  { name: 'blk.0.attn_q.weight', dims: [64, 3], type: GGMLType.Q8_0, bytes: 2 * 34 * 3 },
  { name: 'blk.0.ffn_up_exps.weight', dims: [256, 2, 3], type: GGMLType.Q4_K, bytes: 144 * 2 * 3 },
  { name: 'odd.f16', dims: [3, 5], type: GGMLType.F16, bytes: 3 * 5 * 2 },
  { name: 'blk.0.q4_0', dims: [32], type: GGMLType.Q4_0, bytes: 18 },
];

function patternBytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + 1) & 0xff;
  return b;
}

function buildWriter(version: 2 | 3, alignment: number): GGUFWriter {
  const w = new GGUFWriter({ version, alignment });
  w.setString('general.architecture', 'test');
  for (const [k, t, v] of SCALARS) w.set(k, t, v);
  for (const [k, t, v] of ARRAYS) w.setArray(k, t, v);
  TENSORS.forEach((t, i) => w.addTensor(t.name, t.dims, t.type, patternBytes(t.bytes, i)));
  return w;
}

function alignUp(n: number, a: number): number { return Math.ceil(n / a) * a; }

for (const version of [2, 3] as const) {
  for (const alignment of [32, 64]) {
    test(`round trip v${version} alignment ${alignment}: every value type, arrays, tensors`, async () => {
      const path = tmpFile();
      buildWriter(version, alignment).write(path);
      const f = GGUFFile.open(path);
      try {
        assert.equal(f.version, version);
        assert.equal(f.alignment, alignment);
        assert.equal(f.fileSize, fs.statSync(path).size);
        assert.equal(f.get('general.architecture'), 'test');
        for (const [k, t, v] of SCALARS) {
          assert.equal(f.metadata.get(k)?.type, t, k);
          assert.deepEqual(f.get(k), v, k);
        }
        for (const [k, t, v] of ARRAYS) {
          const e = f.metadata.get(k);
          assert.equal(e?.type, T.ARRAY, k);
          assert.equal(e?.arrayType, t, k);
          assert.deepEqual(e?.value, v, k);
        }
        // Tensor index: file order, relative offsets packed at the alignment, sizes from the block tables.
        assert.deepEqual([...f.tensors.keys()], TENSORS.map((t) => t.name));
        assert.equal(f.dataOffset % alignment, 0);
        let rel = 0;
        TENSORS.forEach((spec, i) => {
          const info = f.tensors.get(spec.name)!;
          assert.deepEqual(info.dims, spec.dims);
          assert.equal(info.type, spec.type);
          assert.equal(info.byteLength, spec.bytes);
          assert.equal(info.elements, spec.dims.reduce((a, b) => a * b, 1));
          assert.equal(info.offset, f.dataOffset + rel);
          assert.deepEqual(f.readTensor(spec.name), patternBytes(spec.bytes, i));
          rel = alignUp(rel + spec.bytes, alignment);
        });
        // Cross-check against an independent parser.
        const ref = await gguf(path, { allowLocalFile: true, typedMetadata: true });
        assert.equal(Number(ref.tensorDataOffset), f.dataOffset);
        assert.equal(ref.metadata.version, version);
        assert.equal(ref.tensorInfos.length, f.tensors.size);
        for (const ti of ref.tensorInfos) {
          const ours = f.tensors.get(ti.name)!;
          assert.deepEqual(ti.shape.map(Number), ours.dims, ti.name);
          assert.equal(Number(ti.dtype), ours.type, ti.name);
          assert.equal(Number(ref.tensorDataOffset + ti.offset), ours.offset, ti.name);
        }
        for (const [k, e] of f.metadata) {
          const r = ref.typedMetadata[k];
          assert.ok(r, `reference parser lacks ${k}`);
          assert.equal(Number(r.type), e.type, k);
          // The reference parser gives f32 values as numbers and 64-bit ints as bigints, like ours.
          assert.deepEqual(r.value, e.value, k);
          if (e.type === T.ARRAY) assert.equal(Number(r.subType), e.arrayType, k);
        }
      } finally {
        f.close();
      }
    });
  }
}

test('toBuffer() and write() produce the same bytes', () => {
  const w = buildWriter(3, 32);
  const path = tmpFile();
  w.write(path);
  assert.deepEqual(new Uint8Array(fs.readFileSync(path)), w.toBuffer());
  // Atomic write leaves no temp file behind.
  assert.deepEqual(fs.readdirSync(dir).filter((n) => n.endsWith('.tmp')), []);
});

test('writer rejects data of the wrong size and rows that are not whole blocks', () => {
  const w = new GGUFWriter();
  assert.throws(() => w.addTensor('x', [32], GGMLType.Q8_0, new Uint8Array(33)), /needs 34/);
  assert.throws(() => w.addTensor('y', [16, 2], GGMLType.Q8_0, new Uint8Array(34)), /block size 32/);
  assert.throws(() => w.setU32('k', -1), /does not fit/);
  assert.throws(() => new GGUFWriter({ alignment: 48 }), /power of two/);
});

test('headers bigger than the read window: big vocab and a string longer than the window', () => {
  const path = tmpFile();
  const w = new GGUFWriter();
  const tokens = Array.from({ length: 200_000 }, (_, i) => `tok${i}_${'x'.repeat(i % 13)}`);
  const scores = tokens.map((_, i) => -i / 4); // quarters are exact in f32
  const big = 'ab'.repeat(800_000); // 1.6 MB, more than one 1 MiB window
  w.setStringArray('tokenizer.ggml.tokens', tokens);
  w.setArray('tokenizer.ggml.scores', T.FLOAT32, scores);
  w.setString('big', big);
  w.setU32('after', 7);
  w.addTensor('t', [4], GGMLType.F32, patternBytes(16, 1));
  w.write(path);
  const f = GGUFFile.open(path);
  try {
    assert.deepEqual(f.get('tokenizer.ggml.tokens'), tokens);
    assert.deepEqual(f.get('tokenizer.ggml.scores'), scores);
    assert.equal(f.get('big'), big);
    assert.equal(f.get('after'), 7);
    assert.deepEqual(f.readTensor('t'), patternBytes(16, 1));
  } finally {
    f.close();
  }
});

/** Byte position of the tensor info of `name` (its name's u64 length prefix) inside a GGUF buffer. */
function tensorInfoPos(buf: Uint8Array, name: string): number {
  const key = new Uint8Array(8 + name.length);
  new DataView(key.buffer).setBigUint64(0, BigInt(name.length), true);
  key.set(new TextEncoder().encode(name), 8);
  const at = Buffer.from(buf).lastIndexOf(Buffer.from(key));
  assert.ok(at > 0, `tensor info ${name} not found`);
  return at;
}

test('open() on a 2 GiB file reads only the header', () => {
  // A 2 GiB tensor whose data is a sparse hole: write a one-row tensor, widen its dims in place, extend.
  const w = new GGUFWriter();
  w.setString('general.architecture', 'test');
  w.addTensor('big', [1024, 1], GGMLType.F32, new Uint8Array(4096));
  const buf = w.toBuffer();
  const rows = (2 * 1024 ** 3) / 4096;
  const dim1At = tensorInfoPos(buf, 'big') + 8 + 3 + 4 + 8;
  new DataView(buf.buffer).setBigUint64(dim1At, BigInt(rows), true);
  const path = tmpFile();
  writeFileSync(path, buf);
  const dataStart = buf.length - 4096;
  truncateSync(path, dataStart + 2 * 1024 ** 3);

  // Count what fs.readSync really reads, independently of the reader's own bookkeeping.
  const realReadSync = fs.readSync;
  let bytes = 0;
  let calls = 0;
  fs.readSync = ((...args: Parameters<typeof fs.readSync>) => {
    const n = (realReadSync as (...a: unknown[]) => number)(...args);
    bytes += n;
    calls++;
    return n;
  }) as typeof fs.readSync;
  syncBuiltinESMExports();
  let f: GGUFFile;
  const t0 = performance.now();
  try {
    f = GGUFFile.open(path);
  } finally {
    fs.readSync = realReadSync;
    syncBuiltinESMExports();
  }
  const ms = performance.now() - t0;
  try {
    const info = f.tensors.get('big')!;
    assert.equal(info.byteLength, 2 * 1024 ** 3);
    assert.equal(info.offset + info.byteLength, f.fileSize);
    assert.ok(calls >= 1, 'the wrapper saw the reads');
    assert.ok(bytes <= 1024 * 1024, `open() read ${bytes} bytes`);
    assert.ok(ms < 2000, `open() took ${ms} ms`);
    // A positioned read deep in the file works and sees the hole's zeros.
    const tail = f.readRange(f.fileSize - 8, 8);
    assert.deepEqual(tail, new Uint8Array(8));
  } finally {
    f.close();
  }
});

test('readRange reads into a caller buffer; readTensor of an unknown name is a ModelError', () => {
  const path = tmpFile();
  buildWriter(3, 32).write(path);
  const f = GGUFFile.open(path);
  try {
    const t = f.tensors.get('blk.0.attn_q.weight')!;
    const into = new Uint8Array(t.byteLength + 10);
    const view = f.readRange(t.offset, t.byteLength, into);
    assert.equal(view.buffer, into.buffer);
    assert.equal(view.byteLength, t.byteLength);
    assert.deepEqual(view, patternBytes(t.byteLength, 1));
    assert.throws(() => f.readTensor('nope.weight'), (e: unknown) => e instanceof ModelError && /nope\.weight/.test(e.message));
    assert.equal(tensorRowBytes(t), 68);
    assert.equal(tensorRows(t), 3);
  } finally {
    f.close();
  }
});

test('metadata accessors: required keys and type checks', () => {
  const src = metadataFrom({ 'a.n': 5, 'a.big': 7n, 'a.s': 'x', 'a.f': 1.5 });
  assert.equal(requireU32(src, 'a.n'), 5);
  assert.equal(requireU32(src, 'a.big'), 7);
  assert.equal(getNumber(src, 'a.f'), 1.5);
  assert.equal(getNumber(src, 'a.none'), undefined);
  assert.equal(getString(src, 'a.s'), 'x');
  assert.throws(() => requireKey(src, 'a.none'), (e: unknown) => e instanceof ModelError && e.message === 'missing required key a.none');
  assert.throws(() => requireU32(src, 'a.f'), ModelError);
  assert.throws(() => getString(src, 'a.n'), ModelError);
});
