// The model `generate` uses when --model is not given: a small fixture shipped inside the package, so
// the tool runs out of the box (its text is noise: the weights are random, see fixtures/README.md).
import { fileURLToPath } from 'node:url';

export const DEFAULT_MODEL_FILE = 'qwen3moe-q8_0.gguf';

/** Absolute path of the embedded default model (from dist/src/model/ up to the package root). */
export function defaultModelPath(): string {
  return fileURLToPath(new URL(`../../../fixtures/${DEFAULT_MODEL_FILE}`, import.meta.url));
}
