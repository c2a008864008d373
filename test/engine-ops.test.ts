// Engine building blocks on hand-computed inputs, and loadModel/Sequence on tiny GGUF models written
// here (f32 weights from a seeded PRNG): batch == token-by-token, and the load-time errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rmsNorm } from '../src/engine/norm.js';
import { applyRope } from '../src/engine/rope.js';
import { route, softmax } from '../src/engine/router.js';
import { causalAttention } from '../src/engine/attention.js';
import { loadModel } from '../src/engine/model.js';
import { resolveArchitecture } from '../src/model/arch/index.js';
import { ModelError, UnsupportedError, UsageError } from '../src/model/errors.js';
import { GGUFWriter } from '../src/model/gguf-writer.js';
import { GGUFValueType } from '../src/model/gguf.js';
import { GGMLType } from '../src/model/ggml-types.js';
import { byteUnicodeTable } from '../fixtures/vocab.js';
import { mulberry32 } from '../src/engine/prng.js';

const dir = mkdtempSync(join(tmpdir(), 'engine-ops-test-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

function close(actual: ArrayLike<number>, expected: ArrayLike<number>, tol = 1e-6): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < expected.length; i++) {
    assert.ok(Math.abs(actual[i]! - expected[i]!) <= tol, `[${i}] ${actual[i]} vs ${expected[i]}`);
  }
}

test('rmsNorm: x / sqrt(mean(x^2) + eps) * weight, row by row', () => {
  const x = Float32Array.of(1, 2, 3, 4, 0, 0, 3, 4);
  const out = rmsNorm(x, 2, 4, 0.5, Float32Array.of(1, 1, 2, 0.5), new Float32Array(8));
  const s0 = 1 / Math.sqrt(30 / 4 + 0.5);
  const s1 = 1 / Math.sqrt(25 / 4 + 0.5);
  close(out, [s0, 2 * s0, 6 * s0, 2 * s0, 0, 0, 6 * s1, 2 * s1]);
});

test('rope at pos 1, base 10000, n_rot 4: normal rotates adjacent pairs, neox halves', () => {
  // theta_0 = 1, theta_1 = 10000^(-2/4) = 0.01
  const [c0, s0, c1, s1] = [Math.cos(1), Math.sin(1), Math.cos(0.01), Math.sin(0.01)];
  const normal = Float32Array.of(1, 2, 3, 4);
  applyRope(normal, 0, 1, 1, { style: 'normal', nRot: 4, headDim: 4, base: 10000 });
  close(normal, [1 * c0 - 2 * s0, 1 * s0 + 2 * c0, 3 * c1 - 4 * s1, 3 * s1 + 4 * c1]);

  const neox = Float32Array.of(1, 2, 3, 4);
  applyRope(neox, 0, 1, 1, { style: 'neox', nRot: 4, headDim: 4, base: 10000 });
  close(neox, [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 1 * s0 + 3 * c0, 2 * s1 + 4 * c1]);
});

test('rope: only the first n_rot dims of each head turn; pos 0 is the identity', () => {
  // two heads of 6, n_rot 4, stored after a 1-value offset
  const x = Float32Array.of(9, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6);
  applyRope(x, 1, 2, 1, { style: 'neox', nRot: 4, headDim: 6, base: 10000 });
  const [c0, s0, c1, s1] = [Math.cos(1), Math.sin(1), Math.cos(0.01), Math.sin(0.01)];
  const head = [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 1 * s0 + 3 * c0, 2 * s1 + 4 * c1, 5, 6];
  close(x, [9, ...head, ...head]);
  const y = Float32Array.of(1, 2, 3, 4);
  applyRope(y, 0, 1, 0, { style: 'normal', nRot: 4, headDim: 4, base: 10000 });
  close(y, [1, 2, 3, 4]);
});

