// The benchmark's statistics: medians and paired ratios are what its speed claims rest on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pairedRatios, summarize, timePairedPasses } from '../bench/stats.js';

test('summarize: median of odd and even counts, min, max', () => {
  assert.deepEqual(summarize([3, 1, 2]), { median: 2, min: 1, max: 3, samples: 3 });
  assert.deepEqual(summarize([4, 1, 3, 2]), { median: 2.5, min: 1, max: 4, samples: 4 });
  assert.throws(() => summarize([]), RangeError);
});

test('pairedRatios: the median of per-pair throughput ratios, not a ratio of medians', () => {
  // a moves 100 bytes, b 50 bytes. Pair ratios: (100/1)/(50/1) = 2, (100/2)/(50/0.5) = 0.5,
  // (100/4)/(50/1) = 0.5 -> median 0.5. The ratio of median throughputs would be (100/2)/(50/1) = 1.
  const r = pairedRatios(100, 50, { a: [1, 2, 4], b: [1, 0.5, 1] });
  assert.equal(r.median, 0.5);
  assert.equal(r.min, 0.5);
  assert.equal(r.max, 2);
  assert.equal(r.samples, 3);
});

test('timePairedPasses alternates which side runs first and times both', async () => {
  const order: string[] = [];
  const paired = await timePairedPasses(() => { order.push('a'); }, () => { order.push('b'); },
    { warmup: 1, reps: 4, minSeconds: 0 });
  assert.equal(paired.a.length, 4);
  assert.equal(paired.b.length, 4);
  // warm-up a b, then pass 0: a b, pass 1: b a, pass 2: a b, pass 3: b a
  assert.deepEqual(order, ['a', 'b', 'a', 'b', 'b', 'a', 'a', 'b', 'b', 'a']);
  for (const s of [...paired.a, ...paired.b]) assert.ok(s >= 0);
});
