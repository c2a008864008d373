// Offloaded experts (RAM cache + reads + worker pool) give bit-identical logits to the fully resident
// engine for any budget and thread count; bad budgets, read errors and worker crashes are clear errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel, type Model, type OffloadOptions } from '../src/engine/model.js';
import { GGUFFile } from '../src/model/gguf.js';
import { ExpertLocator, EXPERT_MATRICES } from '../src/experts/locator.js';
import type { ExpertOffload } from '../src/experts/offload.js';
import { FileAccessError, MoeOffloadError, UsageError } from '../src/model/errors.js';

const FIXTURES = fileURLToPath(new URL('../../fixtures/', import.meta.url));
const PROMPT = [1, 17, 42, 99, 5, 230, 64, 8, 120, 33, 77, 2];
const DECODE = [50, 9, 180];

/** Logits of the prompt batch followed by the decode steps, concatenated. */
async function run(model: Model): Promise<Float32Array[]> {
  const seq = model.newSequence();
  const out = [await seq.eval(PROMPT)];
  for (const t of DECODE) out.push(await seq.eval([t]));
  return out;
}

/** The smallest budget: one layer's k experts, each padded as the cache lays it out (64-byte matrices). */
function oneLayerMinimum(path: string): { min: number; expertBytes: number; totalSlots: number } {
  const file = GGUFFile.open(path);
  try {
    const loc = new ExpertLocator(file);
    const r = loc.expertRange(0, 0);
    const slot = EXPERT_MATRICES.reduce((s, m) => s + Math.ceil(r[m].byteLength / 64) * 64, 0);
    return { min: slot * loc.expertUsedCount, expertBytes: loc.expertBytes(0, 0), totalSlots: loc.layers * loc.expertCount };
  } finally {
    file.close();
  }
}

function offloadOf(model: Model): ExpertOffload {
  return (model as unknown as { offload: ExpertOffload }).offload;
}

for (const name of ['qwen2moe-q4_0', 'olmoe-q4_k', 'llama-q8_0']) {
  test(`${name}: offloaded logits are bit-identical to resident ones for budgets 100%, 50%, one-layer minimum and 1-3 threads`, async () => {
    const path = join(FIXTURES, `${name}.gguf`);
    const resident = await loadModel(path);
    const want = await run(resident);
    await resident.close();
    const { min, expertBytes } = oneLayerMinimum(path);
    const budgets: [string, number | string][] = [['100%', '100%'], ['50%', '50%'], ['minimum', min]];
    for (const [label, ramCache] of budgets) {
      for (const threads of [1, 2, 3]) {
        if (name !== 'qwen2moe-q4_0' && threads === 2) continue; // keep the run short: full grid on one model
        const opts: OffloadOptions = { ramCache, threads };
        const model = await loadModel(path, { offload: opts });
        try {
          const got = await run(model);
          got.forEach((g, i) => assert.deepEqual(g, want[i], `${label} threads ${threads}: step ${i} differs`));
          const s = model.expertStats()!;
          const off = offloadOf(model);
          assert.equal(off.cache.pinnedCount, 0, 'no pins left');
          off.cache.checkInvariants();
          assert.ok(off.cache.allocatedBytes <= s.ramCacheBytes);
          // every read is one expert's three ranges: each miss, and each prefetch (on by default below 100%)
          assert.equal(s.total.bytesRead, s.total.reads * expertBytes);
          assert.ok(s.total.reads >= s.total.misses);
          if (label === '100%') assert.equal(s.total.reads, s.total.misses, 'no prefetching when every expert fits');
          assert.ok(s.total.hits + s.total.misses > 0);
          if (label === '100%') assert.equal(s.total.evictions, 0, 'everything fits at 100%');
          if (label === 'minimum') assert.ok(s.total.evictions > 0, 'the minimum budget must evict');
        } finally {
          await model.close();
        }
      }
    }
  });
}

test('a budget below one layer\'s experts is a UsageError stating the minimum', async () => {
  const path = join(FIXTURES, 'qwen2moe-q4_0.gguf');
  const { min } = oneLayerMinimum(path);
  await assert.rejects(loadModel(path, { offload: { ramCache: min - 1 } }), (err: Error) => {
    assert.ok(err instanceof UsageError);
    assert.match(err.message, new RegExp(`the minimum is .*\\(${min} bytes\\)`));
    assert.match((err as UsageError).hint ?? '', new RegExp(`--ram-cache ${min}`));
    return true;
  });
  await assert.rejects(loadModel(path, { offload: { ramCache: '10 parsecs' } }), UsageError);
  // exactly the minimum loads
  const ok = await loadModel(path, { offload: { ramCache: min } });
  await ok.close();
});

