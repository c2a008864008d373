// Trace files: our gzipped JSONL format (writer, reader, crash-left prefixes) and the plain import layout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { TraceWriter, openTrace, type TokenRecord, type TraceTokenRecord } from '../src/trace/format.js';
import { loadTrace } from '../src/trace/load.js';
import { FileAccessError, UnsupportedError, UsageError } from '../src/model/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'trace-format-test-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const L = 3;
const E = 8;
const K = 2;
const header = { model: 'tiny', architecture: 'qwen3moe', layers: L, experts: E, k: K, shared_experts: 0, prompt_ids: [1, 2, 3], expert_bytes: 4096 };

function record(seq: number, pos: number): TokenRecord {
  const experts = Array.from({ length: L }, (_, l) => [(pos + l) % E, (pos * 3 + l + 1) % E === (pos + l) % E ? (pos + l + 1) % E : (pos * 3 + l + 1) % E]);
  return {
    seq, pos, experts,
    weights: experts.map(() => [0.75, 0.25]),
    tier: experts.map((_, l) => [l === 0 ? 'gpu' : 'ram', 'disk'] as ('gpu' | 'ram' | 'disk')[]),
    stall_us: experts.map(() => [0, 120]),
  };
}

async function readAll(path: string) {
  const t = await openTrace(path);
  const recs: TokenRecord[] = [];
  for await (const r of t.records) recs.push(r);
  return { header: t.header, recs, truncated: t.truncated };
}

test('writer: header and tokens round trip; PATH.partial renamed on close; zcat-compatible', async () => {
  const path = join(dir, 'a.trace.gz');
  const w = TraceWriter.create(path, header);
  const want: TokenRecord[] = [];
  for (let i = 0; i < 700; i++) { // several gzip members
    const r = record(i < 400 ? 0 : 1, i < 400 ? i : i - 400);
    want.push(r);
    w.token(r);
  }
  assert.ok(existsSync(`${path}.partial`) && !existsSync(path));
  w.close();
  assert.ok(existsSync(path) && !existsSync(`${path}.partial`));
  const got = await readAll(path);
  assert.equal(got.header?.format, 'moe-offload-trace');
  assert.equal(got.header?.version, 1);
  assert.equal(got.header?.model, 'tiny');
  assert.deepEqual(got.header?.prompt_ids, [1, 2, 3]);
  assert.deepEqual(got.recs, want);
  assert.equal(got.truncated, false);
  // Any gunzip reads the concatenated members as one stream: header + one line per token.
  const lines = gunzipSync(readFileSync(path)).toString('utf8').trimEnd().split('\n');
  assert.equal(lines.length, 701);
  assert.deepEqual(JSON.parse(lines[5]!), want[4]);
});

test('an interrupted recording leaves a readable prefix in PATH.partial, even when cut mid-member', async () => {
  const path = join(dir, 'b.trace.gz');
  const w = TraceWriter.create(path, header);
  const want: TokenRecord[] = [];
  for (let i = 0; i < 600; i++) {
    want.push(record(0, i));
    w.token(want[i]!);
  }
  w.flush(); // what the periodic flush does; the process "dies" here without close()
  const partial = `${path}.partial`;
  const full = await readAll(partial);
  assert.deepEqual(full.recs, want);
  // Cut the file at several points: the reader returns a prefix of the tokens, never an error.
  const size = statSync(partial).size;
  let prev = -1;
  for (const frac of [0.3, 0.6, 0.95]) {
    const cut = join(dir, `cut-${frac}.gz`);
    writeFileSync(cut, readFileSync(partial).subarray(0, Math.floor(size * frac)));
    const got = await readAll(cut);
    assert.ok(got.recs.length > prev && got.recs.length < want.length, `prefix at ${frac}: ${got.recs.length}`);
    assert.deepEqual(got.recs, want.slice(0, got.recs.length));
    prev = got.recs.length;
  }
  const loaded = await loadTrace(join(dir, 'cut-0.95.gz'));
  assert.equal(loaded.routing.sequences[0]!.tokens, prev);
  assert.equal(loaded.routing.experts, E);
  // Tier statistics: layer 0 = 1 gpu + 1 disk per token, other layers 1 ram + 1 disk; 120 us per disk read.
  assert.deepEqual(loaded.tiers?.counts[0], [prev, 0, prev]);
  assert.deepEqual(loaded.tiers?.counts[2], [0, prev, prev]);
  assert.deepEqual(loaded.tiers?.stallUs[1], [0, 0, 120 * prev]);
});

test('a plain file cut inside a line: complete lines are kept and the file is flagged truncated', async () => {
  const path = join(dir, 'cut.jsonl');
  const lines = [0, 1, 2].map((p) => JSON.stringify({ seq: 0, pos: p, experts: [[p, p + 1]] }));
  writeFileSync(path, `${lines.join('\n')}\n{"seq":0,"pos":3,"exp`);
  const got = await readAll(path);
  assert.equal(got.recs.length, 3);
  assert.equal(got.truncated, true);
  truncateSync(path, lines.join('\n').length); // last line complete but without newline: kept
  assert.equal((await readAll(path)).recs.length, 3);
});

