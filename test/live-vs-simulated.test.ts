// Live and simulated RAM cache agree exactly: `generate --trace T --ram-cache X` counts hits and misses
// in the live HostCache; `simulate --trace T --ram-cache X --policy lru` replays T (batch by batch, in the
// dispatcher's access order) and must report the same hits, misses and bytes read. Budgets: everything,
// half, and the smallest that holds each batch's distinct experts of one layer (below that, batches run
// in timing-dependent waves and simulate only approximates). Recorded without prefetch, and with it (the
// trace then records each batch's prefetches, which simulate replays).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openTrace, TraceWriter, type TraceHeader, type TraceTokenRecord } from '../src/trace/format.js';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const bin = join(repoRoot, 'bin', 'moe-offload.js');
const PROMPT = 'The quick brown fox jumps over the lazy dog';

interface LiveTotals { hits: number; misses: number; bytesRead: number }
interface LivePrefetch { issued: number; used: number; wasted: number; bytes: number }

function cli(args: string[]): string {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

function generateRun(model: string, ramCache: string, trace: string, prefetch: boolean): { total: LiveTotals; prefetch: LivePrefetch } {
  const out = JSON.parse(cli(['generate', '--model', model, '--prompt', PROMPT, '--max-tokens', '12', '--temperature', '0',
    '--threads', '1', '--ram-cache', ramCache, prefetch ? '--prefetch' : '--no-prefetch', '--trace', trace, '--json'])) as
    { stats: { experts: { total: LiveTotals; prefetch: LivePrefetch } } };
  return out.stats.experts;
}

function generate(model: string, ramCache: string, trace: string): LiveTotals {
  return generateRun(model, ramCache, trace, false).total;
}

interface SimJson {
  capacityExperts: number; accesses: number; hits: { cold: number }; misses: number; bytesRead: number; perBatch: boolean; oversizedBatchLayers: number;
  prefetch: { issued: number; used: number; wasted: number; skipped: number } | null;
}

async function readTrace(path: string): Promise<{ header: TraceHeader; records: TraceTokenRecord[] }> {
  const t = await openTrace(path);
  const records: TraceTokenRecord[] = [];
  for await (const r of t.records) records.push(r);
  assert.ok(t.header);
  return { header: t.header, records };
}

/** Most distinct experts one layer of one batch routes to (from the trace, counted here independently). */
function widestBatchLayer(records: TraceTokenRecord[], layers: number): number {
  const sets = new Map<string, Set<number>>();
  for (const r of records) {
    assert.ok(r.batch !== undefined, 'token lines carry the batch');
    for (let l = 0; l < layers; l++) {
      const key = `${r.seq}/${r.batch}/${l}`;
      if (!sets.has(key)) sets.set(key, new Set());
      for (const e of r.experts[l]!) sets.get(key)!.add(e);
    }
  }
  return Math.max(...[...sets.values()].map((s) => s.size));
}

for (const name of ['qwen2moe-q4_0.gguf', 'olmoe-q4_k.gguf']) {
  const model = join(repoRoot, 'fixtures', name);
  test(`${name}: simulate --policy lru reproduces the live hits, misses and bytes read`, { skip: !existsSync(model) && 'fixture not generated' }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'live-vs-sim-'));
    try {
      // A first run to learn the slot size and the widest batch (the prompt's).
      const probe = join(dir, 'probe.gz');
      generate(model, '100%', probe);
      const { header, records } = await readTrace(probe);
      const slot = header.slot_bytes;
      assert.ok(typeof slot === 'number' && slot >= (header.expert_bytes ?? 0), 'header has slot_bytes');
      const widest = widestBatchLayer(records, header.layers);
      assert.ok(records.some((r) => r.batch! > 0) && widest > header.k, 'a prompt batch plus decode steps');
      const all = header.layers * header.experts;
      const budgets = ['100%', '50%', String(widest * slot)];
      // Each budget must hold the widest batch-layer (else the live order depends on timing).
      assert.ok(Math.floor(all / 2) >= widest, `50% (${Math.floor(all / 2)} slots) holds ${widest}`);

      const seen = new Set<string>();
      for (const budget of budgets) {
        const trace = join(dir, `t-${budget.replace('%', 'pct')}.gz`);
        const live = generate(model, budget, trace);
        const sim = JSON.parse(cli(['simulate', '--trace', trace, '--ram-cache', budget, '--policy', 'lru', '--json'])) as SimJson;
        assert.equal(sim.prefetch, null, 'recorded with --no-prefetch: no prefetch replayed');
        assert.ok(sim.perBatch, 'replayed per batch');
        assert.equal(sim.oversizedBatchLayers, 0, `${budget}: no batch runs in waves`);
        assert.deepEqual({ hits: sim.hits.cold, misses: sim.misses, bytesRead: sim.bytesRead },
          { hits: live.hits, misses: live.misses, bytesRead: live.bytesRead }, `${name} at ${budget} (${sim.capacityExperts} slots)`);
        assert.equal(sim.accesses, live.hits + live.misses);
        seen.add(`${live.hits}/${live.misses}`);
      }
      assert.ok(seen.size >= 2, `the budgets give different counts: ${[...seen].join(' ')}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

// With prefetching: the trace records each batch's prefetches and simulate replays them in the live order
// (lookups, retire the layer's unused prefetches, prefetch the next layer, unpin). One thread, so the
// experts are computed in a fixed order; the budgets hold well over one layer's experts plus the
// prefetches, so no still-loading entry is ever the cache's victim (the one timing effect the replay
// does not model).
// Budgets per fixture: small enough that prefetching reads (olmoe's 16 experts at 40% leave no slot a
// prefetch may take), large enough to hold a batch-layer's experts.
for (const [name, budgets] of [['qwen2moe-q4_0.gguf', ['40%', '50%']], ['olmoe-q4_k.gguf', ['50%', '75%']]] as const) {
  const model = join(repoRoot, 'fixtures', name);
  test(`${name}: with prefetch, simulate --policy lru reproduces the live hits, misses, bytes read and prefetch counts`, { skip: !existsSync(model) && 'fixture not generated' }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'live-vs-sim-pf-'));
    try {
      const seen = new Set<string>();
      for (const budget of budgets) {
        const trace = join(dir, `t-${budget.replace('%', 'pct')}.gz`);
        const live = generateRun(model, budget, trace, true);
        assert.ok(live.prefetch.issued > 0, `${budget}: the live run prefetched`);
        const { header, records } = await readTrace(trace);
        // The recorded reads are the live run's: one list per layer, the same on every line of a batch
        // (a batch in which prefetch did nothing has none).
        const perBatch = new Map<string, string>();
        assert.ok(records.some((r) => r.prefetched), 'token lines carry "prefetched"');
        for (const r of records) {
          assert.ok(r.prefetched === undefined || r.prefetched.length === header.layers, 'one list per layer');
          const key = `${r.seq}/${r.batch}`;
          const lists = JSON.stringify([r.prefetched, r.prefetch_cached]);
          assert.equal(perBatch.get(key) ?? lists, lists, `batch ${key}: the same lists on every line`);
          perBatch.set(key, lists);
        }
        const recorded = [...perBatch.values()].reduce((n, v) => n + ((JSON.parse(v) as (number[][] | undefined)[])[0] ?? []).flat().length, 0);
        assert.equal(recorded, live.prefetch.issued, 'every started read is recorded once');

        const sim = JSON.parse(cli(['simulate', '--trace', trace, '--ram-cache', budget, '--policy', 'lru', '--json'])) as SimJson;
        assert.ok(sim.perBatch);
        assert.equal(sim.oversizedBatchLayers, 0);
        assert.deepEqual(
          { hits: sim.hits.cold, misses: sim.misses, bytesRead: sim.bytesRead, prefetch: sim.prefetch },
          { hits: live.total.hits, misses: live.total.misses, bytesRead: live.total.bytesRead,
            prefetch: { issued: live.prefetch.issued, used: live.prefetch.used, wasted: live.prefetch.wasted, skipped: 0 } },
          `${name} at ${budget} (${sim.capacityExperts} slots)`);
        assert.equal(sim.accesses, live.total.hits + live.total.misses);
        // lfu has no live counterpart and does not replay prefetches.
        const plain = JSON.parse(cli(['simulate', '--trace', trace, '--ram-cache', budget, '--policy', 'lfu', '--json'])) as SimJson;
        assert.equal(plain.prefetch, null);
        seen.add(`${live.total.hits}/${live.total.misses}/${live.prefetch.used}`);
      }
      assert.equal(seen.size, 2, `the budgets give different counts: ${[...seen].join(' ')}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('simulate --ram-cache counts slots of slot_bytes (padded), as the live cache does, and prices reads by expert_bytes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'live-vs-sim-'));
  try {
    const p = join(dir, 't.gz');
    const w = TraceWriter.create(p, { model: 'm', architecture: 'qwen3moe', layers: 2, experts: 4, k: 1, shared_experts: 0, prompt_ids: [1], expert_bytes: 1000, slot_bytes: 1536 });
    for (let pos = 0; pos < 8; pos++) w.token({ seq: 0, pos, batch: pos, experts: [[pos % 4], [(pos + 1) % 4]] });
    w.close();
    const run = (size: string) => JSON.parse(cli(['simulate', '--trace', p, '--ram-cache', size, '--json'])) as { capacityExperts: number; misses: number; bytesRead: number };
    // 3072 bytes hold 2 slots of 1536 (3 if an expert took only its 1000 bytes).
    assert.equal(run('3072').capacityExperts, 2);
    // Percent of all 8 slots, as generate's --ram-cache 50%.
    assert.equal(run('50%').capacityExperts, 4);
    const r = run('100%');
    assert.equal(r.capacityExperts, 8);
    assert.equal(r.misses, 8, 'each of the 8 experts read once');
    assert.equal(r.bytesRead, 8 * 1000);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
