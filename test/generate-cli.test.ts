// `moe-offload generate` end to end: the real launcher spawned on the fixture models.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseInteger, parseNumber } from '../src/cli/option-parsers.js';
import { UsageError } from '../src/model/errors.js';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const fixture = (name: string) => join(repoRoot, 'fixtures', name);

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/moe-offload.js'), 'generate', ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** run(), without waiting: the bad-value cases start their processes side by side. */
function runAsync(...args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(repoRoot, 'bin/moe-offload.js'), 'generate', ...args], { encoding: 'utf8' }, (error, out, err) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : null) : 0, out, err });
    });
  });
}

interface Output {
  text: string;
  tokens: { id: number; text: string; logprob: number; top: { id: number; logprob: number }[] }[];
  stop: string;
  seed: number;
  stats: { prompt_tokens: number; generated_tokens: number; prompt_ms: number; decode_ms: number; tokens_per_s: number | null };
}

function json(...args: string[]): Output {
  const r = run(...args, '--json');
  assert.equal(r.code, 0, r.err);
  return JSON.parse(r.out) as Output;
}

test('--json: text, per-token logprobs with sorted top alternatives, stats', () => {
  const o = json('--model', fixture('olmoe-q8_0.gguf'), '--prompt', 'hi', '--max-tokens', '5', '--temperature', '0', '--top-logprobs', '3');
  assert.equal(typeof o.text, 'string');
  assert.ok(o.tokens.length >= 1 && o.tokens.length <= 5);
  assert.equal(o.stats.generated_tokens, o.tokens.length);
  assert.ok(o.stats.prompt_tokens >= 1);
  assert.ok(o.stats.prompt_ms >= 0 && o.stats.decode_ms >= 0);
  for (const t of o.tokens) {
    assert.ok(Number.isInteger(t.id));
    assert.equal(typeof t.text, 'string');
    assert.ok(t.logprob <= 0);
    assert.equal(t.top.length, 3);
    for (let i = 1; i < t.top.length; i++) assert.ok(t.top[i - 1]!.logprob >= t.top[i]!.logprob);
    assert.ok(t.top.every((e) => e.logprob <= 0));
    // greedy: the chosen token is the most probable one
    assert.equal(t.top[0]!.id, t.id);
    assert.equal(t.top[0]!.logprob, t.logprob);
  }
  assert.ok(['eog', 'max_tokens', 'context'].includes(o.stop));
  if (o.stop === 'max_tokens') assert.equal(o.tokens.length, 5);
});

test('greedy is deterministic across runs; the streamed text equals the JSON text', () => {
  const args = ['--model', fixture('qwen3moe-q4_0.gguf'), '--prompt', 'Call me Ishmael.', '--max-tokens', '8', '--temperature', '0'];
  const a = json(...args);
  const b = json(...args, '--threads', '2');
  assert.deepEqual(a.tokens.map((t) => t.id), b.tokens.map((t) => t.id));
  const plain = run(...args);
  assert.equal(plain.code, 0, plain.err);
  assert.equal(plain.out, `${a.text}\n`);
});

test('a fixed seed reproduces a sampled run; --max-tokens is respected; the default model works', () => {
  const args = ['--prompt', 'hi', '--max-tokens', '6', '--temperature', '1.5', '--top-k', '0', '--top-p', '1', '--min-p', '0', '--seed', '7'];
  const a = json(...args);
  const b = json(...args);
  assert.equal(a.seed, 7);
  assert.deepEqual(a.tokens.map((t) => t.id), b.tokens.map((t) => t.id));
  assert.ok(a.tokens.length <= 6);
  const one = json('--prompt', 'hi', '--max-tokens', '1');
  assert.equal(one.tokens.length, 1);
  assert.equal(one.tokens[0]!.top.length, 0); // --top-logprobs defaults to 0
});

test('bad values exit 2 with one line that names the option and its range', async () => {
  const cases: [string[], RegExp][] = [
    [['--max-tokens', '0'], /--max-tokens.*1/],
    [['--max-tokens', '2.5'], /--max-tokens/],
    [['--temperature', '-1'], /--temperature/],
    [['--top-p', '2'], /--top-p.*0.*1/],
    [['--min-p', 'abc'], /--min-p/],
    [['--top-k', '-3'], /--top-k/],
    [['--seed', 'x'], /--seed/],
    [['--threads', '0'], /--threads/],
    [['--top-logprobs', '1000'], /--top-logprobs/],
    // The same wording for every number: the option, the value, why, and what is accepted.
    [['--threads', 'abc'], /bad --threads 'abc': not a whole number; give a whole number from 1 to 1024/],
    [['--temperature', '-1'], /bad --temperature '-1': less than 0; give a number from 0/],
    [['--temperature', 'Infinity'], /bad --temperature 'Infinity': not a number/],
    [['--max-tokens', '1.5'], /bad --max-tokens '1\.5': not a whole number/],
    [['--top-k', '1e3'], /bad --top-k '1e3'/],
    [['--seed', '99999999999999999999'], /bad --seed .*more than 4294967295/],
    // A malformed --ram-cache is caught before the model loads (a percentage is resolved after).
    [['--ram-cache', '512XiB'], /bad --ram-cache '512XiB': unknown unit/],
    [['--ram-cache', '101%'], /bad --ram-cache '101%'.*percentage/],
    [['--ram-cache', 'lots', '--model', join(repoRoot, 'no-such-model.gguf')], /bad --ram-cache 'lots'/],
    [['--model', join(repoRoot, 'no-such-model.gguf')], /not found/],
    [['--kv-type', 'q8_0'], /bad --kv-type 'q8_0'.*f16.*f32/],
  ];
  const results = await Promise.all(cases.map(([args]) => runAsync('--prompt', 'hi', ...args)));
  for (const [i, [args, pattern]] of cases.entries()) {
    const r = results[i]!;
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.equal(r.out, '');
    assert.equal(r.err.trimEnd().split('\n').length, 1, r.err);
    assert.match(r.err, pattern);
  }
  const noPrompt = run();
  assert.equal(noPrompt.code, 2);
  assert.match(noPrompt.err, /--prompt/);
});