test('import layout: plain and gzipped, expert count from the largest id or --experts, order by pos', async () => {
  const text = [
    '{"seq":1,"pos":0,"experts":[[5,1],[0,2]]}',
    '{"seq":0,"pos":1,"experts":[[2,3],[4,1]],"weights":[[0.5,0.5],[0.9,0.1]]}',
    '',
    '{"seq":0,"pos":0,"experts":[[0,1],[2,3]]}',
  ].join('\n');
  const plain = join(dir, 'imp.jsonl');
  const gz = join(dir, 'imp.jsonl.gz');
  writeFileSync(plain, text);
  writeFileSync(gz, gzipSync(text));
  for (const p of [plain, gz]) {
    const t = await loadTrace(p);
    assert.equal(t.header, null);
    assert.equal(t.routing.experts, 6);
    assert.equal(t.routing.layers, 2);
    assert.equal(t.routing.k, 2);
    assert.deepEqual(t.routing.sequences.map((s) => s.seq), [0, 1]);
    // seq 0 sorted by pos: token 0 first.
    assert.deepEqual([...t.routing.sequences[0]!.ids], [0, 1, 2, 3, 2, 3, 4, 1]);
    assert.equal(t.tiers, null);
  }
  assert.equal((await loadTrace(plain, { experts: 64 })).routing.experts, 64);
  await assert.rejects(loadTrace(plain, { experts: 4 }), (e: unknown) => e instanceof UsageError && /expert 5/.test(e.message));
});

test('prefetched / prefetch_cached: round trip (any count per layer), absent when not written; report counts them', async () => {
  const p = join(dir, 'prefetch.gz');
  const w = TraceWriter.create(p, header);
  const a = { ...record(0, 0), batch: 0, prefetched: [[], [3, 5, 1], [0]], prefetch_cached: [[], [], [2]] };
  const b = { ...record(0, 1), batch: 1 };
  w.token(a);
  w.token(b);
  w.close();
  const { recs } = await readAll(p);
  assert.deepEqual(recs, [a, b]);
  assert.equal((recs[1] as TraceTokenRecord).prefetched, undefined);
  // Accuracy: batch 0 selected (record(0, 0)) layer 1 {1, 2}, layer 2 {2, 3}: of 3, 5, 1 only 1 is used; 0 is wasted.
  assert.deepEqual(a.experts, [[0, 1], [1, 2], [2, 3]]);
  const loaded = await loadTrace(p);
  assert.deepEqual(loaded.prefetch?.total, { issued: 4, used: 1, wasted: 3 });
  assert.deepEqual(loaded.prefetch?.layers.map((c) => c.used), [0, 1, 0]);
  const none = join(dir, 'no-prefetch.gz');
  const w2 = TraceWriter.create(none, header);
  w2.token(b);
  w2.close();
  assert.equal((await loadTrace(none)).prefetch, null, 'no prefetch recorded: no accuracy');
});

test('bad input: line numbers in errors, missing files, newer versions', async () => {
  const cases: [string, RegExp][] = [
    ['{"seq":0,"pos":0,"experts":[[0,1]]}\n{"seq":0,"pos":1,"experts":[[0,"x"]]}\n', /:2: "experts"\[0\]\[1\]/],
    ['{"seq":0,"pos":0,"experts":[[0,1]]}\nnot json\n{"seq":0,"pos":1,"experts":[[0,1]]}\n', /:2: not a JSON object/],
    ['{"seq":0,"experts":[[0,1]]}\n', /:1: "pos"/],
    ['{"seq":0,"pos":0,"experts":[[0,1]],"weights":[[1]]}\n', /:1: "weights"\[0\] must have 2/],
    ['{"seq":0,"pos":0,"experts":[[0,1]]}\n{"seq":0,"pos":1,"experts":[[0,1,2]]}\n', /:2: layer 0 selects 3 experts/],
    ['{"seq":0,"pos":0,"experts":[[0,1]]}\n{"seq":0,"pos":1,"experts":[[0,1],[2,3]]}\n', /:2: token has 2 layers/],
    ['{"seq":0,"pos":0,"experts":[[1,1]]}\n', /:1: layer 0 selects expert 1 twice/],
    ['{"seq":0,"pos":0,"experts":[[0,1]],"prefetched":[[0],[1]]}\n', /:1: "prefetched" must have one array per layer \(1\)/],
    ['{"seq":0,"pos":0,"experts":[[0,1]],"prefetched":[3]}\n', /:1: "prefetched"\[0\] is 3, not an array/],
    ['{"seq":0,"pos":0,"experts":[[0,1]],"prefetched":[[2,-1]]}\n', /:1: "prefetched"\[0\]\[1\] is -1, not an expert id/],
    ['{"seq":0,"pos":0,"experts":[[0,1]],"prefetched":[[]],"prefetch_cached":"x"}\n', /:1: "prefetch_cached" must have one array per layer/],
    ['{"seq":0,"pos":0,"experts":[[0,1]],"prefetched":[[2]]}\n', /: a "prefetched" list names expert 2, but the expert count is 2/],
  ];
  for (const [i, [text, re]] of cases.entries()) {
    const p = join(dir, `bad-${i}.jsonl`);
    writeFileSync(p, text);
    await assert.rejects(loadTrace(p), (e: unknown) => e instanceof UsageError && re.test(e.message) && e.message.includes(p), `case ${i}`);
  }
  await assert.rejects(loadTrace(join(dir, 'nope.jsonl')), FileAccessError);
  const newer = join(dir, 'v2.jsonl');
  writeFileSync(newer, `${JSON.stringify({ format: 'moe-offload-trace', version: 2, layers: 1, experts: 2, k: 1 })}\n`);
  await assert.rejects(loadTrace(newer), UnsupportedError);
  const empty = join(dir, 'empty.jsonl');
  writeFileSync(empty, '');
  await assert.rejects(loadTrace(empty), (e: unknown) => e instanceof UsageError && /no tokens/.test(e.message));
});
