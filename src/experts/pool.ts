// The CPU expert pool: `threads` piscina workers, each computing one task at a time (one expert, or a
// batch of one layer's experts) from the shared slabs (worker.ts). A task that fails (its worker died, or threw) is retried once on a fresh
// or another worker; a second failure is a MoeOffloadError. piscina replaces dead workers itself.
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { MoeOffloadError } from '../model/errors.js';
import type { BatchResult, ExpertBatchTask, ExpertResult, ExpertTask } from './worker.js';

export type { BatchExpert, BatchResult, ExpertBatchTask, ExpertResult, ExpertTask, MatrixInSlab } from './worker.js';

export interface ExpertPoolOptions {
  /** Worker threads (default 1). */
  threads?: number;
}

export class ExpertPool {
  readonly threads: number;
  /** Failed attempts that were retried (for stats and tests). */
  retries = 0;
  private readonly piscina: Piscina<ExpertTask | ExpertBatchTask, ExpertResult | BatchResult>;
  private fault: { attempts: number; kind: 'exit' | 'throw' } | undefined;
  private closed = false;

  constructor(opts: ExpertPoolOptions = {}) {
    this.threads = Math.max(1, Math.floor(opts.threads ?? 1));
    this.piscina = new Piscina<ExpertTask | ExpertBatchTask, ExpertResult | BatchResult>({
      // dist/src/experts/pool.js -> dist/src/experts/worker.js
      filename: fileURLToPath(new URL('./worker.js', import.meta.url)),
      minThreads: this.threads,
      maxThreads: this.threads,
      idleTimeout: 60_000,
      // Workers must not keep their own event loops busy-waiting (Atomics.wait) on a 2-core machine.
      atomics: 'disabled',
    });
  }

  /**
   * Computes one expert's FFN. `what` names the task in errors (e.g. 'layer 3 expert 12').
   * x is not transferred (it is usually on a SharedArrayBuffer), so a retry can reuse it.
   */
  run(task: ExpertTask, what = 'an expert'): Promise<ExpertResult> {
    return this.submit(task, what) as Promise<ExpertResult>;
  }

  /**
   * Computes several experts in one task (one message each way), writing their outputs into task.out.
   * Retried as a whole, like run(): a batch writes only its own rows of out, so a retry redoes them.
   */
  runBatch(task: ExpertBatchTask, what = 'experts'): Promise<BatchResult> {
    return this.submit(task, what) as Promise<BatchResult>;
  }

  private async submit<T extends ExpertTask | ExpertBatchTask>(task: T, what: string): Promise<ExpertResult | BatchResult> {
    if (this.closed) throw new MoeOffloadError(`the expert worker pool is closed (computing ${what})`);
    const fault = this.fault;
    this.fault = undefined;
    const attempt = (n: number): T => (fault && n <= fault.attempts ? { ...task, fault: fault.kind } : task);
    try {
      return await this.piscina.run(attempt(1));
    } catch (first) {
      if (this.closed) throw first;
      this.retries++;
      try {
        return await this.piscina.run(attempt(2));
      } catch (second) {
        throw new MoeOffloadError(
          `an expert worker failed twice computing ${what}: ${messageOf(second)} (first attempt: ${messageOf(first)})`,
          'the machine may be out of memory; try fewer --threads or a smaller --ram-cache');
      }
    }
  }

  /** Tests only: the next task run() is given fails its first `attempts` attempts (1: the retry succeeds; 2: it fails). */
  injectFaults(attempts: number, kind: 'exit' | 'throw'): void {
    this.fault = { attempts, kind };
  }

  /** Workers alive now. */
  get workerCount(): number { return this.piscina.threads.length; }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.piscina.destroy();
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
