// The committed fixtures are what the generator makes (byte for byte), and they are the models the
// README says: shapes agree with the metadata keys as llama.cpp reads them, quant types follow the
// variant, K-quant rows are whole super-blocks, tokenizers are consistent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildFixtureModel, fixtureToBuffer } from '../fixtures/build.js';
import { Rng } from '../fixtures/prng.js';
import { ARCHS, QUANT_VARIANTS, fixtureFileName, type Arch, type QuantVariant } from '../fixtures/specs.js';
import { GPT2_PRETOKENIZER, byteUnicodeTable } from '../fixtures/vocab.js';
import { GGMLType, typeInfo } from '../src/model/ggml-types.js';
import { GGUFFile } from '../src/model/gguf.js';
import { canQuantize } from '../src/model/quant/index.js';

// dist/test/fixtures.test.js -> <repo>/fixtures
const FIXTURES = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'fixtures');
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

const K_TYPES = [GGMLType.Q4_K, GGMLType.Q6_K];
/** q4_k files exist only once the K-quant quantizers have landed. */
function variantAvailable(quant: QuantVariant): boolean {
  return quant !== 'q4_k' || K_TYPES.every((t) => canQuantize(t));
}

function fixturePath(arch: Arch, quant: QuantVariant): string {
  return join(FIXTURES, fixtureFileName(arch, quant));
}

test('the default model of generate exists', () => {
  assert.ok(existsSync(fixturePath('qwen3moe', 'q8_0')), 'fixtures/qwen3moe-q8_0.gguf is missing: run npm run fixtures');
});

test('seeded normals: same seed same stream, mean ~0 and std ~1', () => {
  const a = new Rng(1234).normals(20000, 1);
  const b = new Rng(1234).normals(20000, 1);
  assert.deepEqual(a, b);
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const std = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);
  assert.ok(Math.abs(mean) < 0.03, `mean ${mean}`);
  assert.ok(Math.abs(std - 1) < 0.03, `std ${std}`);
  assert.notDeepEqual(new Rng(1235).normals(8, 1), a.subarray(0, 8));
});

for (const quant of QUANT_VARIANTS) {
  for (const arch of ARCHS) {
    const name = fixtureFileName(arch, quant);
    // Regenerating a q4_k fixture takes ~1.5 s (ggml's K-quant search in TS), so only one is rebuilt
    // here; it exercises both Q4_K and Q6_K. The others share all of its code paths.
    const skip = !variantAvailable(quant) ? 'K-quant quantizers not there yet'
      : quant === 'q4_k' && arch !== 'qwen3moe' ? 'slow: qwen3moe-q4_k stands for the q4_k variants' : false;
    test(`${name}: regenerating gives the committed bytes`, { skip }, () => {
      const path = fixturePath(arch, quant);
      assert.ok(existsSync(path), `${name} is missing: run npm run fixtures`);
      const fresh = fixtureToBuffer(buildFixtureModel(arch, quant));
      assert.equal(sha256(fresh), sha256(readFileSync(path)), `${name} differs from a fresh build: run npm run fixtures and commit`);
    });

    test(`${name}: shapes match the metadata, types match the variant`, { skip: !existsSync(fixturePath(arch, quant)) && 'not generated' }, () => {
      const f = GGUFFile.open(fixturePath(arch, quant));
      try {
        checkShapesAndTypes(f, arch, quant);
      } finally {
        f.close();
      }
    });
  }
}

function u(f: GGUFFile, key: string): number {
  const v = f.get(key);
  assert.ok(v !== undefined, `missing ${key}`);
  return Number(v);
}

