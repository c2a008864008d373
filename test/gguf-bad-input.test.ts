// Bad GGUF input must end in the right error class with a message that says what is wrong, and, through
// the CLI, in one line on stderr and exit code 2: never a stack trace, never a hang.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GGUFFile, GGUFValueType as T } from '../src/model/gguf.js';
import { GGUFWriter } from '../src/model/gguf-writer.js';
import { GGMLType } from '../src/model/ggml-types.js';
import { FileAccessError, GGUFFormatError, MoeOffloadError, UnsupportedError } from '../src/model/errors.js';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'gguf-bad-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;

function validFile(): { buf: Uint8Array; dataOffset: number } {
  const w = new GGUFWriter();
  w.setString('general.architecture', 'llama');
  w.setU32('general.alignment', 32);
  w.setU32('llama.block_count', 1);
  w.setString('dup.aa', 'first');
  w.setString('dup.bb', 'second');
  w.setStringArray('tokenizer.ggml.tokens', ['<s>', 'a', 'b']);
  w.addTensor('first.weight', [32, 2], GGMLType.Q8_0, new Uint8Array(68));
  w.addTensor('second.weight', [16, 4], GGMLType.F32, new Uint8Array(256));
  w.addTensor('other.weight', [8], GGMLType.F32, new Uint8Array(32)); // same name length as first.weight
  const buf = w.toBuffer();
  // The data section starts right after the header's padding: the first tensor is at relative offset 0.
  return { buf, dataOffset: buf.length - 32 - 256 - 96 /* 68 bytes padded to 96 */ };
}

/** Position of a length-prefixed name (key or tensor name) in the header: its u64 length. */
function namePos(buf: Uint8Array, name: string): number {
  const needle = Buffer.alloc(8 + Buffer.byteLength(name));
  needle.writeBigUInt64LE(BigInt(Buffer.byteLength(name)), 0);
  needle.write(name, 8);
  const at = Buffer.from(buf).indexOf(needle);
  assert.ok(at >= 0, `${name} not found`);
  return at;
}

/** Byte positions of the fields of a tensor info with `nDims` dims. */
function tensorFields(buf: Uint8Array, name: string, nDims: number) {
  const start = namePos(buf, name);
  const dims = start + 8 + name.length + 4;
  return { dims, type: dims + 8 * nDims, offset: dims + 8 * nDims + 4 };
}

function patched(edit: (v: DataView, buf: Uint8Array) => void): Uint8Array {
  const { buf } = validFile();
  edit(new DataView(buf.buffer, buf.byteOffset, buf.byteLength), buf);
  return buf;
}

function save(bytes: Uint8Array): string {
  const path = join(dir, `bad${fileNo++}.gguf`);
  writeFileSync(path, bytes);
  return path;
}

function openError(path: string): MoeOffloadError {
  try {
    GGUFFile.open(path).close();
  } catch (err) {
    assert.ok(err instanceof MoeOffloadError, `expected a MoeOffloadError, got ${String(err)}`);
    return err;
  }
  assert.fail(`${path} opened without an error`);
}

/** The CLI on a bad file: exit 2, exactly one stderr line 'moe-offload: ...', no stack. */
function cliError(path: string): string {
  const r = spawnSync(process.execPath, ['bin/moe-offload.js', 'inspect', '--model', path], {
    cwd: repoRoot, encoding: 'utf8', timeout: 30_000,
  });
  assert.equal(r.error, undefined, `spawn failed or timed out: ${String(r.error)}`);
  assert.equal(r.status, 2, `exit code ${r.status}, stderr: ${r.stderr}`);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `stderr: ${r.stderr}`);
  assert.ok(lines[0]!.startsWith('moe-offload: '), lines[0]);
  assert.ok(!r.stderr.includes('    at '), 'stack trace on stderr');
  assert.equal(r.stdout, '');
  return lines[0]!;
}

interface Case { name: string; file: () => string; cls: typeof MoeOffloadError; message: RegExp }

