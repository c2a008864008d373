// `moe-offload generate`: complete a prompt with a model, streaming the text as it is made, or one
// JSON object with per-token log-probabilities and timings (--json).
import { availableParallelism } from 'node:os';
import type { Command } from 'commander';
import { runCommand } from './run-command.js';
import { checkSizeForm, parseNonNegativeInt, parseNumber, parsePositiveInt } from './option-parsers.js';
import { UsageError } from '../model/errors.js';
import { defaultModelPath } from '../model/default-model.js';
import { loadModel } from '../engine/model.js';
import type { KVType } from '../engine/kv-cache.js';
import { Sampler } from '../engine/sampler.js';
import { generate } from '../engine/generator.js';
import { DEFAULT_RAM_CACHE_HELP, SIZE_FORMS } from '../experts/size.js';
import { formatExpertStats } from '../experts/stats.js';
import { addTraceOption, startTrace, TRACE_HELP } from './trace-option.js';

/** Options as commander hands them over (numbers still strings, validated below). */
interface RawGenerateOptions {
  model?: string;
  prompt?: string;
  maxTokens: string;
  temperature: string;
  topK: string;
  topP: string;
  minP: string;
  seed?: string;
  threads?: string;
  topLogprobs: string;
  json?: boolean;
  ramCache?: string;
  directIo?: boolean;
  prefetch?: boolean;
  kvType: string;
  stats?: boolean;
  trace?: string;
}

export interface GenerateOptions {
  model: string;
  prompt: string;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  seed: number | undefined;
  threads: number;
  topLogprobs: number;
  json: boolean;
  /** --ram-cache as given (parsed against the model's expert bytes once it is open); undefined = default. */
  ramCache: string | undefined;
  directIo: boolean;
  /** --prefetch / --no-prefetch: read the next layer's predicted experts while this layer computes (undefined: the default, on when the cache cannot hold every expert). */
  prefetch: boolean | undefined;
  /** --kv-type: how the attention's K and V are stored. */
  kvType: KVType;
  stats: boolean;
  /** --trace FILE: record the routing there. */
  trace: string | undefined;
}

function parseKVType(text: string): KVType {
  if (text === 'f16' || text === 'f32') return text;
  throw new UsageError(`bad --kv-type '${text}': not a cache type`, 'give f16 (the default) or f32');
}

export function parseGenerateOptions(raw: RawGenerateOptions): GenerateOptions {
  if (raw.prompt === undefined) throw new UsageError('--prompt is required', 'pass the text to continue, e.g. --prompt "Once upon a time"');
  // A percentage needs the model's expert bytes, so the size is resolved once the model is open; a
  // malformed one is reported now, before the model loads.
  if (raw.ramCache !== undefined) checkSizeForm('--ram-cache', raw.ramCache);
  return {
    model: raw.model ?? defaultModelPath(),
    prompt: raw.prompt,
    maxTokens: parsePositiveInt('--max-tokens', raw.maxTokens, 1_000_000),
    temperature: parseNumber('--temperature', raw.temperature, { min: 0, max: 100, describe: 'from 0 (greedy) to 100' }),
    topK: parseNonNegativeInt('--top-k', raw.topK, 1_000_000_000),
    topP: parseNumber('--top-p', raw.topP, { min: 0, max: 1, describe: 'from 0 to 1 (1 = off)' }),
    minP: parseNumber('--min-p', raw.minP, { min: 0, max: 1, describe: 'from 0 (off) to 1' }),
    seed: raw.seed === undefined ? undefined : parseNonNegativeInt('--seed', raw.seed, 4294967295),
    threads: raw.threads === undefined ? availableParallelism() : parsePositiveInt('--threads', raw.threads, 1024),
    topLogprobs: parseNonNegativeInt('--top-logprobs', raw.topLogprobs, 100),
    json: raw.json ?? false,
    ramCache: raw.ramCache,
    directIo: raw.directIo ?? false,
    prefetch: raw.prefetch,
    kvType: parseKVType(raw.kvType),
    stats: raw.stats ?? false,
    trace: raw.trace,
  };
}

async function runGenerate(o: GenerateOptions): Promise<void> {
  // Experts always go through the offloading path; with the default budget they usually all fit.
  // The dispatcher reports where each expert came from (tier, stall), so the trace records tiers.
  const trace = startTrace(o.trace, { tiers: true });
  const model = await loadModel(o.model, {
    threads: o.threads, kvType: o.kvType, onRoute: trace?.onRoute,
    offload: { ramCache: o.ramCache, directIo: o.directIo, prefetch: o.prefetch, threads: o.threads, onServe: trace?.onServe, onPrefetch: trace?.onPrefetch },
  });
  try {
    const tok = model.tokenizer;
    const prompt = tok.encode(o.prompt, { addSpecial: true });
    if (prompt.length === 0) {
      throw new UsageError('the prompt is empty and this model adds no BOS token, so there is nothing to continue from',
        'give some text with --prompt');
    }
    trace?.begin(o.model, prompt);
    const sampler = new Sampler({ temperature: o.temperature, topK: o.topK, topP: o.topP, minP: o.minP, seed: o.seed });
    const decoder = tok.createDecoder();
    const stream = !o.json;
    // `generate ... | head` closes the pipe early: stop quietly instead of dying on EPIPE.
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(0);
      throw err;
    });
    const result = await generate(model, prompt, {
      maxTokens: o.maxTokens,
      sampler,
      topLogprobs: o.topLogprobs,
      onToken: stream ? (t) => { if (!t.eog) process.stdout.write(decoder.push(t.id)); } : undefined,
    });
    trace?.close();
    if (o.stats) {
      const s = model.expertStats();
      if (s) process.stderr.write(`${formatExpertStats(s)}\n`);
    }
    if (stream) {
      process.stdout.write(`${decoder.flush()}\n`);
      return;
    }
    const kept = result.tokens.filter((t) => !t.eog).map((t) => t.id);
    const decodeS = result.decodeMs / 1000;
    const out = {
      text: tok.decode(kept),
      tokens: result.tokens.map((t) => ({ id: t.id, text: tok.decode([t.id]), logprob: t.logprob, top: t.top })),
      stop: result.stop,
      seed: sampler.seed,
      stats: {
        prompt_tokens: result.promptTokens,
        generated_tokens: result.tokens.length,
        prompt_ms: round(result.promptMs),
        decode_ms: round(result.decodeMs),
        tokens_per_s: decodeS > 0 ? round(result.tokens.length / decodeS) : null,
        experts: model.expertStats(),
      },
    };
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    await model.close();
  }
}