function checkShapesAndTypes(f: GGUFFile, arch: Arch, quant: QuantVariant): void {
  assert.equal(f.get('general.architecture'), arch);
  assert.equal(f.get('general.name'), `moe-offload fixture ${arch} ${quant}`);
  assert.equal(f.alignment, 32);
  assert.equal(u(f, `${arch}.context_length`), 512);
  const nEmbd = u(f, `${arch}.embedding_length`);
  const nHead = u(f, `${arch}.attention.head_count`);
  const nHeadKv = u(f, `${arch}.attention.head_count_kv`);
  const headDim = f.get(`${arch}.attention.key_length`) !== undefined ? u(f, `${arch}.attention.key_length`) : nEmbd / nHead;
  // llama and olmoe keep the expert width in feed_forward_length; the qwens in expert_feed_forward_length
  const nFf = u(f, arch === 'llama' || arch === 'olmoe' ? `${arch}.feed_forward_length` : `${arch}.expert_feed_forward_length`);
  const nExpert = u(f, `${arch}.expert_count`);
  const nUsed = u(f, `${arch}.expert_used_count`);
  const nVocab = (f.get('tokenizer.ggml.tokens') as string[]).length;
  assert.ok(nUsed >= 2 && nUsed < nExpert);
  if (arch === 'qwen3moe') assert.notEqual(headDim, nEmbd / nHead, 'qwen3moe fixtures set key_length != n_embd / n_head');

  const expected = new Map<string, number[]>();
  expected.set('token_embd.weight', [nEmbd, nVocab]);
  expected.set('output_norm.weight', [nEmbd]);
  // Every fixture has its own output.weight (llama.cpp's olmoe loader requires one).
  expected.set('output.weight', [nEmbd, nVocab]);
  for (let l = 0; l < u(f, `${arch}.block_count`); l++) {
    const b = `blk.${l}.`;
    const e = (n: string, d: number[]) => expected.set(b + n, d);
    e('attn_norm.weight', [nEmbd]);
    e('attn_q.weight', [nEmbd, nHead * headDim]);
    e('attn_k.weight', [nEmbd, nHeadKv * headDim]);
    e('attn_v.weight', [nEmbd, nHeadKv * headDim]);
    e('attn_output.weight', [nHead * headDim, nEmbd]);
    if (arch === 'qwen2moe') {
      e('attn_q.bias', [nHead * headDim]);
      e('attn_k.bias', [nHeadKv * headDim]);
      e('attn_v.bias', [nHeadKv * headDim]);
      const nShared = u(f, `${arch}.expert_shared_feed_forward_length`);
      e('ffn_gate_inp_shexp.weight', [nEmbd]);
      e('ffn_gate_shexp.weight', [nEmbd, nShared]);
      e('ffn_up_shexp.weight', [nEmbd, nShared]);
      e('ffn_down_shexp.weight', [nShared, nEmbd]);
    }
    if (arch === 'qwen3moe') {
      e('attn_q_norm.weight', [headDim]);
      e('attn_k_norm.weight', [headDim]);
    }
    if (arch === 'olmoe') {
      e('attn_q_norm.weight', [nHead * headDim]);
      e('attn_k_norm.weight', [nHeadKv * headDim]);
    }
    e('ffn_norm.weight', [nEmbd]);
    e('ffn_gate_inp.weight', [nEmbd, nExpert]);
    e('ffn_gate_exps.weight', [nEmbd, nFf, nExpert]);
    e('ffn_up_exps.weight', [nEmbd, nFf, nExpert]);
    e('ffn_down_exps.weight', [nFf, nEmbd, nExpert]);
  }
  assert.deepEqual([...f.tensors.keys()].sort(), [...expected.keys()].sort());

  for (const t of f.tensors.values()) {
    assert.deepEqual(t.dims, expected.get(t.name), t.name);
    const isOutput = t.name === 'output.weight';
    let want: GGMLType;
    if (t.dims.length === 1 || t.name.endsWith('ffn_gate_inp.weight') || quant === 'f32') want = GGMLType.F32;
    else if (quant === 'q8_0') want = GGMLType.Q8_0;
    else if (quant === 'q4_0') want = isOutput ? GGMLType.Q8_0 : GGMLType.Q4_0;
    else want = isOutput || /attn_v\.weight|ffn_down_exps/.test(t.name) ? GGMLType.Q6_K : GGMLType.Q4_K;
    assert.equal(t.type, want, `${t.name} stored as type ${t.type}, expected ${want}`);
    assert.equal(t.dims[0]! % typeInfo(t.type)!.blockSize, 0, `${t.name}: rows must be whole blocks`);
  }
}

test('tokenizer metadata is identical across the quant variants of each architecture', () => {
  const keys = ['tokenizer.ggml.model', 'tokenizer.ggml.pre', 'tokenizer.ggml.tokens', 'tokenizer.ggml.scores',
    'tokenizer.ggml.token_type', 'tokenizer.ggml.merges', 'tokenizer.ggml.bos_token_id', 'tokenizer.ggml.eos_token_id',
    'tokenizer.ggml.padding_token_id', 'tokenizer.ggml.add_bos_token', 'tokenizer.ggml.add_space_prefix'];
  for (const arch of ARCHS) {
    const files = QUANT_VARIANTS.map((q) => fixturePath(arch, q)).filter((p) => existsSync(p)).map((p) => GGUFFile.open(p));
    assert.ok(files.length >= 3, `${arch}: fixtures missing`);
    for (const f of files.slice(1)) {
      for (const k of keys) assert.deepEqual(f.get(k), files[0]!.get(k), `${arch} ${k}`);
    }
    for (const f of files) f.close();
  }
});

