// Every command's action goes through runCommand, so bad input ends as one line on stderr and exit
// code 2, never a stack trace. Unexpected errors (bugs) exit 1, with the stack only under DEBUG.
import { MoeOffloadError } from '../model/errors.js';

export function errorLine(err: unknown): string {
  if (err instanceof MoeOffloadError) return err.toLine();
  if (err instanceof Error) return err.message;
  return String(err);
}

export function runCommand<A extends unknown[]>(action: (...args: A) => Promise<void> | void): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await action(...args);
    } catch (err) {
      const expected = err instanceof MoeOffloadError;
      process.stderr.write(`moe-offload: ${errorLine(err)}\n`);
      if (!expected && process.env.DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
      process.exitCode = expected ? 2 : 1;
    }
  };
}
