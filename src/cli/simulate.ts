// `moe-offload simulate --trace T --ram-cache SIZE --policy lru|lfu|belady`: replay a routing trace
// against one RAM cache shared by all layers; hit rates and the expert bytes the misses would read. With
// --policy lru, a trace's recorded prefetches are replayed as the live cache did them (trace/simulate.ts).
import type { Command } from 'commander';
import { runCommand } from './run-command.js';
import { UsageError } from '../model/errors.js';
import { formatBytes } from '../model/bytes.js';
import { SIZE_FORMS } from '../experts/size.js';
import { CACHE_POLICIES, type CachePolicy } from '../trace/metrics.js';
import { readTraceBatchInfo, replayTrace } from '../trace/simulate.js';
import { tokenCount } from '../trace/routing.js';
import { addTraceInputOptions, loadTraceInput, type TraceInputOptions } from './report.js';
import { checkSizeForm, parsePositiveInt, parseSizeOption } from './option-parsers.js';

interface SimulateOptions extends TraceInputOptions {
  ramCache?: string;
  cacheExperts?: string;
  policy: string;
}

export function registerSimulateCommand(program: Command): void {
  const cmd = program
    .command('simulate')
    .description('Replay a routing trace against a RAM cache: hit rate and bytes read');
  addTraceInputOptions(cmd, 'needed for --ram-cache')
    .option('--ram-cache <size>', `RAM cache size, as for generate: ${SIZE_FORMS}`)
    .option('--cache-experts <n>', 'RAM cache size in experts per layer (the cache holds n x layers experts) instead of bytes')
    .option('--policy <policy>', 'replacement policy: lru (the live cache), lfu, or belady (offline optimum)', 'lru')
    .addHelpText('after', `
With --policy lru, a trace recorded by generate --trace is replayed batch by batch as the live cache saw
it, prefetches included (generate prefetches by default when --ram-cache cannot hold every expert): hits,
misses, bytes read and the prefetch counts then equal the live run's with the same --ram-cache. lfu and
belady have no live counterpart and ignore recorded prefetches (a note says so).

Examples:
  $ moe-offload simulate --trace run.trace.jsonl.gz --ram-cache 4GiB
  $ moe-offload simulate --trace run.trace.jsonl.gz --ram-cache 25% --policy belady --json
  $ moe-offload simulate --trace routing.jsonl --cache-experts 16 --policy lfu`)
    .action(runCommand(async (opts: SimulateOptions) => {
      const policy = opts.policy.toLowerCase() as CachePolicy;
      if (!CACHE_POLICIES.includes(policy)) throw new UsageError(`unknown --policy '${opts.policy}'`, `give one of ${CACHE_POLICIES.join(', ')}`);
      if ((opts.ramCache === undefined) === (opts.cacheExperts === undefined)) {
        throw new UsageError('give exactly one of --ram-cache SIZE and --cache-experts N', 'e.g. --ram-cache 4GiB, --ram-cache 25% or --cache-experts 16');
      }
      const perLayer = opts.cacheExperts !== undefined ? parsePositiveInt('--cache-experts', opts.cacheExperts) : undefined;
      if (opts.ramCache !== undefined) checkSizeForm('--ram-cache', opts.ramCache);
      const { trace: t, expertBytes: givenBytes } = await loadTraceInput(opts);
      const r = t.routing;
      const expertBytes = givenBytes ?? t.header?.expert_bytes ?? null;
      // What one expert takes in the live cache (matrices padded to 64 bytes): the header's slot_bytes,
      // so a budget gives the same number of slots as generate's HostCache; else the expert's bytes.
      const slotBytes = givenBytes ?? t.header?.slot_bytes ?? expertBytes;
      let capacity: number;
      let budgetBytes: number | null = null;
      if (perLayer !== undefined) capacity = perLayer * r.layers;
      else {
        if (slotBytes === null) {
          throw new UsageError(`--ram-cache ${opts.ramCache} needs the size of an expert, which this trace does not record`, 'give --expert-bytes B, or --cache-experts N');
        }
        // As the live run (experts/offload.ts resolveRamCache): percent of all experts' slots, at most all.
        const all = r.layers * r.experts * slotBytes;
        budgetBytes = Math.min(parseSizeOption('--ram-cache', opts.ramCache!, all), all);
        capacity = Math.floor(budgetBytes / slotBytes);
        if (capacity < 1) throw new UsageError(`--ram-cache ${opts.ramCache} holds no expert (${formatBytes(slotBytes)} each)`, 'give a larger size');
      }
      capacity = Math.min(capacity, r.layers * r.experts);
      const info = await readTraceBatchInfo(opts.trace);
      const res = await replayTrace(r, policy, capacity, expertBytes, info);
      if (info.prefetches && !res.prefetch) {
        process.stderr.write(`note: the trace records prefetches; ${policy === 'lru' ? 'without batches they' : `--policy ${policy} has no prefetching, so they`} are not replayed: the counts are those of a run without prefetch\n`);
      }
      if (res.prefetch && res.prefetch.skipped > 0) {
        process.stderr.write(`note: ${res.prefetch.skipped} recorded prefetch reads found the replayed cache in another state (the expert cached, or no slot to free): the replay differs from the live run there\n`);
      }
      if (res.oversizedBatchLayers > 0) {
        process.stderr.write(`note: ${res.oversizedBatchLayers} batch-layers route to more distinct experts than the cache's ${capacity}; the live run does them in waves whose order depends on timing, so for them the replay is an approximation\n`);
      }
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ trace: opts.trace, budgetBytes, expertBytes, slotBytes, ...res })}\n`);
        return;
      }
      const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
      const lines = [
        `trace ${opts.trace}: ${r.sequences.length} sequences, ${tokenCount(r)} tokens, ${r.layers} layers x ${r.experts} experts, top-${r.k}`,
        `cache: ${capacity} experts shared by all layers (${(capacity / r.layers).toFixed(1)} per layer)${budgetBytes !== null ? `, budget ${formatBytes(budgetBytes)}` : ''}; policy ${policy}; each sequence starts empty${res.perBatch ? '; replayed per batch, as the live cache' : ''}`,
        `hit rate: ${pct(res.hitRate.cold)} cold (cache starts empty, as a real run), ${pct(res.hitRate.warm)} warm (first uses excused while the cache has room)`,
        `misses: ${res.misses} of ${res.accesses} expert lookups${res.bytesRead !== null ? `; bytes read: ${formatBytes(res.bytesRead)}${res.prefetch ? ' (misses and prefetches)' : ''}` : ' (give --expert-bytes for bytes read)'}`,
      ];
      if (res.prefetch) {
        const p = res.prefetch;
        lines.push(`prefetch (replayed as recorded): ${p.issued} issued, ${p.used} used, ${p.wasted} wasted${p.issued > 0 ? ` (${pct(p.used / p.issued)} used)` : ''}; a used prefetch counts as a hit`);
      }
      process.stdout.write(`${lines.join('\n')}\n`);
    }));
}
