// TraceRecorder: the engine's routing (LoadOptions.onRoute) written as a trace and read back, checked
// against what the engine reported and, independently, against the reference forward pass's router
// choices; header fields from the model file; tier reports; and a recording cut off by the process
// exiting or being killed leaves a readable PATH.partial.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { GGUFFile } from '../src/model/gguf.js';
import { loadModel } from '../src/engine/model.js';
import { openTrace, type TokenRecord, type TraceTokenRecord } from '../src/trace/format.js';
import { compactF32, openTraceRecorder, readTraceModelInfo, TraceRecorder, type TokenSink } from '../src/trace/recorder.js';
import { ggufWeights, referenceForward } from './reference/forward.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const FIXTURES = resolve(HERE, '..', '..', 'fixtures');
const RECORDER_JS = resolve(HERE, '..', 'src', 'trace', 'recorder.js');
const PROMPT = [1, 300, 17, 42, 99, 260, 261, 270, 3];
const DECODE_STEPS = 3;

async function readAll(path: string): Promise<{ header: Awaited<ReturnType<typeof openTrace>>['header']; records: TokenRecord[]; truncated: boolean }> {
  const t = await openTrace(path);
  const records: TokenRecord[] = [];
  for await (const r of t.records) records.push(r);
  return { header: t.header, records, truncated: t.truncated };
}

