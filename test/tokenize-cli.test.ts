// `moe-offload tokenize` end to end: a small byte-level BPE GGUF written here, the real launcher spawned.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GGUFWriter } from '../src/model/gguf-writer.js';
import { GGUFValueType } from '../src/model/gguf.js';
import { byteUnicodeTable } from '../fixtures/vocab.js';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'tokenize-cli-test-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

// 256 byte characters, then 'he' (256), 'Ġt' (257), 'Ġthe' (258), '<|endoftext|>' (259), '<|im_start|>' (260).
const tokens = [...byteUnicodeTable().map((t) => t.char), 'he', 'Ġt', 'Ġthe', '<|endoftext|>', '<|im_start|>'];
const id = (t: string) => tokens.indexOf(t);
const model = join(dir, 'tiny-bpe.gguf');
{
  const w = new GGUFWriter();
  w.setString('general.architecture', 'qwen2moe');
  w.setString('tokenizer.ggml.model', 'gpt2');
  w.setString('tokenizer.ggml.pre', 'qwen2');
  w.setStringArray('tokenizer.ggml.tokens', tokens);
  w.setArray('tokenizer.ggml.token_type', GGUFValueType.INT32, tokens.map((t) => (t.startsWith('<|') ? 3 : 1)));
  w.setStringArray('tokenizer.ggml.merges', ['h e', 'Ġ t', 'Ġt he']);
  w.setU32('tokenizer.ggml.bos_token_id', id('<|endoftext|>'));
  w.setU32('tokenizer.ggml.eos_token_id', id('<|endoftext|>'));
  w.setBool('tokenizer.ggml.add_bos_token', true);
  w.write(model);
}

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/moe-offload.js'), 'tokenize', ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('tokenize --json: ids and token texts, BOS added as the file asks', () => {
  const r = run('--model', model, '--text', 'the the', '--json');
  assert.equal(r.code, 0, r.err);
  const j = JSON.parse(r.out) as { ids: number[]; tokens: { id: number; text: string }[] };
  const want = [id('<|endoftext|>'), id('t'), id('he'), id('Ġthe')];
  assert.deepEqual(j.ids, want);
  assert.deepEqual(j.tokens, [
    { id: want[0], text: '<|endoftext|>' }, { id: want[1], text: 't' }, { id: want[2], text: 'he' }, { id: want[3], text: ' the' },
  ]);
});

test('tokenize: human output is the ids, then one quoted token per line', () => {
  const r = run('--model', model, '--text', "the\n'", '--no-special');
  assert.equal(r.code, 0, r.err);
  const lines = r.out.trimEnd().split('\n');
  const ids = [id('t'), id('he'), id('Ċ'), id("'")];
  assert.equal(lines[0], ids.join(' '));
  assert.deepEqual(lines.slice(1).map((l) => l.trim()), [`${ids[0]}  't'`, `${ids[1]}  'he'`, `${ids[2]}  '\\n'`, `${ids[3]}  '\\''`]);
});

test('tokenize --no-parse-special spells special text out; by default it is one token', () => {
  const parsed = JSON.parse(run('--model', model, '--text', '<|im_start|>', '--json', '--no-special').out) as { ids: number[] };
  assert.deepEqual(parsed.ids, [id('<|im_start|>')]);
  const plain = JSON.parse(run('--model', model, '--text', '<|im_start|>', '--json', '--no-special', '--no-parse-special').out) as { ids: number[] };
  assert.deepEqual(plain.ids, ['<', '|', 'i', 'm', '_', 's', 't', 'a', 'r', 't', '|', '>'].map(id));
});

test('tokenize: bad input ends as one line on stderr and exit code 2', () => {
  const missing = run('--model', join(dir, 'nope.gguf'), '--text', 'x');
  assert.equal(missing.code, 2);
  assert.match(missing.err, /^moe-offload: model file not found: .*nope\.gguf; /);
  assert.equal(missing.err.trimEnd().split('\n').length, 1);
  const noText = run('--model', model);
  assert.equal(noText.code, 2);
  assert.match(noText.err, /--text/);
  const noModel = run('--text', 'x');
  assert.equal(noModel.code, 2);
  assert.match(noModel.err, /--model/);
});

test('tokenize: an unsupported pre-tokenizer names the supported ones', () => {
  const bad = join(dir, 'bad-pre.gguf');
  const w = new GGUFWriter();
  w.setString('tokenizer.ggml.model', 'gpt2');
  w.setString('tokenizer.ggml.pre', 'martian');
  w.setStringArray('tokenizer.ggml.tokens', ['a']);
  w.setStringArray('tokenizer.ggml.merges', []);
  w.write(bad);
  const r = run('--model', bad, '--text', 'a');
  assert.equal(r.code, 2);
  assert.match(r.err, /pre-tokenizer 'martian'.*not supported.*qwen2/);
});
