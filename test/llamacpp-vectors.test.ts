// Compares our block formats, native kernels, tokenizer and forward pass with vectors that llama.cpp
// produced (test/vectors/README.md says how). A vector file whose fixture changed is skipped with a
// message, since its numbers no longer describe that file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GGMLType } from '../src/model/ggml-types.js';
import { canDequantize, canQuantize, dequantize, quantize } from '../src/model/quant/index.js';
import { matmul, setKernelPath } from '../src/native/index.js';
import { GGUFFile } from '../src/model/gguf.js';
import { loadTokenizer } from '../src/model/tokenizer/index.js';
import { loadModel } from '../src/engine/model.js';

// dist/test/<this>.js -> repo root
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const VECTORS = join(ROOT, 'test', 'vectors');
const FIXTURES = join(ROOT, 'fixtures');

function vectorFiles(sub: string): string[] {
  const dir = join(VECTORS, sub);
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((f) => f.endsWith('.json')).sort().map((f) => join(dir, f));
}

/** Runs `fn`, turning a contract stub's 'not implemented' into a skip that says which piece is missing. */
async function unlessStub<T>(t: { skip(msg: string): void }, piece: string, fn: () => T | Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof Error && err.message === 'not implemented') {
      t.skip(`${piece} has not landed yet (contract stub)`);
      return undefined;
    }
    throw err;
  }
}

function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}

function hexBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
}

const sha256Cache = new Map<string, string>();
function sha256(path: string): string {
  let h = sha256Cache.get(path);
  if (h === undefined) {
    h = createHash('sha256').update(readFileSync(path)).digest('hex');
    sha256Cache.set(path, h);
  }
  return h;
}

/** The fixture a vector file was made from, or why it cannot be used. */
function fixtureFor(v: { model: string; sha256: string }): { path: string } | { skip: string } {
  const path = join(FIXTURES, v.model);
  if (!existsSync(path)) return { skip: `fixture ${v.model} is missing (run npm run fixtures)` };
  if (sha256(path) !== v.sha256) {
    return { skip: `fixture ${v.model} changed since its llama.cpp vectors were made: regenerate them (test/vectors/README.md)` };
  }
  return { path };
}

// ---------------------------------------------------------------- block formats and native kernels

interface QuantVector {
  type: string;
  ggml_type: number;
  n: number;
  /** 'random' (scaled noise) or 'edge' (constant blocks, ties, tiny and huge scales). */
  input_kind?: string;
  input: number[];
  bytes_hex: string;
  dequant: number[];
  dot_x: number[];
  vec_dot_type: string;
  dot: number;
}