test('a model file truncated after loading gives a clear read error, not a hang, and leaves no pins', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-offload-'));
  try {
    const path = join(dir, 'copy.gguf');
    copyFileSync(join(FIXTURES, 'olmoe-q4_0.gguf'), path);
    const model = await loadModel(path, { offload: { ramCache: oneLayerMinimum(path).min, threads: 2 } });
    try {
      truncateSync(path, 4096); // expert data gone; the header was read at load time
      await assert.rejects(model.newSequence().eval(PROMPT), (err: Error) => {
        assert.ok(err instanceof FileAccessError, String(err));
        assert.match(err.message, /cannot load layer 0 expert \d+: unexpected end of file reading .*copy\.gguf/);
        return true;
      });
      assert.equal(offloadOf(model).cache.pinnedCount, 0);
      offloadOf(model).cache.checkInvariants();
    } finally {
      await model.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

for (const threads of [1, 2]) {
  test(`${threads} thread(s): a worker crash is retried (same logits); a second failure is a MoeOffloadError`, async () => {
    const path = join(FIXTURES, 'qwen2moe-q4_0.gguf');
    const resident = await loadModel(path);
    const want = await run(resident);
    await resident.close();
    const model = await loadModel(path, { offload: { ramCache: '50%', threads } });
    try {
      const off = offloadOf(model);
      await off.settle(); // (nothing lent yet)
      off.pool.injectFaults(1, 'exit');
      const got = await run(model);
      got.forEach((g, i) => assert.deepEqual(g, want[i], `step ${i}`));
      // With 2 threads the worker fails while it is being lent to the thread pool, which the evaluation
      // does not wait for (this thread computes what no helper takes): the retry may come after it.
      for (let i = 0; i < 400 && model.expertStats()!.retries < 1; i++) await new Promise((r) => setTimeout(r, 5));
      assert.equal(model.expertStats()!.retries, 1);
      await new Promise((r) => setTimeout(r, 150)); // the lent workers are parked: the next evaluation lends again
      off.pool.injectFaults(2, 'exit');
      // The failure is thrown by the evaluation it happens in, or else by the next one: never lost.
      const failing = async (): Promise<void> => {
        for (let i = 0; i < 50; i++) {
          await model.newSequence().eval(PROMPT);
          await new Promise((r) => setTimeout(r, 10));
        }
      };
      await assert.rejects(failing(), (err: Error) => {
        assert.ok(err instanceof MoeOffloadError);
        assert.match(err.message, threads === 1 ? /failed twice computing layer 0 expert \d+.*exited/ : /failed twice computing the layers' experts.*exited/);
        return true;
      });
      assert.equal(off.cache.pinnedCount, 0);
      // and it still works afterwards
      const again = await run(model);
      again.forEach((g, i) => assert.deepEqual(g, want[i], `after failure, step ${i}`));
    } finally {
      await model.close();
    }
  });
}

test('after an evaluation, the serving workers do not keep the process alive (a script that never closes the model exits)', () => {
  const model = new URL('../src/engine/model.js', import.meta.url).href;
  const script = `import { loadModel } from ${JSON.stringify(model)};
    const m = await loadModel(${JSON.stringify(join(FIXTURES, 'qwen2moe-q4_0.gguf'))}, { threads: 2, offload: { ramCache: '100%', threads: 2 } });
    const s = m.newSequence();
    await s.eval([1, 2, 3, 4]);
    await s.eval([5]);
    console.log('evaluated');`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.error, undefined, 'the process did not exit on its own');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /evaluated/);
});

test('a process that exits while its workers are lent to the thread pool (process.exit, an uncaught error) ends, not hangs', () => {
  const model = new URL('../src/engine/model.js', import.meta.url).href;
  for (const [ending, status] of [['process.exit(3);', 3], ['throw new Error("boom");', 1]] as const) {
    const script = `import { loadModel } from ${JSON.stringify(model)};
      const m = await loadModel(${JSON.stringify(join(FIXTURES, 'qwen2moe-q4_0.gguf'))}, { threads: 2, offload: { ramCache: '100%', threads: 2 } });
      await m.newSequence().eval([1, 2, 3, 4]);
      console.log('lent', ${JSON.stringify(new URL('../src/native/index.js', import.meta.url).href)} !== '');
      ${ending}`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.error, undefined, `the process did not end (${ending})`);
    assert.equal(r.status, status, r.stderr);
    assert.match(r.stdout, /lent/);
  }
});