test('--kv-type f32 and f16 (the default) both generate, their log-probabilities apart by f16 rounding of K/V only', () => {
  const args = ['--model', fixture('llama-f32.gguf'), '--prompt', 'hello', '--max-tokens', '4', '--temperature', '0'];
  const f32 = json(...args, '--kv-type', 'f32');
  const f16 = json(...args);
  assert.ok(f32.tokens.length >= 1 && f16.tokens.length >= 1);
  // Greedy on the f32 fixture: the first token's log-probability moves by f16 rounding only, but moves
  // (the option reaches the cache).
  const [a, b] = [f32.tokens[0]!.logprob, f16.tokens[0]!.logprob];
  assert.ok(Math.abs(a - b) < 1e-2, `${a} vs ${b}`);
  assert.notEqual(a, b);
});

test('an empty prompt: fine when the model adds BOS (llama fixture), a usage error when nothing is left', () => {
  const withBos = json('--model', fixture('llama-q8_0.gguf'), '--prompt', '', '--max-tokens', '2', '--temperature', '0');
  assert.equal(withBos.stats.prompt_tokens, 1);
  const r = run('--model', fixture('qwen2moe-q8_0.gguf'), '--prompt', '');
  assert.equal(r.code, 2);
  assert.match(r.err, /prompt is empty/);
});

test('--help teaches the options with examples', () => {
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/moe-offload.js'), 'generate', '--help'], { encoding: 'utf8' });
  assert.equal(r.status, 0);
  for (const flag of ['--model', '--prompt', '--max-tokens', '--temperature', '--top-k', '--top-p', '--min-p', '--seed', '--threads', '--json', '--top-logprobs', 'Examples']) {
    assert.ok(r.stdout.includes(flag), flag);
  }
});

test('option parsers: accepted forms and the UsageError for the rest (in process)', () => {
  assert.equal(parseNumber('--t', ' 1e-1 ', { min: 0, max: 1 }), 0.1);
  assert.equal(parseNumber('--t', '.5', { min: 0, max: 1 }), 0.5);
  assert.equal(parseInteger('--n', '+7', 0, 10), 7);
  for (const [f, why] of [
    [() => parseNumber('--t', '0x10', { min: 0, max: 100 }), /not a number/],
    [() => parseNumber('--t', '', { min: 0, max: 100 }), /not a number/],
    [() => parseNumber('--t', '0', { min: 0, max: 1, minExclusive: true }), /not above 0/],
    [() => parseInteger('--n', '11', 0, 10), /more than 10; give a whole number from 0 to 10/],
    [() => parseInteger('--n', '9007199254740993', 0), /more than/],
  ] as [() => unknown, RegExp][]) {
    assert.throws(f, (e: unknown) => e instanceof UsageError && why.test(e.toLine()) && /^bad --[tn] '/.test(e.message));
  }
});

test('prefetching is on by default when --ram-cache cannot hold every expert, off with --no-prefetch or when all fit; same text', () => {
  type WithPrefetch = Output & { stats: { experts: { prefetch: { issued: number; used: number } } } };
  const args = ['--model', fixture('olmoe-q8_0.gguf'), '--prompt', 'hello there', '--max-tokens', '6', '--temperature', '0', '--threads', '2'];
  const half = json(...args, '--ram-cache', '40%') as WithPrefetch;
  const off = json(...args, '--ram-cache', '40%', '--no-prefetch') as WithPrefetch;
  const all = json(...args, '--ram-cache', '100%') as WithPrefetch;
  assert.ok(half.stats.experts.prefetch.issued > 0, 'prefetches issued by default');
  assert.equal(off.stats.experts.prefetch.issued, 0);
  assert.equal(all.stats.experts.prefetch.issued, 0, 'nothing to prefetch when every expert fits');
  assert.equal(half.text, off.text);
  assert.equal(half.text, all.text);
});
