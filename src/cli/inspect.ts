// `moe-offload inspect --model <file> [--json]`: what a GGUF file holds, read from its header only —
// architecture, hyper-parameters, tokenizer, tensor types, and how many bytes the experts take.
import type { Command } from 'commander';
import { runCommand } from './run-command.js';
import { GGUFFile, getArray, getNumber, getString, type GGUFValue } from '../model/gguf.js';
import { typeName } from '../model/ggml-types.js';
import { formatBytes } from '../model/bytes.js';
import { EXPERT_TENSOR } from '../experts/locator.js';

interface InspectOptions {
  model: string;
  json?: boolean;
}

export interface ModelSummary {
  file: string;
  fileSize: number;
  ggufVersion: number;
  alignment: number;
  architecture: string | null;
  name: string | null;
  /** Every non-array key under `<architecture>.`, without the prefix. */
  hyperparameters: Record<string, number | string | boolean>;
  headDim: number | null;
  tokenizer: { model: string | null; pre: string | null; vocabSize: number | null };
  tensorCount: number;
  /** Tensor count per ggml type name. */
  tensorTypes: Record<string, number>;
  /** Bytes of the stacked expert tensors (names containing `_exps`). */
  expertTensorBytes: number;
  otherTensorBytes: number;
  expertCount: number | null;
  expertUsedCount: number | null;
  /** Layers that have stacked expert tensors. */
  moeLayers: number;
  /** Bytes of one expert (gate + up + down) in one layer; null when layers differ (see min/max). */
  oneExpertBytes: number | null;
  oneExpertBytesMin: number | null;
  oneExpertBytesMax: number | null;
}

function plain(v: GGUFValue): number | string | boolean | undefined {
  if (typeof v === 'bigint') return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
  if (Array.isArray(v)) return undefined;
  return v;
}

export function summarize(f: GGUFFile): ModelSummary {
  const arch = getString(f, 'general.architecture') ?? null;
  const hyperparameters: Record<string, number | string | boolean> = {};
  if (arch) {
    for (const [key, entry] of f.metadata) {
      if (!key.startsWith(`${arch}.`)) continue;
      const v = plain(entry.value);
      if (v !== undefined) hyperparameters[key.slice(arch.length + 1)] = v;
    }
  }
  const num = (suffix: string) => (arch ? getNumber(f, `${arch}.${suffix}`) : undefined);
  const nEmbd = num('embedding_length');
  const nHead = num('attention.head_count');
  const headDim = num('attention.key_length') ?? (nEmbd && nHead ? nEmbd / nHead : undefined);

  const tensorTypes: Record<string, number> = {};
  let expertTensorBytes = 0;
  let otherTensorBytes = 0;
  // One expert's share of each stacked tensor: the tensor's bytes over the number of experts in it.
  const expertCount = num('expert_count') ?? null;
  const perLayer = new Map<number, number>();
  for (const t of f.tensors.values()) {
    const tn = typeName(t.type);
    tensorTypes[tn] = (tensorTypes[tn] ?? 0) + 1;
    if (t.name.includes('_exps')) expertTensorBytes += t.byteLength;
    else otherTensorBytes += t.byteLength;
    const m = EXPERT_TENSOR.exec(t.name);
    if (!m) continue;
    const experts = expertCount ?? t.dims[t.dims.length - 1]!;
    const layer = Number(m[1]);
    perLayer.set(layer, (perLayer.get(layer) ?? 0) + t.byteLength / experts);
  }
  const sizes = [...perLayer.values()];
  const min = sizes.length ? Math.min(...sizes) : null;
  const max = sizes.length ? Math.max(...sizes) : null;

  return {
    file: f.path,
    fileSize: f.fileSize,
    ggufVersion: f.version,
    alignment: f.alignment,
    architecture: arch,
    name: getString(f, 'general.name') ?? null,
    hyperparameters,
    headDim: headDim ?? null,
    tokenizer: {
      model: getString(f, 'tokenizer.ggml.model') ?? null,
      pre: getString(f, 'tokenizer.ggml.pre') ?? null,
      vocabSize: getArray(f, 'tokenizer.ggml.tokens')?.length ?? null,
    },
    tensorCount: f.tensors.size,
    tensorTypes,
    expertTensorBytes,
    otherTensorBytes,
    expertCount,
    expertUsedCount: num('expert_used_count') ?? null,
    moeLayers: perLayer.size,
    oneExpertBytes: min !== null && min === max ? min : null,
    oneExpertBytesMin: min,
    oneExpertBytesMax: max,
  };
}

