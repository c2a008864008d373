// Tied output projection: a model without output.weight must use token_embd.weight as the output
// matrix. No committed fixture is tied any more (llama.cpp's olmoe loader needs output.weight), so this
// builds fixture models in memory twice: once without output.weight, once with output.weight = a byte
// copy of token_embd.weight. Both compute the same function, so the engine's logits must be identical.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildFixtureModel, fixtureToBuffer, type FixtureModel } from '../fixtures/build.js';
import { ARCHS, type QuantVariant } from '../fixtures/specs.js';
import { loadModel } from '../src/engine/model.js';

const dir = mkdtempSync(join(tmpdir(), 'tied-output-test-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const PROMPT = [34, 400, 335, 287, 82, 71, 76, 64];

function withTensors(model: FixtureModel, tensors: FixtureModel['tensors']): FixtureModel {
  return { ...model, tensors };
}

async function logitsOf(model: FixtureModel, name: string): Promise<Float32Array> {
  const path = join(dir, `${name}.gguf`);
  writeFileSync(path, fixtureToBuffer(model));
  const loaded = await loadModel(path, { threads: 1 });
  try {
    return await loaded.newSequence().eval(PROMPT);
  } finally {
    loaded.close();
  }
}

for (const quant of ['f32', 'q8_0'] as QuantVariant[]) {
  for (const arch of ARCHS) {
    test(`${arch}-${quant}: no output.weight gives the logits of output.weight = token_embd.weight`, async () => {
      const base = buildFixtureModel(arch, quant);
      const embd = base.tensors.find((t) => t.name === 'token_embd.weight');
      assert.ok(embd, 'fixture has token_embd.weight');
      const others = base.tensors.filter((t) => t.name !== 'output.weight');
      assert.ok(others.length < base.tensors.length, 'fixture has its own output.weight');

      const tied = await logitsOf(withTensors(base, others), `${arch}-${quant}-tied`);
      const copied = await logitsOf(withTensors(base, [...others, { ...embd, name: 'output.weight' }]), `${arch}-${quant}-copy`);
      const own = await logitsOf(base, `${arch}-${quant}-own`);

      assert.equal(tied.length, PROMPT.length * embd.dims[1]!);
      assert.ok(tied.every(Number.isFinite), 'finite logits');
      // Same bytes in the output matrix: the same kernels run, so equality is exact.
      assert.deepEqual(tied, copied);
      // The output matrix matters: the fixture's own output.weight gives different logits.
      assert.ok(own.some((v, i) => Math.abs(v - tied[i]!) > 1e-3), 'own output.weight changes the logits');
    });
  }
}
