import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GGUFWriter } from '../src/model/gguf-writer.js';
import { GGMLType } from '../src/model/ggml-types.js';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'inspect-test-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

// A small qwen3moe-shaped model: n_embd 256, 4 experts of width 64, 2 layers, 10 tokens.
// Byte sizes by hand: Q4_K = 144 bytes per 256 values, Q8_0 = 34 per 32, F16 = 2, F32 = 4.
const GATE_UP_BYTES = 144 * 64 * 4; // Q4_K [256, 64, 4]: one 256-row block per row, 64 rows, 4 experts
const DOWN_Q8_BYTES = 2 * 34 * 256 * 4; // Q8_0 [64, 256, 4]: two blocks per 64-long row
const DOWN_F16_BYTES = 64 * 256 * 4 * 2; // F16 [64, 256, 4]

function writeModel(path: string, layer1DownF16: boolean): { other: number } {
  const w = new GGUFWriter();
  w.setString('general.architecture', 'qwen3moe');
  w.setString('general.name', 'Tiny MoE');
  w.setU32('qwen3moe.block_count', 2);
  w.setU32('qwen3moe.context_length', 4096);
  w.setU32('qwen3moe.embedding_length', 256);
  w.setU32('qwen3moe.attention.head_count', 4);
  w.setU32('qwen3moe.attention.head_count_kv', 2);
  w.setU32('qwen3moe.attention.key_length', 64);
  w.setF32('qwen3moe.rope.freq_base', 1000000);
  w.setF32('qwen3moe.attention.layer_norm_rms_epsilon', 1e-6);
  w.setU32('qwen3moe.expert_count', 4);
  w.setU32('qwen3moe.expert_used_count', 2);
  w.setU32('qwen3moe.expert_feed_forward_length', 64);
  w.setString('tokenizer.ggml.model', 'gpt2');
  w.setString('tokenizer.ggml.pre', 'qwen2');
  w.setStringArray('tokenizer.ggml.tokens', Array.from({ length: 10 }, (_, i) => `t${i}`));
  w.addTensor('token_embd.weight', [256, 10], GGMLType.F32, new Uint8Array(256 * 10 * 4));
  w.addTensor('output_norm.weight', [256], GGMLType.F32, new Uint8Array(256 * 4));
  let other = 256 * 10 * 4 + 256 * 4;
  for (const l of [0, 1]) {
    w.addTensor(`blk.${l}.attn_q.weight`, [256, 256], GGMLType.Q8_0, new Uint8Array(8 * 34 * 256));
    w.addTensor(`blk.${l}.ffn_gate_inp.weight`, [256, 4], GGMLType.F32, new Uint8Array(256 * 4 * 4));
    other += 8 * 34 * 256 + 256 * 4 * 4;
    w.addTensor(`blk.${l}.ffn_gate_exps.weight`, [256, 64, 4], GGMLType.Q4_K, new Uint8Array(GATE_UP_BYTES));
    w.addTensor(`blk.${l}.ffn_up_exps.weight`, [256, 64, 4], GGMLType.Q4_K, new Uint8Array(GATE_UP_BYTES));
    if (l === 1 && layer1DownF16) w.addTensor(`blk.${l}.ffn_down_exps.weight`, [64, 256, 4], GGMLType.F16, new Uint8Array(DOWN_F16_BYTES));
    else w.addTensor(`blk.${l}.ffn_down_exps.weight`, [64, 256, 4], GGMLType.Q8_0, new Uint8Array(DOWN_Q8_BYTES));
  }
  w.write(path);
  return { other };
}

function inspect(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['bin/moe-offload.js', 'inspect', ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.error, undefined);
  return r;
}

test('inspect --json reports what was written', () => {
  const path = join(dir, 'tiny.gguf');
  const { other } = writeModel(path, false);
  const r = inspect(['--model', path, '--json']);
  assert.equal(r.status, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  assert.equal(s.file, path);
  assert.equal(s.fileSize, statSync(path).size);
  assert.equal(s.ggufVersion, 3);
  assert.equal(s.architecture, 'qwen3moe');
  assert.equal(s.name, 'Tiny MoE');
  assert.deepEqual(s.hyperparameters, {
    block_count: 2, context_length: 4096, embedding_length: 256, 'attention.head_count': 4,
    'attention.head_count_kv': 2, 'attention.key_length': 64, 'rope.freq_base': 1000000,
    'attention.layer_norm_rms_epsilon': Math.fround(1e-6), expert_count: 4, expert_used_count: 2,
    expert_feed_forward_length: 64,
  });
  assert.equal(s.headDim, 64);
  assert.deepEqual(s.tokenizer, { model: 'gpt2', pre: 'qwen2', vocabSize: 10 });
  assert.equal(s.tensorCount, 2 + 5 * 2);
  assert.deepEqual(s.tensorTypes, { f32: 4, q8_0: 4, q4_K: 4 });
  assert.equal(s.expertTensorBytes, 2 * (2 * GATE_UP_BYTES + DOWN_Q8_BYTES));
  assert.equal(s.otherTensorBytes, other);
  assert.equal(s.expertCount, 4);
  assert.equal(s.expertUsedCount, 2);
  assert.equal(s.moeLayers, 2);
  // One expert: a quarter of each stacked tensor: 2 * 9216 (Q4_K gate, up) + 17408 (Q8_0 down).
  assert.equal(s.oneExpertBytes, 2 * 9216 + 17408);
  assert.equal(s.oneExpertBytesMin, 2 * 9216 + 17408);
  assert.equal(s.oneExpertBytesMax, 2 * 9216 + 17408);
});

test('inspect --json: expert sizes that differ by layer give min and max', () => {
  const path = join(dir, 'mixed.gguf');
  writeModel(path, true);
  const r = inspect(['--model', path, '--json']);
  assert.equal(r.status, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  assert.equal(s.oneExpertBytes, null);
  assert.equal(s.oneExpertBytesMin, 2 * 9216 + 17408);
  assert.equal(s.oneExpertBytesMax, 2 * 9216 + 64 * 256 * 2);
  assert.deepEqual(s.tensorTypes, { f32: 4, q8_0: 3, q4_K: 4, f16: 1 });
});

test('inspect prints an aligned table', () => {
  const path = join(dir, 'tiny2.gguf');
  writeModel(path, false);
  const r = inspect(['--model', path]);
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');
  const row = (label: string) => lines.find((l) => l.trimStart().startsWith(`${label} `));
  assert.match(row('architecture')!, /qwen3moe$/);
  assert.match(row('name')!, /Tiny MoE$/);
  assert.match(row('expert_count')!, / 4$/);
  assert.match(row('tokenizer')!, /gpt2 \(pre: qwen2\), 10 tokens/);
  assert.match(row('one expert')!, /35\.00 KiB \(35840 bytes\)/);
  // Every value starts in the same column: where the (absolute) path starts on the first row.
  const col = lines[0]!.indexOf(path);
  assert.ok(col > 0 && lines[0]!.startsWith('file'));
  for (const l of lines) assert.match(l.slice(col - 2, col + 1), /^  \S$/, `misaligned: ${l}`);
});

test('inspect without --model is a usage error', () => {
  const r = inspect([]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /--model/);
});