/** f32 metadata read back as a double shows its float noise (1e-6 -> 9.99999997e-7); 7 digits is f32's precision. */
function showValue(v: number | string | boolean): string {
  return typeof v === 'number' && !Number.isInteger(v) ? String(Number(v.toPrecision(7))) : String(v);
}

function table(rows: [string, string][]): string {
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => (k === '' ? '' : `${k.padEnd(width)}  ${v}`)).join('\n');
}

export function formatSummary(s: ModelSummary): string {
  const rows: [string, string][] = [
    ['file', s.file],
    ['size', formatBytes(s.fileSize)],
    ['GGUF version', `${s.ggufVersion} (alignment ${s.alignment})`],
    ['architecture', s.architecture ?? '(none)'],
  ];
  if (s.name) rows.push(['name', s.name]);
  for (const [k, v] of Object.entries(s.hyperparameters)) rows.push([`  ${k}`, showValue(v)]);
  if (s.headDim !== null) rows.push(['  head dim', String(s.headDim)]);
  const tk = s.tokenizer;
  rows.push(['tokenizer', tk.model || tk.vocabSize !== null
    ? `${tk.model ?? '?'}${tk.pre ? ` (pre: ${tk.pre})` : ''}, ${tk.vocabSize ?? '?'} tokens`
    : '(none)']);
  rows.push(['tensors', `${s.tensorCount}: ${Object.entries(s.tensorTypes).map(([t, n]) => `${n} ${t}`).join(', ')}`]);
  rows.push(['expert tensors', formatBytes(s.expertTensorBytes)]);
  rows.push(['other tensors', formatBytes(s.otherTensorBytes)]);
  if (s.moeLayers > 0) {
    rows.push(['experts', `${s.expertCount ?? '?'} per layer, ${s.expertUsedCount ?? '?'} used per token, ${s.moeLayers} MoE layers`]);
    rows.push(['one expert', s.oneExpertBytes !== null
      ? formatBytes(s.oneExpertBytes)
      : `${formatBytes(s.oneExpertBytesMin!)} to ${formatBytes(s.oneExpertBytesMax!)} (differs by layer)`]);
  }
  return table(rows);
}

export function registerInspectCommand(program: Command): void {
  program
    .command('inspect')
    .description('Show what a GGUF model file holds: architecture, hyper-parameters, tokenizer, tensor types, expert sizes')
    .requiredOption('--model <file>', 'GGUF model file')
    .option('--json', 'print one JSON object instead of a table')
    .addHelpText('after', `
Reads only the file's header, so it is instant even on a 100 GB model. "one expert" is the bytes of
one expert's gate, up and down matrices in one layer: the unit the RAM cache holds and reads from disk;
"expert tensors" is what offloading keeps out of memory, "other tensors" what always stays resident.

Examples:
  $ moe-offload inspect --model fixtures/olmoe-q4_k.gguf
  $ moe-offload inspect --model ~/models/OLMoE-1B-7B-0924-Q4_K_M.gguf --json`)
    .action(runCommand((opts: InspectOptions) => {
      const f = GGUFFile.open(opts.model);
      try {
        const s = summarize(f);
        process.stdout.write(opts.json ? `${JSON.stringify(s)}\n` : `${formatSummary(s)}\n`);
      } finally {
        f.close();
      }
    }));
}