/** Why the native addon cannot run (undefined when it can). */
function nativeUnavailable(): string | undefined {
  try {
    const out = new Float32Array(1);
    matmul(GGMLType.F32, new Uint8Array(new Float32Array([2]).buffer), 1, 1, new Float32Array([3]), 1, out);
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/** Both kernel paths when the addon lets us choose, else whatever it uses. */
const KERNEL_PATHS: ('portable' | 'auto' | 'default')[] = (() => {
  try {
    setKernelPath('auto');
    return ['portable', 'auto'];
  } catch {
    return ['default'];
  }
})();

for (const file of vectorFiles('quant')) {
  const v = readJson<QuantVector>(file);
  const label = `${v.type}${v.input_kind === 'edge' ? ' (edge cases)' : ''}`;
  const type = v.ggml_type as GGMLType;
  const bytes = hexBytes(v.bytes_hex);

  test(`ggml ${label}: dequantize gives ggml's floats bit for bit`, (t) => {
    if (!canDequantize(type)) return t.skip(`${v.type} is not supported by src/model/quant yet`);
    const ours = dequantize(type, bytes, v.n);
    const bad: string[] = [];
    for (let i = 0; i < v.n; i++) {
      const want = Math.fround(v.dequant[i]!);
      if (!Object.is(ours[i], want)) bad.push(`[${i}] ${ours[i]} != ${want}`);
    }
    assert.equal(bad.length, 0, `${bad.length} of ${v.n} values differ: ${bad.slice(0, 8).join(', ')}`);
  });

  test(`ggml ${label}: quantize gives the bytes of ggml's reference quantizer`, (t) => {
    if (!canQuantize(type)) return t.skip(`${v.type} quantization is not supported by src/model/quant yet`);
    const ours = toHex(quantize(type, Float32Array.from(v.input)));
    if (ours === v.bytes_hex) return;
    const blockBytes = bytes.length / (v.type.endsWith('_K') ? v.n / 256 : v.type.startsWith('q') ? v.n / 32 : v.n);
    const firstDiff = [...ours].findIndex((c, i) => c !== v.bytes_hex[i]);
    const byte = firstDiff >> 1;
    assert.fail(`${v.type}: bytes differ from byte ${byte} (block ${Math.floor(byte / blockBytes)}, ` +
      `offset ${byte % blockBytes} in the block): ours ${ours.slice(firstDiff & ~1, (firstDiff & ~1) + 16)}..., ` +
      `ggml ${v.bytes_hex.slice(firstDiff & ~1, (firstDiff & ~1) + 16)}...`);
  });

  // ggml's tolerance-free integer dot products differ only in f32 summation order, so 1e-5 of the
  // sum of |terms| (the scale of rounding error in any summation order) is a tight bound.
  test(`ggml ${label}: native matmul of one row matches ggml's CPU vec_dot`, (t) => {
    const why = nativeUnavailable();
    if (why !== undefined) return t.skip(`native matmul unavailable: ${why}`);
    let absTerms = 0;
    for (let i = 0; i < v.n; i++) absTerms += Math.abs(v.dequant[i]! * v.dot_x[i]!);
    const want = Math.fround(v.dot);
    for (const path of KERNEL_PATHS) {
      if (path !== 'default') setKernelPath(path);
      const out = new Float32Array(1);
      try {
        matmul(type, bytes, 1, v.n, Float32Array.from(v.dot_x), 1, out);
      } finally {
        if (path !== 'default') setKernelPath('auto');
      }
      const diff = Math.abs(out[0]! - want);
      t.diagnostic(`${path}: ours ${out[0]} ggml ${want} (x as ${v.vec_dot_type}) |diff| ${diff.toExponential(3)} ` +
        `= ${(diff / Math.abs(want)).toExponential(3)} relative`);
      assert.ok(diff <= 1e-5 * absTerms,
        `${v.type} (${path} kernels): ours ${out[0]}, ggml ${want}: |diff| ${diff} > 1e-5 * sum|w*x| = ${1e-5 * absTerms}`);
    }
  });
}

// ---------------------------------------------------------------- tokenizer

interface TokenizeVector {
  model: string;
  sha256: string;
  cases: { text: string; add_special: boolean; parse_special: boolean; ids: number[] }[];
}

for (const file of vectorFiles('tokenize')) {
  const v = readJson<TokenizeVector>(file);
  test(`tokenizer on ${v.model} gives llama.cpp's ids (${v.cases.length} cases)`, async (t) => {
    const fx = fixtureFor(v);
    if ('skip' in fx) return t.skip(fx.skip);
    const gguf = GGUFFile.open(fx.path);
    try {
      const tok = await unlessStub(t, 'src/model/tokenizer loadTokenizer', () => loadTokenizer(gguf));
      if (!tok) return;
      const bad: string[] = [];
      for (const c of v.cases) {
        const ids = tok.encode(c.text, { addSpecial: c.add_special, parseSpecial: c.parse_special });
        if (JSON.stringify(ids) !== JSON.stringify(c.ids)) {
          bad.push(`${JSON.stringify(c.text)} add_special=${c.add_special} parse_special=${c.parse_special}: ` +
            `ours [${ids.join(',')}] llama.cpp [${c.ids.join(',')}]`);
        }
      }
      assert.equal(bad.length, 0, `${bad.length} of ${v.cases.length} cases differ:\n${bad.slice(0, 10).join('\n')}`);
    } finally {
      gguf.close();
    }
  });
}

// ---------------------------------------------------------------- forward pass

interface LogitsVector {
  model: string;
  sha256: string;
  prompt: string;
  n_vocab: number;
  tokens: number[];
  logits: number[][];
}

/**
 * Agreement at f32 rounding level: only summation order (and ggml's SIMD expf) differ from llama.cpp.
 * Measured: at most 1.6e-6 * max|logit| on every f32 fixture and on quantized ones without a flip.
 */
const f32Tolerance = (maxAbsLogit: number) => 1e-4 * maxAbsLogit + 1e-5;

/**
 * Quantized fixtures: weights are the same blocks and activations are quantized the same way, but an
 * activation sitting within f32 rounding of a half-step can round to the other 8-bit level (seen in
 * qwen2moe-q4_k: position 5, layer 0, Q8_K value 7.4999976 in llama.cpp, 7.5000... here), and that one
 * step spreads through attention to later positions: 1.85e-2 * max|logit| measured. The per-fixture
 * bound allows such a flip; the check after the loop demands f32-level agreement from most fixtures,
 * which a systematic difference (e.g. unrounded activations, 1.5e-2..2.4e-1) cannot pass.
 */
const quantTolerance = (maxAbsLogit: number) => 3e-2 * maxAbsLogit;

const isF32Fixture = (model: string) => model.includes('-f32');

/** Whether each quantized fixture evaluated agreed with llama.cpp at f32 level, for the check after the loop. */
const quantizedResults = new Map<string, boolean>();

for (const file of vectorFiles('logits')) {
  const v = readJson<LogitsVector>(file);
  test(`forward pass on ${v.model} matches llama.cpp's logits (${v.tokens.length} positions)`, async (t) => {
    const fx = fixtureFor(v);
    if ('skip' in fx) return t.skip(fx.skip);
    // f32 KV: the vectors were made with type_k = type_v = F32 (test/vectors/README.md)
    const model = await unlessStub(t, 'src/engine/model loadModel', () => loadModel(fx.path, { kvType: 'f32' }));
    if (!model) return;
    try {
      assert.equal(model.vocabSize, v.n_vocab, 'vocabulary size');
      const promptIds = await unlessStub(t, 'tokenizer', () => model.tokenizer.encode(v.prompt));
      if (promptIds) assert.deepEqual(promptIds, v.tokens, `our tokenizer on the prompt ${JSON.stringify(v.prompt)}`);
      const logits = await model.newSequence().eval(v.tokens);
      assert.equal(logits.length, v.tokens.length * v.n_vocab, 'one row of logits per token');
      let maxAbs = 0;
      for (const row of v.logits) for (const x of row) maxAbs = Math.max(maxAbs, Math.abs(x));
      const tol = isF32Fixture(v.model) ? f32Tolerance(maxAbs) : quantTolerance(maxAbs);
      let maxDiff = 0;
      let where = '';
      const perPosition: string[] = [];
      for (let p = 0; p < v.tokens.length; p++) {
        let rowDiff = 0;
        for (let i = 0; i < v.n_vocab; i++) {
          const d = Math.abs(logits[p * v.n_vocab + i]! - v.logits[p]![i]!);
          if (!(d <= rowDiff)) rowDiff = d;
          if (!(d <= maxDiff)) { maxDiff = d; where = `position ${p}, token ${i}`; }
        }
        perPosition.push(rowDiff.toExponential(1));
      }
      // the argmax is what generation sees: it must agree wherever llama.cpp's top two are apart
      for (let p = 0; p < v.tokens.length; p++) {
        const want = v.logits[p]!;
        const sorted = [...want].sort((a, b) => b - a);
        if (sorted[0]! - sorted[1]! <= 2 * tol) continue;
        const row = logits.subarray(p * v.n_vocab, (p + 1) * v.n_vocab);
        assert.equal(row.indexOf(Math.max(...row)), want.indexOf(sorted[0]!), `argmax at position ${p}`);
      }
      t.diagnostic(`max |diff| ${maxDiff.toExponential(3)} (${(maxDiff / maxAbs).toExponential(2)} of max |logit| ` +
        `${maxAbs.toFixed(4)}) at ${where}; tolerance ${tol.toExponential(3)}`);
      if (!isF32Fixture(v.model)) quantizedResults.set(v.model, maxDiff <= f32Tolerance(maxAbs));
      assert.ok(maxDiff <= tol, `max |diff| ${maxDiff} at ${where} exceeds ${tol} (max |logit| ${maxAbs}); ` +
        `per position: ${perPosition.join(' ')}`);
    } finally {
      model.close();
    }
  });
}

test('most quantized fixtures match llama.cpp at f32 rounding level (activation rounding is ggml\'s)', (t) => {
  if (quantizedResults.size < 4) return t.skip(`only ${quantizedResults.size} quantized fixtures were evaluated`);
  const loose = [...quantizedResults].filter(([, tight]) => !tight).map(([m]) => m);
  t.diagnostic(`${quantizedResults.size - loose.length} of ${quantizedResults.size} at f32 level; others: ${loose.join(', ') || 'none'}`);
  assert.ok(loose.length * 4 <= quantizedResults.size,
    `${loose.length} of ${quantizedResults.size} quantized fixtures differ from llama.cpp beyond f32 rounding ` +
    `(${loose.join(', ')}): more than rounding-boundary flips explain; check activation quantization`);
});