const cases: Case[] = [
  {
    name: 'bad magic', cls: GGUFFormatError, message: /not a GGUF file \(magic 47 47 4d 4c "GGML"/,
    file: () => save(patched((_, b) => b.set(Buffer.from('GGML'), 0))),
  },
  {
    name: 'version 1', cls: UnsupportedError, message: /GGUF version 1 is not supported/,
    file: () => save(patched((v) => v.setUint32(4, 1, true))),
  },
  {
    name: 'version 99', cls: UnsupportedError, message: /GGUF version 99 is not supported/,
    file: () => save(patched((v) => v.setUint32(4, 99, true))),
  },
  {
    name: 'empty file', cls: GGUFFormatError, message: /not a GGUF file \(only 0 bytes\)/,
    file: () => save(new Uint8Array(0)),
  },
  {
    name: 'truncated tensor data', cls: GGUFFormatError, message: /tensor second\.weight .*past the end.*truncated/,
    file: () => { const { buf } = validFile(); return save(buf.subarray(0, buf.length - 100)); },
  },
  {
    name: 'tensor offset past the end', cls: GGUFFormatError, message: /tensor first\.weight ends at byte \d+, past the end/,
    file: () => save(patched((v, b) => v.setBigUint64(tensorFields(b, 'first.weight', 2).offset, 1n << 20n, true))),
  },
  {
    name: 'misaligned tensor offset', cls: GGUFFormatError, message: /tensor first\.weight data offset 4 is not a multiple of the alignment 32/,
    file: () => save(patched((v, b) => v.setBigUint64(tensorFields(b, 'first.weight', 2).offset, 4n, true))),
  },
  {
    name: 'unknown tensor type id', cls: UnsupportedError, message: /tensor second\.weight has ggml type id 200/,
    file: () => save(patched((v, b) => v.setUint32(tensorFields(b, 'second.weight', 2).type, 200, true))),
  },
  {
    name: 'row length not a whole number of blocks', cls: GGUFFormatError, message: /first\.weight row length 16 is not a multiple of the q8_0 block size 32/,
    file: () => save(patched((v, b) => {
      const { dims } = tensorFields(b, 'first.weight', 2);
      v.setBigUint64(dims, 16n, true);
      v.setBigUint64(dims + 8, 4n, true);
    })),
  },
  {
    name: 'absurd string length', cls: GGUFFormatError, message: /length 1152921504606846976 .* bytes left/,
    file: () => save(patched((v, b) => v.setBigUint64(namePos(b, 'llama.block_count'), 1n << 60n, true))),
  },
  {
    name: 'absurd array count', cls: GGUFFormatError, message: /element count of tokenizer\.ggml\.tokens 4294967296 /,
    file: () => save(patched((v, b) => {
      const p = namePos(b, 'tokenizer.ggml.tokens') + 8 + 'tokenizer.ggml.tokens'.length + 4 + 4;
      v.setBigUint64(p, 1n << 32n, true);
    })),
  },
  {
    name: 'duplicate metadata key', cls: GGUFFormatError, message: /duplicate metadata key dup\.aa/,
    file: () => save(patched((_, b) => b.set(Buffer.from('dup.aa'), namePos(b, 'dup.bb') + 8))),
  },
  {
    name: 'duplicate tensor name', cls: GGUFFormatError, message: /duplicate tensor name first\.weight/,
    file: () => save(patched((_, b) => b.set(Buffer.from('first.weight'), namePos(b, 'other.weight') + 8))),
  },
  {
    name: 'alignment not a power of two', cls: GGUFFormatError, message: /general\.alignment is 48/,
    file: () => save(patched((v, b) => v.setUint32(namePos(b, 'general.alignment') + 8 + 17 + 4, 48, true))),
  },
  {
    name: 'unknown metadata value type', cls: GGUFFormatError, message: /llama\.block_count: unknown value type 77/,
    file: () => save(patched((v, b) => v.setUint32(namePos(b, 'llama.block_count') + 8 + 17, 77, true))),
  },
  {
    name: 'missing file', cls: FileAccessError, message: /model file not found: .*does-not-exist\.gguf; check the path/,
    file: () => join(dir, 'does-not-exist.gguf'),
  },
  {
    name: 'a directory', cls: FileAccessError, message: /is a directory, not a model file/,
    file: () => { const d = join(dir, `d${fileNo++}.gguf`); mkdirSync(d); return d; },
  },
];

test('the unpatched file is valid (so each case below fails for its own reason)', () => {
  const path = save(validFile().buf);
  const f = GGUFFile.open(path);
  assert.equal(f.get('dup.bb'), 'second');
  assert.equal(f.tensors.get('second.weight')!.byteLength, 256);
  assert.equal(f.tensors.get('first.weight')!.offset, validFile().dataOffset);
  assert.equal(f.metadata.get('llama.block_count')!.type, T.UINT32);
  f.close();
});

for (const c of cases) {
  test(`bad input: ${c.name}`, () => {
    const path = c.file();
    const err = openError(path);
    assert.ok(err instanceof c.cls, `expected ${c.cls.name}, got ${err.name}: ${err.message}`);
    assert.match(err.toLine(), c.message);
    assert.ok(err.hint, 'the error carries a hint');
    const line = cliError(path);
    assert.equal(line, `moe-offload: ${err.toLine()}`);
  });
}

test('bad input: header cut at every 7th byte gives a truncation error, never a crash', () => {
  const { buf, dataOffset } = validFile();
  for (let cut = 0; cut < dataOffset; cut += 7) {
    const err = openError(save(buf.subarray(0, cut)));
    assert.ok(err instanceof GGUFFormatError, `cut at ${cut}: ${err.name}: ${err.message}`);
    if (cut < 4) assert.match(err.message, /not a GGUF file/);
    else assert.match(err.toLine(), /truncated/, `cut at ${cut}: ${err.message}`);
  }
});

test('bad input: truncated header through the CLI', () => {
  const { buf, dataOffset } = validFile();
  for (const cut of [10, 30, Math.floor(dataOffset / 2), dataOffset - 40]) {
    assert.match(cliError(save(buf.subarray(0, cut))), /^moe-offload: .*truncated/);
  }
});
