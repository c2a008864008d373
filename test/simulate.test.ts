// `simulate`: LRU through the live HostCache agrees with metrics.ts's LRU; sizes in bytes, percent, experts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { routingFromArrays } from '../src/trace/routing.js';
import { policyHitRates, sharedCacheReplay } from '../src/trace/metrics.js';
import { simulateTrace } from '../src/trace/simulate.js';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'simulate-test-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

// Pseudo-random routing with some locality: 3 layers, 8 experts, top-2, two sequences.
let x = 7;
const rnd = (n: number) => ((x = (x * 1103515245 + 12345) >>> 0) >>> 16) % n;
function token(prev: number[][] | undefined): number[][] {
  return [0, 1, 2].map((l) => {
    const a = prev && rnd(3) ? prev[l]![0]! : rnd(8);
    let b = rnd(8);
    while (b === a) b = rnd(8);
    return [a, b];
  });
}
const seqs: number[][][][] = [[], []];
for (const s of seqs) for (let t = 0; t < 150; t++) s.push(token(s[t - 1]));
const routing = routingFromArrays(seqs, 8);

test('simulate LRU (HostCache) equals metrics.ts LRU cold for the same size; warm and bytes follow', () => {
  for (const perLayer of [1, 2, 3, 5, 8]) {
    const sim = simulateTrace(routing, 'lru', perLayer * 3, 1000);
    const m = policyHitRates(routing, 'lru', perLayer);
    assert.ok(Math.abs(sim.hitRate.cold - m.cold.model) < 1e-12, `C=${perLayer}: ${sim.hitRate.cold} vs ${m.cold.model}`);
    assert.ok(Math.abs(sim.hitRate.warm - m.warm.model) < 1e-12, `warm C=${perLayer}`);
    assert.equal(sim.bytesRead, sim.misses * 1000);
    assert.equal(sim.accesses, 2 * 150 * 3 * 2);
  }
  // Capacities that are not a multiple of the layer count, too.
  for (const cap of [4, 7, 11]) {
    assert.equal(simulateTrace(routing, 'lru', cap, null).hits.cold, sharedCacheReplay(routing, 'lru', cap).cold);
  }
});

test('LFU and MIN: MIN is the best of the three', () => {
  for (const cap of [3, 6, 12]) {
    const min = simulateTrace(routing, 'belady', cap, null).hitRate.cold;
    assert.ok(min >= simulateTrace(routing, 'lru', cap, null).hitRate.cold);
    assert.ok(min >= simulateTrace(routing, 'lfu', cap, null).hitRate.cold);
  }
});

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/moe-offload.js'), ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('CLI: --ram-cache in bytes and percent, --cache-experts; bad values exit 2', () => {
  const p = join(dir, 't.jsonl');
  writeFileSync(p, seqs.flatMap((s, seq) => s.map((experts, pos) => JSON.stringify({ seq, pos, experts }))).join('\n'));
  const run = (...a: string[]) => {
    const r = cli('simulate', '--trace', p, '--json', ...a);
    assert.equal(r.code, 0, r.err);
    return JSON.parse(r.out);
  };
  const byExperts = run('--cache-experts', '2');
  assert.equal(byExperts.capacityExperts, 6);
  assert.ok(Math.abs(byExperts.hitRate.cold - policyHitRates(routing, 'lru', 2).cold.model) < 1e-12);
  // 6 experts of 1 KiB: 6KiB, or 25% of 24 experts.
  const byBytes = run('--ram-cache', '6KiB', '--expert-bytes', '1KiB');
  assert.equal(byBytes.capacityExperts, 6);
  assert.equal(byBytes.bytesRead, byBytes.misses * 1024);
  assert.equal(run('--ram-cache', '25%', '--expert-bytes', '1KiB').capacityExperts, 6);
  assert.equal(run('--ram-cache', '6.5KiB', '--expert-bytes', '1KiB', '--policy', 'belady').capacityExperts, 6);
  const text = cli('simulate', '--trace', p, '--cache-experts', '2');
  assert.match(text.out, /cold/);
  assert.match(text.out, /warm/);
  for (const [args, re] of [
    [['--ram-cache', '1GiB'], /needs the size of an expert/],
    [['--cache-experts', '2', '--policy', 'fifo'], /unknown --policy/],
    [[], /exactly one of/],
    [['--ram-cache', '4KiB', '--cache-experts', '2'], /exactly one of/],
    [['--ram-cache', '12 parsecs', '--expert-bytes', '1KiB'], /--ram-cache/],
    [['--ram-cache', '100B', '--expert-bytes', '1KiB'], /holds no expert/],
    [['--cache-experts', '1.5'], /bad --cache-experts '1\.5': not a whole number/],
    [['--cache-experts', '0'], /bad --cache-experts '0'/],
    [['--cache-experts', '2', '--experts', 'x'], /bad --experts 'x'/],
    [['--cache-experts', '2', '--expert-bytes', '-1'], /bad --expert-bytes '-1'/],
    [['--ram-cache', '150%', '--expert-bytes', '1KiB'], /bad --ram-cache '150%'/],
    // A malformed size is reported even when the trace cannot size the cache.
    [['--ram-cache', '4 GiBs'], /bad --ram-cache '4 GiBs': unknown unit/],
  ] as [string[], RegExp][]) {
    const r = cli('simulate', '--trace', p, ...args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, re);
    assert.equal(r.err.trim().split('\n').length, 1, r.err);
  }
});
