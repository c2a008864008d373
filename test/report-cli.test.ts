// `moe-offload report` end to end: the real launcher on small traces written here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TraceWriter } from '../src/trace/format.js';
import { parseIntList } from '../src/cli/option-parsers.js';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'report-cli-test-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/moe-offload.js'), ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

// The metrics.md worked example in the import layout: SRP(2) model 0.784314, SCH(1, C=2) layers
// 0.5 / 0.583333, model 0.541667.
const worked = join(dir, 'worked.jsonl');
const l0 = [[0, 1], [0, 1], [0, 2], [3, 1], [0, 1], [2, 3]];
const l1 = [[2, 3], [2, 3], [2, 3], [1, 0], [2, 3], [2, 0]];
writeFileSync(worked, l0.map((s, pos) => JSON.stringify({ seq: 0, pos, experts: [s, l1[pos]] })).join('\n') + '\n');

test('--json: the SRP/SCH shape of the issue, with the worked example values', () => {
  const r = cli('report', '--trace', worked, '--segments', '2,1', '--cache-sizes', '2,1', '--json');
  assert.equal(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  assert.ok(Math.abs(j.srp['2'].model - 0.784314) < 1e-6);
  assert.equal(j.srp['2'].layers.length, 2);
  assert.ok(Math.abs(j.sch['1']['2'].layers[0] - 0.5) < 1e-6);
  assert.ok(Math.abs(j.sch['1']['2'].layers[1] - 0.583333) < 1e-6);
  assert.ok(Math.abs(j.sch['1']['2'].model - 0.541667) < 1e-6);
  assert.deepEqual(j.segments, [1, 2]);
  for (const p of ['lru', 'lfu', 'belady']) {
    assert.ok(j.policies[p]['2'].cold.model <= j.policies[p]['2'].warm.model);
  }
  assert.equal(j.recommendation.policy, 'lru');
  assert.equal(j.recommendation.counting, 'cold');
});

test('recommendation: smallest shared LRU cache reaching the target, in experts and bytes', () => {
  // One layer, k = 1, sequence 0 1 0 1 0 1 0 1: LRU cold with 2 entries hits 6/8 = 0.75, with 1 entry 0.
  const p = join(dir, 'alt.jsonl');
  writeFileSync(p, [0, 1, 0, 1, 0, 1, 0, 1].map((e, pos) => JSON.stringify({ seq: 0, pos, experts: [[e]] })).join('\n'));
  let j = JSON.parse(cli('report', '--trace', p, '--json', '--target-hit-rate', '0.7', '--expert-bytes', '1MiB').out);
  assert.deepEqual([j.recommendation.experts, j.recommendation.bytes], [2, 2 * 2 ** 20]);
  j = JSON.parse(cli('report', '--trace', p, '--json', '--target-hit-rate', '0.8').out);
  assert.equal(j.recommendation.experts, null);
  assert.equal(j.recommendation.hitRate, 0.75);
  const text = cli('report', '--trace', p, '--target-hit-rate', '0.7');
  assert.equal(text.code, 0, text.err);
  assert.match(text.out, /SRP\(m\)/);
  assert.match(text.out, /LRU cold/);
  assert.match(text.out, /Recommendation: .*2 experts/);
});

test('our trace format with tiers: header used, per-tier share in the text and the HTML page', () => {
  const p = join(dir, 'run.trace.gz');
  const w = TraceWriter.create(p, { model: 'tiny-moe', architecture: 'qwen3moe', layers: 2, experts: 4, k: 2, shared_experts: 0, prompt_ids: [1], expert_bytes: 1000 });
  for (let pos = 0; pos < 40; pos++) {
    w.token({ seq: 0, pos, experts: [[pos % 4, (pos + 1) % 4], [0, 1]], tier: [['ram', 'disk'], ['gpu', 'gpu']], stall_us: [[0, 50], [0, 0]] });
  }
  w.close();
  const html = join(dir, 'page.html');
  const r = cli('report', '--trace', p, '--html', html);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /tiny-moe \(qwen3moe\)/);
  assert.match(r.out, /gpu 50\.0%.*ram 25\.0%.*disk 25\.0% \(stall 2\.0 ms\)/);
  const page = readFileSync(html, 'utf8');
  assert.match(page, /^<!doctype html>/);
  assert.ok(!/https?:\/\//.test(page.replace('http://www.w3.org/2000/svg', '')), 'no network references');
  assert.ok(!/<script/i.test(page));
  for (const want of ['SCH(4, C) per layer', 'SRP(m) per layer', 'Served from, per layer', 'Expert usage per layer', 'Recommendation']) assert.ok(page.includes(want), want);
  // expert_bytes from the header prices the recommendation.
  assert.match(page, /bytes\)/);
});

