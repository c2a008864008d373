// The generation loop: evaluate the prompt as one batch, then sample one token at a time until an
// end-of-generation token, the token limit or the end of the context.
import type { Model } from './model.js';
import { logSoftmax, topEntries, type Sampler } from './sampler.js';

export interface GeneratedToken {
  id: number;
  /** log p(id) under the plain softmax of the logits (before temperature and filters). */
  logprob: number;
  /** The most probable tokens under the same softmax, most probable first. */
  top: { id: number; logprob: number }[];
  /** True for an end-of-generation token (it ends the loop and adds no text). */
  eog: boolean;
}

export type StopReason = 'eog' | 'max_tokens' | 'context';

export interface GenerateOptions {
  maxTokens: number;
  sampler: Sampler;
  /** How many `top` entries each token carries (0 = none). */
  topLogprobs?: number;
  /** Called as soon as each token is chosen (streaming). */
  onToken?: (token: GeneratedToken) => void;
}

export interface GenerateResult {
  tokens: GeneratedToken[];
  stop: StopReason;
  promptTokens: number;
  /** Prompt evaluation time. */
  promptMs: number;
  /** Time from the end of the prompt evaluation to the last token. */
  decodeMs: number;
}

export async function generate(model: Model, prompt: readonly number[], o: GenerateOptions): Promise<GenerateResult> {
  const seq = model.newSequence();
  const t0 = performance.now();
  let row = await seq.eval(prompt, { lastOnly: true });
  const t1 = performance.now();

  const tokens: GeneratedToken[] = [];
  let stop: StopReason = 'max_tokens';
  while (tokens.length < o.maxTokens) {
    const id = o.sampler.sample(row);
    const logprobs = logSoftmax(row);
    const top = topEntries(logprobs, o.topLogprobs ?? 0).map((e) => ({ id: e.id, logprob: e.value }));
    const token = { id, logprob: logprobs[id]!, top, eog: model.tokenizer.eog.has(id) };
    tokens.push(token);
    o.onToken?.(token);
    if (token.eog) {
      stop = 'eog';
      break;
    }
    if (tokens.length >= o.maxTokens) break;
    if (seq.length >= model.contextLength) {
      stop = 'context';
      break;
    }
    row = await seq.eval([id], { lastOnly: true });
  }
  return { tokens, stop, promptTokens: prompt.length, promptMs: t1 - t0, decodeMs: performance.now() - t1 };
}