function argmaxLastRow(logits: Float32Array, vocab: number): number {
  const row = logits.subarray(logits.length - vocab);
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

for (const name of ['qwen2moe-f32.gguf', 'olmoe-f32.gguf']) {
  const path = join(FIXTURES, name);
  test(`records ${name}: prompt + ${DECODE_STEPS} decode steps`, { skip: !existsSync(path) && 'fixture not generated' }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'trace-rec-'));
    const tracePath = join(dir, 'run.jsonl.gz');
    try {
      const rec = openTraceRecorder(tracePath, readTraceModelInfo(path), PROMPT);
      // What the engine reported, kept apart from the recorder: reported[layer][pos].
      const reported = new Map<string, { experts: number[]; weights: number[] }>();
      const model = await loadModel(path, {
        onRoute: (layer, pos, experts, weights) => {
          reported.set(`${layer}/${pos}`, { experts: [...experts], weights: [...weights] });
          rec.route(layer, pos, experts, weights);
        },
      });
      const tokens = [...PROMPT];
      try {
        const seq = model.newSequence();
        let logits = await seq.eval(PROMPT);
        for (let s = 0; s < DECODE_STEPS; s++) {
          const next = argmaxLastRow(logits, model.vocabSize);
          tokens.push(next);
          logits = await seq.eval([next]);
        }
      } finally {
        await model.close();
      }
      // Before close the file is still PATH.partial.
      assert.ok(existsSync(`${tracePath}.partial`) && !existsSync(tracePath));
      rec.close();
      assert.ok(existsSync(tracePath) && !existsSync(`${tracePath}.partial`));

      const { header, records, truncated } = await readAll(tracePath);
      assert.equal(truncated, false);

      // Header, from the file's own metadata and tensor index.
      const file = GGUFFile.open(path);
      try {
        const arch = String(file.get('general.architecture'));
        let moeLayers = 0;
        while (file.tensors.has(`blk.${moeLayers}.ffn_gate_exps.weight`)) moeLayers++;
        const nExpert = Number(file.get(`${arch}.expert_count`));
        const stacked = ['gate', 'up', 'down'].reduce((s, m) => s + file.tensor(`blk.0.ffn_${m}_exps.weight`).byteLength, 0);
        assert.ok(header);
        assert.equal(header.format, 'moe-offload-trace');
        assert.equal(header.model, file.get('general.name') ?? name.replace(/\.gguf$/, ''));
        assert.equal(header.architecture, arch);
        assert.equal(header.layers, moeLayers);
        assert.equal(header.experts, nExpert);
        assert.equal(header.k, Number(file.get(`${arch}.expert_used_count`)));
        assert.equal(header.shared_experts, arch === 'qwen2moe' ? 1 : 0);
        assert.equal(header.expert_bytes, stacked / nExpert);
        assert.deepEqual(header.prompt_ids, PROMPT);

        // One line per token, in order, each equal to what the engine reported.
        assert.equal(records.length, tokens.length);
        assert.equal(reported.size, tokens.length * moeLayers);
        records.forEach((r, p) => {
          assert.equal(r.seq, 0);
          assert.equal(r.pos, p);
          assert.equal(r.experts.length, moeLayers);
          assert.equal(r.tier, undefined);
          for (let l = 0; l < moeLayers; l++) {
            const want = reported.get(`${l}/${p}`)!;
            assert.deepEqual(r.experts[l], want.experts, `pos ${p} layer ${l}`);
            assert.deepEqual(r.weights![l]!.map(Math.fround), want.weights.map(Math.fround), `pos ${p} layer ${l} weights`);
          }
        });

        // Independently: the reference forward pass over the whole token list routes the same way
        // (positions where the k-th and (k+1)-th router logits nearly tie are skipped).
        const ref = referenceForward(ggufWeights(file), tokens);
        let compared = 0;
        for (let l = 0; l < moeLayers; l++) {
          for (let p = 0; p < tokens.length; p++) {
            if (ref.routerMargins[l]![p]! < 1e-4) continue;
            assert.deepEqual(records[p]!.experts[l], ref.experts[l]![p], `reference routing, layer ${l} pos ${p}`);
            compared++;
          }
        }
        assert.ok(compared >= 0.9 * moeLayers * tokens.length, `only ${compared} routings compared`);
      } finally {
        file.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

/** A sink that keeps the records in memory. */
function memorySink(): TokenSink & { records: TokenRecord[]; closed: boolean } {
  const s = { records: [] as TokenRecord[], closed: false, token: (r: TokenRecord) => { s.records.push(r); }, flush: () => {}, close: () => { s.closed = true; } };
  return s;
}

test('tier reports: per token and per expert job (batch rows), written once complete', () => {
  const sink = memorySink();
  // Blocks 0 and 2 are MoE layers (block 1 dense): trace layers 0 and 1.
  const rec = new TraceRecorder(sink, [0, 2], { tiers: true });
  // Prompt batch: positions 0, 1, k = 2.
  rec.route(0, 0, [3, 1], [0.7, 0.3]);
  rec.route(0, 1, [1, 2], [0.6, 0.4]);
  rec.serveExpert(0, 1, 'ram', 0); // both tokens chose expert 1
  rec.serveExpert(0, 3, 'disk', 120.4, [0]);
  rec.serveExpert(0, 2, 'disk', 80, [1]);
  rec.route(1, 99, [9], [1]); // block 1 is dense: ignored
  rec.route(2, 0, [0, 4], [0.5, 0.5]);
  rec.route(2, 1, [4, 5], [0.9, 0.1]);
  assert.equal(sink.records.length, 0, 'nothing is written before every expert is served');
  rec.serveExpert(2, 4, 'gpu', 0);
  rec.serveExpert(2, 0, 'ram', 0);
  assert.equal(sink.records.length, 1, 'position 0 is complete');
  rec.serveExpert(2, 5, 'disk', 999.6, [1]);
  assert.equal(sink.records.length, 2);
  assert.deepEqual(sink.records[0], {
    seq: 0, pos: 0, batch: 0, experts: [[3, 1], [0, 4]], weights: [[0.7, 0.3], [0.5, 0.5]],
    tier: [['disk', 'ram'], ['ram', 'gpu']], stall_us: [[120, 0], [0, 0]],
  });
  assert.deepEqual(sink.records[1]!.tier, [['ram', 'disk'], ['gpu', 'disk']]);
  assert.deepEqual(sink.records[1]!.stall_us, [[0, 80], [0, 1000]]);

  // Decode step at position 2: batch rows restart at 0. Layer 1 is never served: the token is written
  // without tiers when the next batch begins.
  rec.route(0, 2, [2, 3], [0.5, 0.5]);
  rec.serveExpert(0, 2, 'ram', 0, [0]);
  rec.serveExpert(0, 3, 'ram', 0, [0]);
  rec.route(2, 2, [1, 0], [0.8, 0.2]);
  assert.equal(sink.records.length, 2);
  rec.route(0, 3, [0, 1], [0.5, 0.5]);
  assert.equal(sink.records.length, 3);
  assert.deepEqual(sink.records[2], { seq: 0, pos: 2, batch: 1, experts: [[2, 3], [1, 0]], weights: [[0.5, 0.5], [0.8, 0.2]] });

  // A new sequence: the half-routed token at position 3 is dropped, numbering restarts.
  rec.nextSequence();
  rec.route(0, 0, [1, 2], [0.5, 0.5]);
  rec.route(2, 0, [3, 4], [0.5, 0.5]);
  rec.serve(0, 0, 1, 'ram', 0);
  rec.serve(0, 0, 2, 'ram', 0);
  rec.serve(0, 0, 7, 'disk', 5); // not selected: ignored
  rec.serve(2, 0, 3, 'ram', 0);
  assert.equal(sink.records.length, 3);
  rec.serve(2, 0, 4, 'disk', 3);
  assert.equal(sink.records.length, 4);
  assert.equal(sink.records[3]!.seq, 1);
  assert.deepEqual(sink.records[3]!.tier, [['ram', 'ram'], ['ram', 'disk']]);
  rec.close();
  assert.ok(sink.closed);
  assert.equal(sink.records.length, 4);
});

test('prefetch reports: per batch and MoE layer, the same lists on every line of the batch, reset each batch', () => {
  const sink = memorySink();
  // Blocks 0, 2 and 3 are MoE layers (trace layers 0, 1, 2).
  const rec = new TraceRecorder(sink, [0, 2, 3]);
  // Prompt batch (positions 0, 1): after block 0's experts start, block 2's prediction is prefetched
  // (7 read, 1 already cached); after block 2's, block 3's (4 read).
  rec.route(0, 0, [1, 2], [0.5, 0.5]);
  rec.route(0, 1, [2, 3], [0.5, 0.5]);
  rec.prefetch(2, 7, true);
  rec.prefetch(2, 1, false);
  rec.prefetch(1, 5, true); // block 1 is dense: ignored
  rec.route(2, 0, [1, 7], [0.5, 0.5]);
  rec.route(2, 1, [1, 4], [0.5, 0.5]);
  rec.prefetch(3, 4, true);
  rec.route(3, 0, [0, 4], [0.5, 0.5]);
  rec.route(3, 1, [4, 5], [0.5, 0.5]);
  assert.equal(sink.records.length, 2);
  for (const r of sink.records) {
    assert.deepEqual((r as TraceTokenRecord).prefetched, [[], [7], [4]]);
    assert.deepEqual((r as TraceTokenRecord).prefetch_cached, [[], [1], []]);
  }
  // Decode step without prefetches: no lists. The next one has its own.
  rec.route(0, 2, [1, 2], [0.5, 0.5]);
  rec.route(2, 2, [1, 2], [0.5, 0.5]);
  rec.route(3, 2, [1, 2], [0.5, 0.5]);
  assert.equal((sink.records[2] as TraceTokenRecord).prefetched, undefined);
  rec.route(0, 3, [1, 2], [0.5, 0.5]);
  rec.prefetch(2, 3, true);
  rec.prefetch(2, 6, true);
  rec.route(2, 3, [1, 2], [0.5, 0.5]);
  rec.route(3, 3, [1, 2], [0.5, 0.5]);
  assert.deepEqual((sink.records[3] as TraceTokenRecord).prefetched, [[], [3, 6], []]);
  assert.deepEqual(sink.records.map((r) => (r as TraceTokenRecord).batch), [0, 0, 1, 2]);
});

test('without tiers a token is written as soon as its last layer is routed; weights are exact float32', () => {
  const sink = memorySink();
  const rec = new TraceRecorder(sink, [0, 1]);
  const w = [Math.fround(0.1234567), 1 / 3];
  rec.route(0, 0, [5, 6], w);
  rec.serveExpert(0, 5, 'disk', 10); // ignored without tiers
  assert.equal(sink.records.length, 0);
  rec.route(1, 0, [1, 2], [0.25, 0.75]);
  assert.equal(sink.records.length, 1);
  assert.equal(sink.records[0]!.tier, undefined);
  assert.deepEqual(sink.records[0]!.weights![0]!.map(Math.fround), w.map(Math.fround));
  // compactF32: shortest decimal that reads back as the same float32.
  for (const x of [1 / 3, Math.PI, 1e-7, 0.5, 123456.789, -2.5e-3]) {
    const c = compactF32(x);
    assert.equal(Math.fround(c), Math.fround(x));
    assert.ok(String(c).replace(/^-?0\./, '').replace(/e.*$/, '').replace('.', '').length <= 9, `${c}`);
  }
  assert.equal(compactF32(0.5), 0.5);
  assert.equal(compactF32(Math.fround(0.1)), 0.1);
});

/** Runs a child process that records `tokens` tokens (2 layers, k = 2) and then ends as `how` says. */
function recordInChild(tracePath: string, tokens: number, how: 'exit' | 'kill'): void {
  const script = `
    import { openTraceRecorder } from ${JSON.stringify(pathToFileURL(RECORDER_JS).href)};
    const info = { model: 'child', architecture: 'qwen3moe', experts: 16, k: 2, shared_experts: 0, expert_bytes: 4096, moeBlocks: [0, 1] };
    const rec = openTraceRecorder(${JSON.stringify(tracePath)}, info, [7, 8, 9]);
    for (let p = 0; p < ${tokens}; p++) for (let l = 0; l < 2; l++) rec.route(l, p, [(p + l) % 16, (p + l + 5) % 16], [0.75, 0.25]);
    ${how === 'exit' ? 'process.exit(3);' : "process.kill(process.pid, 'SIGKILL');"}
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  if (how === 'exit') assert.equal(r.status, 3, r.stderr);
  else assert.equal(r.signal, 'SIGKILL', r.stderr);
}

function checkChildRecords(records: TokenRecord[]): void {
  records.forEach((r, p) => {
    assert.equal(r.pos, p);
    assert.deepEqual(r.experts, [[p % 16, (p + 5) % 16], [(p + 1) % 16, (p + 6) % 16]]);
  });
}

test('a run that exits without close() leaves PATH.partial with every routed token', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'trace-rec-'));
  try {
    const p = join(dir, 't.jsonl.gz');
    recordInChild(p, 300, 'exit');
    assert.ok(!existsSync(p), 'not renamed: the run did not finish');
    const { header, records } = await readAll(`${p}.partial`);
    assert.equal(header?.model, 'child');
    assert.deepEqual(header?.prompt_ids, [7, 8, 9]);
    assert.equal(header?.layers, 2);
    assert.equal(records.length, 300);
    checkChildRecords(records);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a killed run leaves a readable prefix in PATH.partial', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'trace-rec-'));
  try {
    const p = join(dir, 't.jsonl.gz');
    recordInChild(p, 600, 'kill');
    assert.ok(!existsSync(p));
    const { header, records } = await readAll(`${p}.partial`);
    assert.equal(header?.k, 2);
    // Batches of 256 tokens (or one per second) were written before the kill; the rest is lost.
    assert.ok(records.length >= 512 && records.length <= 600, `${records.length} records`);
    checkChildRecords(records);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('generate --trace FILE, then report --trace FILE --json', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'trace-cli-'));
  const bin = resolve(HERE, '..', '..', 'bin', 'moe-offload.js');
  try {
    const p = join(dir, 'T');
    const gen = spawnSync(process.execPath, [bin, 'generate', '--prompt', 'hi', '--max-tokens', '4', '--temperature', '0', '--threads', '1', '--json', '--trace', p],
      { encoding: 'utf8', timeout: 60_000 });
    assert.equal(gen.status, 0, gen.stderr);
    assert.ok(existsSync(p) && !existsSync(`${p}.partial`));
    const out = JSON.parse(gen.stdout) as { stats: { prompt_tokens: number; generated_tokens: number } };
    const { header, records } = await readAll(p);
    assert.ok(header);
    assert.equal((header.prompt_ids as number[]).length, out.stats.prompt_tokens);
    // Every evaluated token: the prompt and each generated token but the last (sampled, not evaluated).
    assert.equal(records.length, out.stats.prompt_tokens + out.stats.generated_tokens - 1);
    assert.deepEqual(records.map((r) => r.pos), records.map((_, i) => i));

    const rep = spawnSync(process.execPath, [bin, 'report', '--trace', p, '--json'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(rep.status, 0, rep.stderr);
    const j = JSON.parse(rep.stdout) as { trace: { layers: number; experts: number; tokens: number }; srp: Record<string, { layers: unknown[] }> };
    assert.equal(j.trace.layers, header.layers);
    assert.equal(j.trace.experts, header.experts);
    assert.equal(j.trace.tokens, records.length);
    assert.equal(j.srp['4']!.layers.length, header.layers);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('generate --trace with a small --ram-cache: every expert has a tier; disk = misses, ram = hits, per batch job', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'trace-tier-'));
  const bin = resolve(HERE, '..', '..', 'bin', 'moe-offload.js');
  const model = join(FIXTURES, 'qwen2moe-q4_0.gguf');
  try {
    const p = join(dir, 'T');
    const gen = spawnSync(process.execPath, [bin, 'generate', '--model', model, '--prompt', 'the cat sat on the mat', '--max-tokens', '6',
      '--temperature', '0', '--threads', '1', '--ram-cache', '25%', '--json', '--trace', p], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(gen.status, 0, gen.stderr);
    const out = JSON.parse(gen.stdout) as { stats: { experts: { total: { hits: number; misses: number } } } };
    const { header, records } = await readAll(p);
    assert.ok(header);
    // One tier per (batch, layer, expert): the dispatcher runs each expert once for all its tokens.
    const jobs = new Map<string, string>();
    let stalls = 0;
    for (const r of records) {
      assert.ok(r.tier && r.stall_us, `pos ${r.pos} has tiers`);
      const batch = (r as TokenRecord & { batch?: number }).batch;
      assert.ok(Number.isInteger(batch), `pos ${r.pos} has a batch`);
      r.experts.forEach((sel, l) => sel.forEach((e, j) => {
        const tier = r.tier![l]![j]!;
        assert.ok(tier === 'ram' || tier === 'disk', tier);
        assert.ok(Number.isInteger(r.stall_us![l]![j]) && r.stall_us![l]![j]! >= 0);
        if (tier === 'disk') stalls += r.stall_us![l]![j]!;
        const key = `${r.seq}/${batch}/${l}/${e}`;
        const seen = jobs.get(key);
        if (seen !== undefined) assert.equal(tier, seen, `tokens of one batch share the job's tier (${key})`);
        jobs.set(key, tier);
      }));
    }
    const count = (t: string) => [...jobs.values()].filter((x) => x === t).length;
    const total = out.stats.experts.total;
    assert.ok(total.misses > 0 && total.hits > 0, `a budget that both hits and misses: ${JSON.stringify(total)}`);
    assert.equal(count('disk'), total.misses);
    assert.equal(count('ram'), total.hits);
    assert.ok(stalls > 0, 'reads take time');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