test('byte-level BPE vocabularies: 256 byte characters, merges inside GPT-2 pre-tokens, control tokens', () => {
  const f = GGUFFile.open(fixturePath('qwen3moe', 'f32'));
  const tokens = f.get('tokenizer.ggml.tokens') as string[];
  const types = f.get('tokenizer.ggml.token_type') as number[];
  const merges = f.get('tokenizer.ggml.merges') as string[];
  f.close();
  assert.equal(f.get('tokenizer.ggml.model'), 'gpt2');
  assert.equal(new Set(tokens).size, tokens.length, 'tokens are unique');
  const table = byteUnicodeTable();
  assert.deepEqual(tokens.slice(0, 256), table.map((t) => t.char));
  assert.equal(new Set(table.map((t) => t.byte)).size, 256);
  // bytes_to_unicode spot checks: printable map to themselves, space -> 'Ġ' (U+0120), newline -> 'Ċ'
  const charOf = new Map(table.map((t) => [t.byte, t.char]));
  assert.equal(charOf.get(0x41), 'A');
  assert.equal(charOf.get(0x20), '\u0120');
  assert.equal(charOf.get(0x0a), '\u010a');
  assert.ok(merges.length >= 150, `${merges.length} merges`);
  const byteOf = new Map(table.map((t) => [t.char, t.byte]));
  const ids = new Map(tokens.map((t, i) => [t, i]));
  for (const m of merges) {
    const parts = m.split(' ');
    assert.equal(parts.length, 2, m);
    for (const p of [parts[0]!, parts[1]!, parts.join('')]) assert.ok(ids.has(p), `merge '${m}': ${p} is not a token`);
    const text = Buffer.from([...parts.join('')].map((c) => byteOf.get(c)!)).toString('utf8');
    assert.equal([...text.matchAll(GPT2_PRETOKENIZER)].length, 1, `merge '${m}' crosses a pre-token boundary`);
  }
  for (const c of ['<|endoftext|>', '<|im_start|>', '<|im_end|>']) assert.equal(types[ids.get(c)!], 3, `${c} is a control token`);
  assert.equal(types.filter((t) => t === 3).length, 3);
});

test('SentencePiece vocabulary: specials, 256 byte tokens, scored pieces', () => {
  const f = GGUFFile.open(fixturePath('llama', 'f32'));
  const tokens = f.get('tokenizer.ggml.tokens') as string[];
  const types = f.get('tokenizer.ggml.token_type') as number[];
  const scores = f.get('tokenizer.ggml.scores') as number[];
  assert.equal(f.get('tokenizer.ggml.model'), 'llama');
  assert.equal(f.get('tokenizer.ggml.add_bos_token'), true);
  assert.equal(Number(f.get('tokenizer.ggml.bos_token_id')), 1);
  assert.equal(Number(f.get('tokenizer.ggml.eos_token_id')), 2);
  f.close();
  assert.deepEqual(tokens.slice(0, 3), ['<unk>', '<s>', '</s>']);
  assert.deepEqual(types.slice(0, 3), [2, 3, 3]);
  for (let b = 0; b < 256; b++) {
    assert.equal(tokens[3 + b], `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    assert.equal(types[3 + b], 6);
  }
  const pieces = tokens.slice(259);
  assert.ok(pieces.length > 200);
  assert.equal(new Set(tokens).size, tokens.length, 'tokens are unique');
  assert.ok(types.slice(259).every((t) => t === 1));
  for (let i = 260; i < scores.length; i++) assert.ok(scores[i]! < scores[i - 1]!, 'piece scores strictly decrease');
  for (const p of ['\u2581the', '\u2581a', 'he', '\u2581']) assert.ok(tokens.includes(p), `${p} is a piece`);
  // every multi-character piece can be built from two shorter pieces, as SentencePiece BPE merges do
  const set = new Set(pieces);
  for (const p of pieces) {
    const cps = [...p];
    if (cps.length < 2) continue;
    let ok = false;
    for (let i = 1; i < cps.length && !ok; i++) ok = set.has(cps.slice(0, i).join('')) && set.has(cps.slice(i).join(''));
    assert.ok(ok, `${p} is not a merge of two pieces`);
  }
});

test('all fixtures together stay small', () => {
  let total = 0;
  for (const arch of ARCHS) for (const q of QUANT_VARIANTS) {
    const p = fixturePath(arch, q);
    if (existsSync(p)) total += readFileSync(p).length;
  }
  assert.ok(total < 20 * 1024 * 1024, `${(total / 1048576).toFixed(1)} MiB of fixtures`);
});
