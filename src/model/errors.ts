// Errors the user can do something about. Each carries a message that names the problem and, where we
// know it, what to do next; the CLI prints them as one line on stderr and exits with code 2.

export class MoeOffloadError extends Error {
  /** What the user can do about it, appended to the message when printed. */
  readonly hint: string | undefined;
  constructor(message: string, hint?: string) {
    super(message);
    this.name = new.target.name;
    this.hint = hint;
  }
  /** The one line the CLI prints. */
  toLine(): string {
    return this.hint ? `${this.message}; ${this.hint}` : this.message;
  }
}

/** A file that is not valid GGUF: bad magic, truncated, inconsistent offsets. */
export class GGUFFormatError extends MoeOffloadError {}

/** Valid input that this tool cannot handle: an unknown tensor type, architecture, tokenizer. */
export class UnsupportedError extends MoeOffloadError {}

/** A GGUF file that lacks a tensor or metadata key the architecture needs, or has the wrong shape. */
export class ModelError extends MoeOffloadError {}

/** A missing or unreadable file. */
export class FileAccessError extends MoeOffloadError {}

/** Bad command-line values (sizes, ranges). */
export class UsageError extends MoeOffloadError {}