test('router: softmax over all experts, top-k by probability, optional renormalisation', () => {
  // probabilities proportional to 1, 2, 4, 1
  const logits = Float32Array.of(0, Math.log(2), Math.log(4), 0);
  close(softmax(logits), [1 / 8, 2 / 8, 4 / 8, 1 / 8]);
  const plain = route(logits, 0, 4, 2, false);
  assert.deepEqual(plain.experts, [2, 1]);
  close(plain.weights, [0.5, 0.25]);
  const norm = route(logits, 0, 4, 2, true);
  assert.deepEqual(norm.experts, [2, 1]);
  close(norm.weights, [2 / 3, 1 / 3]);
  // ties: the lower id first; offset picks a token's row
  const tie = route(Float32Array.of(99, 99, 1, 3, 2, 3), 2, 4, 2, true);
  assert.deepEqual(tie.experts, [1, 3]);
  close(tie.weights, [0.5, 0.5]);
});

test('causal attention: each token sees itself and earlier positions only; GQA shares kv heads', () => {
  // 2 query heads sharing 1 kv head, head_dim 2, two positions
  const keys = Float32Array.of(1, 0, 0, 1);
  const values = Float32Array.of(1, 2, 3, 4);
  const q = Float32Array.of(1, 0, 0, 2, /* token 1: */ 1, 0, 0, 2);
  const out = causalAttention(q, keys, values, 0, 2, { nHead: 2, nHeadKv: 1, headDim: 2 }, new Float32Array(8));
  const mix = (s0: number, s1: number) => {
    const [e0, e1] = [Math.exp(s0 / Math.SQRT2), Math.exp(s1 / Math.SQRT2)];
    const [w0, w1] = [e0 / (e0 + e1), e1 / (e0 + e1)];
    return [w0 * 1 + w1 * 3, w0 * 2 + w1 * 4];
  };
  // token 0 attends only to position 0 -> exactly v0, for both heads
  close(out.subarray(0, 4), [1, 2, 1, 2]);
  // token 1: head 0 scores (1, 0), head 1 scores (0, 2)
  close(out.subarray(4), [...mix(1, 0), ...mix(0, 2)]);
  // the same token 1 evaluated alone after position 0 is cached gives the same result
  const alone = causalAttention(q.subarray(4), keys, values, 1, 1, { nHead: 2, nHeadKv: 1, headDim: 2 }, new Float32Array(4));
  close(alone, out.subarray(4));
});

test('architecture tables: the four supported, unknown names rejected with the list', () => {
  assert.equal(resolveArchitecture('llama').rope, 'normal');
  assert.equal(resolveArchitecture('qwen3moe').qkNorm, 'per-head');
  assert.equal(resolveArchitecture('olmoe').qkNorm, 'whole');
  assert.equal(resolveArchitecture('qwen2moe').sharedExpert, true);
  assert.throws(() => resolveArchitecture('gpt-oss'), (e: unknown) =>
    e instanceof UnsupportedError && /gpt-oss/.test(e.toLine()) && /llama, qwen2moe, qwen3moe, olmoe/.test(e.toLine()));
});

// ---- tiny models ----