function round(v: number): number {
  return Math.round(v * 100) / 100;
}

const HELP = `
The prompt is encoded with the model's tokenizer (BOS added when the model asks for it), evaluated as
one batch, then tokens are sampled one at a time until an end-of-generation token or --max-tokens.
Sampling follows llama.cpp's chain: top-k, then top-p, then min-p, then temperature, then a draw from
a PRNG seeded by --seed (so a seed reproduces a run). --temperature 0 always takes the most probable
token. Without --model, a small built-in model with random weights is used: it shows the tool working,
its text is noise.

Examples:
  $ moe-offload generate --prompt "Call me Ishmael."
  $ moe-offload generate --model olmoe-1b-7b-q4_k_m.gguf --prompt "The capital of France is" --temperature 0
  $ moe-offload generate --model qwen3-30b-a3b-q4_k_m.gguf --prompt "Hi" --max-tokens 32 --seed 1 --json --top-logprobs 5

--json prints one object: {"text", "tokens": [{"id", "text", "logprob", "top": [{"id", "logprob"}]}],
"stop", "seed", "stats": {"prompt_tokens", "generated_tokens", "prompt_ms", "decode_ms", "tokens_per_s"}};
logprob and top come from the plain softmax of the logits, before temperature and filters.
"stats.experts" holds the offloading counters (as --stats prints them): ramCacheBytes, threads,
retries, and per layer and in "total": hits, misses, evictions, reads, bytesRead, readMs (summed over
reads), stallMs (waiting on reads with no expert computing), tasks, computeMs (time computing experts:
the worker's with --threads 1, else the wall time of the batches on all threads),
wallMs; "prefetch" (when prefetching): issued, used, wasted, bytes.

Experts are read from the file on demand into a RAM cache of --ram-cache bytes and computed on
--threads threads (this one and --threads - 1 workers); peak memory stays under the resident
weights + --ram-cache + a fixed overhead of 96 MiB + 16 MiB per worker thread (measured by the test suite).
--ram-cache takes ${SIZE_FORMS}. Its default: ${DEFAULT_RAM_CACHE_HELP}, minus the resident weights,
and at most all experts. A budget below one layer's experts in use is an error that states the minimum.
Prefetching (on by default when --ram-cache cannot hold every expert; --no-prefetch turns it off)
guesses each next layer's experts (its router applied to the hidden state early) and reads the more
probable half of them, mostly right, while the current layer computes, so the disk keeps reading while
attention and routing run. The output is the same either way. --trace records each batch's
prefetches, and simulate --policy lru replays them: its hits, misses, bytes read and prefetch counts
match this run's with the same --ram-cache.

${TRACE_HELP}`;

export function registerGenerateCommand(program: Command): void {
  const cmd = program
    .command('generate')
    .description('Continue a prompt with a Mixture-of-Experts model from a GGUF file')
    .option('--model <file>', 'GGUF model file (default: the small built-in model)')
    .option('--prompt <text>', 'the text to continue (required)')
    .option('--max-tokens <n>', 'stop after this many new tokens (1 or more)', '128')
    .option('--temperature <t>', 'randomness: 0 = always the most probable token; higher = more varied', '0.8')
    .option('--top-k <k>', 'sample only among the k most probable tokens (0 = no limit)', '40')
    .option('--top-p <p>', 'keep the most probable tokens that together reach probability p (1 = off)', '0.95')
    .option('--min-p <p>', 'drop tokens less than p times as probable as the best one (0 = off)', '0.05')
    .option('--seed <n>', 'random seed, 0 to 4294967295 (default: a random one; --json reports it)')
    .option('--threads <n>', 'compute threads: this thread plus n-1 expert workers share each layer\'s experts, and dense products and attention split over n (default: all cores)')
    .option('--top-logprobs <n>', 'with --json: list the n most probable alternatives per token (0 to 100)', '0')
    .option('--json', 'print one JSON object with the text, per-token log-probabilities and timings')
    .option('--ram-cache <size>', 'RAM for cached experts, e.g. 512MiB, 4GiB or 25% of all expert bytes (default: free memory, see below)')
    .option('--direct-io', 'read experts with O_DIRECT, so the page cache does not hold a second copy')
    .option('--prefetch', 'read the next layer\'s predicted experts while this layer computes (the default when --ram-cache cannot hold every expert)')
    .option('--no-prefetch', 'do not prefetch (the live cache then counts what simulate replays)')
    .option('--kv-type <type>', 'how the attention cache stores keys and values: f16 (half the memory, as llama.cpp) or f32', 'f16')
    .option('--stats', 'print expert cache and timing statistics to stderr at the end');
  addTraceOption(cmd)
    .addHelpText('after', HELP)
    .action(runCommand(async (raw: RawGenerateOptions) => {
      await runGenerate(parseGenerateOptions(raw));
    }));
}
