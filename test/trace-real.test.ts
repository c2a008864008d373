// The real GPT-OSS-20B routing trace (../shared/traces, import layout): our metrics land near the
// values the paper's style of analysis reports for it (external reference values from metrics.md:
// model-level SRP(16) about 0.55, SCH(4, 2k) about 0.77), checked with loose bounds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadTrace } from '../src/trace/load.js';
import { srp, sch, policyHitRates } from '../src/trace/metrics.js';

const trace = fileURLToPath(new URL('../../../shared/traces/gpt-oss-20b-dev.jsonl.gz', import.meta.url));

test('GPT-OSS-20B trace: shape, SRP(16) and SCH(4, 2k) near the reference values', { skip: !existsSync(trace) && 'trace not present' }, async () => {
  const t = await loadTrace(trace);
  const r = t.routing;
  assert.deepEqual([r.layers, r.experts, r.k], [24, 32, 4]);
  assert.equal(r.sequences.length, 24);
  assert.equal(r.sequences.reduce((n, s) => n + s.tokens, 0), 10220);
  const s16 = srp(r, 16).model;
  assert.ok(s16 > 0.45 && s16 < 0.65, `SRP(16) = ${s16}`);
  const h = sch(r, 4, 2 * r.k).model;
  assert.ok(h > 0.7 && h < 0.85, `SCH(4, 8) = ${h}`);
  // The offline optimum bounds the online policy from above.
  const lru = policyHitRates(r, 'lru', 2 * r.k);
  const min = policyHitRates(r, 'belady', 2 * r.k);
  assert.ok(min.cold.model >= lru.cold.model && lru.cold.model > 0);
});