test('prefetch accuracy: issued, used by the batch-layer read for, wasted; text, --json and HTML', () => {
  const p = join(dir, 'prefetch.trace.gz');
  const w = TraceWriter.create(p, { model: 'tiny-moe', architecture: 'qwen3moe', layers: 2, experts: 4, k: 1, shared_experts: 0, prompt_ids: [1], expert_bytes: 1000 });
  // Batch 0 (positions 0, 1) selects layer 1 {2, 3}: prefetched 3 (used) and 0 (wasted). Batch 1 selects
  // layer 1 {1}: prefetched 2 (wasted: batch 0 used 2, but this batch does not). Batch 2: none.
  const pf0 = [[], [3, 0]];
  w.token({ seq: 0, pos: 0, batch: 0, experts: [[0], [2]], prefetched: pf0, prefetch_cached: [[], []] });
  w.token({ seq: 0, pos: 1, batch: 0, experts: [[1], [3]], prefetched: pf0, prefetch_cached: [[], []] });
  w.token({ seq: 0, pos: 2, batch: 1, experts: [[1], [1]], prefetched: [[], [2]], prefetch_cached: [[], [1]] });
  w.token({ seq: 0, pos: 3, batch: 2, experts: [[1], [1]] });
  w.close();
  const json = cli('report', '--trace', p, '--json');
  assert.equal(json.code, 0, json.err);
  const d = JSON.parse(json.out) as { prefetch: { total: unknown; layers: unknown[] } };
  assert.deepEqual(d.prefetch.total, { issued: 3, used: 1, wasted: 2 });
  assert.deepEqual(d.prefetch.layers, [{ issued: 0, used: 0, wasted: 0 }, { issued: 3, used: 1, wasted: 2 }]);
  const html = join(dir, 'prefetch.html');
  const text = cli('report', '--trace', p, '--html', html);
  assert.equal(text.code, 0, text.err);
  assert.match(text.out, /Prefetch: 3 expert reads issued, 1 used by the layer they were read for, 2 wasted \(33\.3% accurate\)/);
  assert.match(readFileSync(html, 'utf8'), /<h2>Prefetch<\/h2><p>3 expert reads issued/);
  // Without prefetches in the trace: no prefetch section.
  const plain = cli('report', '--trace', worked, '--json');
  assert.equal((JSON.parse(plain.out) as { prefetch: unknown }).prefetch, null);
  assert.doesNotMatch(cli('report', '--trace', worked).out, /Prefetch:/);
});

test('bad input: one line on stderr, exit 2', () => {
  const bad = join(dir, 'bad.jsonl');
  writeFileSync(bad, '{"seq":0,"pos":0,"experts":[[0,1]]}\n{"seq":0,"pos":1,"experts":[[0]]}\n');
  const cases: [string[], RegExp][] = [
    [['report', '--trace', join(dir, 'missing.jsonl')], /cannot read trace/],
    [['report', '--trace', bad], /bad\.jsonl:2: layer 0 selects 1 experts/],
    [['report', '--trace', worked, '--segments', '4,x'], /bad --segments/],
    [['report', '--trace', worked, '--cache-sizes', '9'], /more than the 4 experts/],
    [['report', '--trace', worked, '--target-hit-rate', '1.5'], /--target-hit-rate/],
    [['report', '--trace', worked, '--experts', '0'], /--experts/],
    [['report', '--trace', worked, '--expert-bytes', 'lots'], /--expert-bytes/],
    [['report', '--trace', worked, '--expert-bytes', '0'], /bad --expert-bytes '0'/],
    [['report', '--trace', worked, '--experts', 'abc'], /bad --experts 'abc': not a whole number; give a whole number of 1 or more/],
    [['report', '--trace', worked, '--target-hit-rate', '0'], /bad --target-hit-rate '0'.*above 0/],
    [['report', '--trace', worked, '--target-hit-rate', 'high'], /bad --target-hit-rate 'high': not a number/],
    [['report', '--trace', worked, '--cache-sizes', '2,0'], /bad --cache-sizes '2,0'/],
    // Bad values are reported before the trace is read.
    [['report', '--trace', join(dir, 'missing.jsonl'), '--segments', '1.5'], /bad --segments '1\.5'/],
  ];
  for (const [args, re] of cases) {
    const r = cli(...args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, re);
    assert.equal(r.err.trim().split('\n').length, 1, r.err);
    assert.ok(!/\n\s+at /.test(r.err));
  }
  assert.ok(!existsSync(join(dir, 'never.html')));
});

// Renders the page in headless Chromium (Debian's `chromium`) when it is installed; skipped otherwise.
const chromium = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
test('the HTML page renders in headless Chromium', { skip: !chromium && 'chromium not installed' }, () => {
  const html = join(dir, 'render.html');
  assert.equal(cli('report', '--trace', worked, '--segments', '1,2', '--html', html).code, 0);
  const png = join(dir, 'render.png');
  const r = spawnSync(chromium!, ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--window-size=1000,1600', `--screenshot=${png}`, `file://${html}`], { encoding: 'utf8', timeout: 60_000 });
  assert.ok(existsSync(png), `no screenshot: ${r.stderr}`);
  const img = readFileSync(png);
  assert.deepEqual([...img.subarray(1, 4)], [0x50, 0x4e, 0x47]); // PNG
  // A blank page compresses to a few KB; plots and the heatmap make it much larger.
  assert.ok(img.length > 20_000, `screenshot only ${img.length} bytes`);
});

test('parseIntList: deduplicated and ascending; a bad entry is named', () => {
  assert.deepEqual(parseIntList('--segments', ' 64, 4,16,4 '), [4, 16, 64]);
  assert.throws(() => parseIntList('--segments', '4,-1'), /bad --segments '4,-1': '-1' is not a whole number/);
});