/** mulberry32 normals, so weights are fixed across runs. */
function rng(seed: number): () => number {
  const u = mulberry32(seed);
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

interface TinyOptions {
  arch?: string;
  omitTensor?: string;
  omitKey?: string;
  /** tensor name -> replacement dims (data sized to match) */
  reshape?: Record<string, number[]>;
}

const E = 16, HEADS = 2, KV = 1, HD = 8, LAYERS = 2, EXPERTS = 4, USED = 2, FF = 8;
const TOKENS = [...byteUnicodeTable().map((t) => t.char), '<|endoftext|>'];
const VOCAB = TOKENS.length;

function writeTiny(name: string, o: TinyOptions = {}): string {
  const arch = o.arch ?? 'qwen3moe';
  const w = new GGUFWriter();
  const keys: [string, (k: string) => void][] = [
    ['general.architecture', (k) => w.setString(k, arch)],
    [`${arch}.block_count`, (k) => w.setU32(k, LAYERS)],
    [`${arch}.context_length`, (k) => w.setU32(k, 32)],
    [`${arch}.embedding_length`, (k) => w.setU32(k, E)],
    [`${arch}.expert_feed_forward_length`, (k) => w.setU32(k, FF)],
    [`${arch}.attention.head_count`, (k) => w.setU32(k, HEADS)],
    [`${arch}.attention.head_count_kv`, (k) => w.setU32(k, KV)],
    [`${arch}.attention.key_length`, (k) => w.setU32(k, HD)],
    [`${arch}.attention.value_length`, (k) => w.setU32(k, HD)],
    [`${arch}.attention.layer_norm_rms_epsilon`, (k) => w.setF32(k, 1e-6)],
    [`${arch}.rope.freq_base`, (k) => w.setF32(k, 10000)],
    [`${arch}.expert_count`, (k) => w.setU32(k, EXPERTS)],
    [`${arch}.expert_used_count`, (k) => w.setU32(k, USED)],
    ['tokenizer.ggml.model', (k) => w.setString(k, 'gpt2')],
    ['tokenizer.ggml.pre', (k) => w.setString(k, 'qwen2')],
    ['tokenizer.ggml.tokens', (k) => w.setStringArray(k, TOKENS)],
    ['tokenizer.ggml.token_type', (k) => w.setArray(k, GGUFValueType.INT32, TOKENS.map((t) => (t.startsWith('<|') ? 3 : 1)))],
    ['tokenizer.ggml.merges', (k) => w.setStringArray(k, [])],
    ['tokenizer.ggml.eos_token_id', (k) => w.setU32(k, VOCAB - 1)],
  ];
  for (const [k, set] of keys) if (k !== o.omitKey) set(k);

  const normal = rng(1234);
  const tensors: [string, number[], number][] = [['token_embd.weight', [E, VOCAB], 1]];
  for (let l = 0; l < LAYERS; l++) {
    const b = `blk.${l}.`;
    tensors.push(
      [`${b}attn_norm.weight`, [E], 0], [`${b}attn_q.weight`, [E, HEADS * HD], 0.3], [`${b}attn_k.weight`, [E, KV * HD], 0.3],
      [`${b}attn_v.weight`, [E, KV * HD], 0.3], [`${b}attn_q_norm.weight`, [HD], 0], [`${b}attn_k_norm.weight`, [HD], 0],
      [`${b}attn_output.weight`, [HEADS * HD, E], 0.3], [`${b}ffn_norm.weight`, [E], 0], [`${b}ffn_gate_inp.weight`, [E, EXPERTS], 1],
      [`${b}ffn_gate_exps.weight`, [E, FF, EXPERTS], 0.3], [`${b}ffn_up_exps.weight`, [E, FF, EXPERTS], 0.3],
      [`${b}ffn_down_exps.weight`, [FF, E, EXPERTS], 0.3]);
  }
  tensors.push(['output_norm.weight', [E], 0], ['output.weight', [E, VOCAB], 0.3]);
  for (const [tname, dims0, scale] of tensors) {
    if (tname === o.omitTensor) continue;
    const dims = o.reshape?.[tname] ?? dims0;
    const n = dims.reduce((a, b) => a * b, 1);
    // scale 0 marks norm weights: near 1
    const v = Float32Array.from({ length: n }, () => (scale === 0 ? 1 + 0.1 * normal() : scale * normal()));
    w.addTensor(tname, dims, GGMLType.F32, new Uint8Array(v.buffer));
  }
  const path = join(dir, `${name}.gguf`);
  w.write(path);
  return path;
}

test('one batch gives the same logits as token by token (every row, 1e-5)', async () => {
  const model = await loadModel(writeTiny('tiny'), { threads: 1 });
  assert.equal(model.vocabSize, VOCAB);
  const prompt = [10, 200, 33, 47, 120, 255, 3];
  const batch = await model.newSequence().eval(prompt);
  assert.equal(batch.length, prompt.length * VOCAB);
  const seq = model.newSequence();
  for (let i = 0; i < prompt.length; i++) {
    const row = await seq.eval([prompt[i]!]);
    close(row, batch.subarray(i * VOCAB, (i + 1) * VOCAB), 1e-5);
  }
  assert.equal(seq.length, prompt.length);
  const lastOnly = await model.newSequence().eval(prompt, { lastOnly: true });
  close(lastOnly, batch.subarray((prompt.length - 1) * VOCAB), 1e-5);
  // a different history changes the last token's logits (attention is really used)
  const other = await model.newSequence().eval([99, ...prompt.slice(1)]);
  const last = (a: Float32Array) => a.subarray((prompt.length - 1) * VOCAB, prompt.length * VOCAB);
  assert.ok(last(other).some((v, i) => Math.abs(v - last(batch)[i]!) > 1e-4));
  model.close();
});

test('routing callback: k experts per token per layer, weights renormalised for qwen3moe', async () => {
  const seen: { layer: number; pos: number; experts: number[]; weights: number[] }[] = [];
  const model = await loadModel(writeTiny('tiny-route'), {
    onRoute: (layer, pos, experts, weights) => seen.push({ layer, pos, experts, weights }),
  });
  const seq = model.newSequence();
  await seq.eval([1, 2, 3]);
  await seq.eval([4]);
  assert.equal(seen.length, 4 * LAYERS);
  for (const r of seen) {
    assert.equal(r.experts.length, USED);
    assert.equal(new Set(r.experts).size, USED);
    assert.ok(Math.abs(r.weights.reduce((a, b) => a + b, 0) - 1) < 1e-9);
    assert.ok(r.weights[0]! >= r.weights[1]!);
  }
  assert.deepEqual(seen.filter((r) => r.layer === 0).map((r) => r.pos), [0, 1, 2, 3]);
  model.close();
});

test('context overflow and bad token ids are UsageErrors', async () => {
  const model = await loadModel(writeTiny('tiny-ctx'));
  const seq = model.newSequence();
  await assert.rejects(seq.eval(new Array(33).fill(5)), (e: unknown) => e instanceof UsageError && /context length 32/.test(e.message));
  await assert.rejects(seq.eval([VOCAB]), UsageError);
  assert.equal(seq.length, 0);
  model.close();
});

test('load errors: unknown architecture, missing tensor, missing key, wrong shape', async () => {
  await assert.rejects(loadModel(writeTiny('bad-arch', { arch: 'gpt-oss' })),
    (e: unknown) => e instanceof UnsupportedError && /gpt-oss/.test(e.message) && e.hint !== undefined && /qwen3moe/.test(e.hint));
  await assert.rejects(loadModel(writeTiny('no-tensor', { omitTensor: 'blk.1.attn_k_norm.weight' })),
    (e: unknown) => e instanceof ModelError && /blk\.1\.attn_k_norm\.weight/.test(e.message));
  await assert.rejects(loadModel(writeTiny('no-experts', { omitTensor: 'blk.0.ffn_up_exps.weight' })),
    (e: unknown) => e instanceof ModelError && /blk\.0\.ffn_up_exps\.weight/.test(e.message));
  await assert.rejects(loadModel(writeTiny('no-key', { omitKey: 'qwen3moe.expert_used_count' })),
    (e: unknown) => e instanceof ModelError && /missing required key qwen3moe\.expert_used_count/.test(e.message));
  await assert.rejects(loadModel(writeTiny('bad-shape', { reshape: { 'blk.0.attn_q.weight': [E, 24] } })),
    (e: unknown) => e instanceof ModelError && /blk\.0\.attn_q\.weight/.test(e.message) && /16, 24/.test(e.message));
  await assert.rejects(loadModel(writeTiny('bad-experts', { reshape: { 'blk.1.ffn_down_exps.weight': [FF, E, EXPERTS + 1] } })),
    (e: unknown) => e instanceof ModelError && /blk\.1\.ffn_down_exps\.weight/.test(e.message));
});
