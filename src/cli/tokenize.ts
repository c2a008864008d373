// `moe-offload tokenize --model <file> --text <text> [--json] [--no-special] [--no-parse-special]`:
// the token ids llama.cpp would give the text with this model's tokenizer, and what each token is.
import type { Command } from 'commander';
import { runCommand } from './run-command.js';
import { GGUFFile } from '../model/gguf.js';
import { GGUFTokenizer, readVocabulary } from '../model/tokenizer/index.js';

interface TokenizeOptions {
  model: string;
  text: string;
  json?: boolean;
  /** false with --no-special: no BOS/EOS. */
  special: boolean;
  /** false with --no-parse-special: special-token text in the input is plain text. */
  parseSpecial: boolean;
}

export interface TokenizeResult {
  ids: number[];
  /** text: the token as output text; control tokens show their vocabulary text. */
  tokens: { id: number; text: string }[];
}

export function tokenizeText(tok: GGUFTokenizer, text: string, addSpecial: boolean, parseSpecial: boolean): TokenizeResult {
  const ids = tok.encode(text, { addSpecial, parseSpecial });
  return { ids, tokens: ids.map((id) => ({ id, text: tok.piece(id, true) })) };
}

/** A string in single quotes with control characters and quotes escaped, so every token fits one line. */
function quote(s: string): string {
  return `'${JSON.stringify(s).slice(1, -1).replaceAll('\\"', '"').replaceAll("'", "\\'")}'`;
}

export function formatTokens(r: TokenizeResult): string {
  const width = Math.max(0, ...r.ids.map((id) => String(id).length));
  const lines = [r.ids.join(' ')];
  for (const t of r.tokens) lines.push(`${String(t.id).padStart(width)}  ${quote(t.text)}`);
  return lines.join('\n');
}

export function registerTokenizeCommand(program: Command): void {
  program
    .command('tokenize')
    .description("Show the token ids of a text under a model's tokenizer (the same ids llama.cpp gives)")
    .requiredOption('--model <file>', 'GGUF model file (only its tokenizer metadata is read)')
    .requiredOption('--text <text>', 'the text to tokenize')
    .option('--json', 'print {"ids": [...], "tokens": [{"id", "text"}]} instead of lines')
    .option('--no-special', 'do not add BOS/EOS even where the model asks for them')
    .option('--no-parse-special', 'treat special-token text such as <|im_start|> as plain text')
    .addHelpText('after', `
Ids are what the model sees: use this to check a prompt template, count tokens, or compare with
llama.cpp's llama-tokenize. Special-token text (<|im_start|>, <s>) becomes one control token unless
--no-parse-special is given; BOS/EOS are added where the file's add_bos/add_eos say so.

Examples:
  $ moe-offload tokenize --model fixtures/qwen3moe-q8_0.gguf --text "Hello, world"
  $ moe-offload tokenize --model fixtures/qwen3moe-q8_0.gguf --text "<|im_start|>user" --json
  $ moe-offload tokenize --model fixtures/llama-q4_0.gguf --text "<s>raw" --no-parse-special --no-special`)
    .action(runCommand((opts: TokenizeOptions) => {
      const f = GGUFFile.open(opts.model);
      let tok: GGUFTokenizer;
      try {
        tok = new GGUFTokenizer(readVocabulary(f));
      } finally {
        f.close();
      }
      const r = tokenizeText(tok, opts.text, opts.special, opts.parseSpecial);
      process.stdout.write(opts.json ? `${JSON.stringify(r)}\n` : `${formatTokens(r)}\n`);
    }));
}
