// The CPU expert pool: `threads` piscina workers, each computing one task at a time (one expert, or a
// batch of one layer's experts) from the shared slabs (worker.ts). A task that fails (its worker died, or threw) is retried once on a fresh
// or another worker; a second failure is a MoeOffloadError. piscina replaces dead workers itself.
import { fileURLToPath } from 'node:url';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { MoeOffloadError } from '../model/errors.js';
import { SharedClaims, type BatchResult, type ExpertBatchTask, type ExpertResult, type ExpertTask, type ServedBatch, type ServeTask } from './worker.js';

export type { BatchExpert, BatchResult, ExpertBatchTask, ExpertResult, ExpertTask, MatrixInSlab } from './worker.js';

export interface ExpertPoolOptions {
  /** Worker threads (default 1). */
  threads?: number;
}

export class ExpertPool {
  readonly threads: number;
  /** Failed attempts that were retried (for stats and tests). */
  retries = 0;
  private readonly piscina: Piscina<ExpertTask | ExpertBatchTask | ServeTask, ExpertResult | BatchResult>;
  private readonly lanes: ServingLane[] = [];
  private parkTimer: NodeJS.Timeout | undefined;
  private fault: { attempts: number; kind: 'exit' | 'throw' } | undefined;
  private closed = false;

  constructor(opts: ExpertPoolOptions = {}) {
    this.threads = Math.max(1, Math.floor(opts.threads ?? 1));
    this.piscina = new Piscina<ExpertTask | ExpertBatchTask | ServeTask, ExpertResult | BatchResult>({
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

  /** Workers kept serving shared batches (runShared): threads - 1, the dispatcher's own thread being the other one. */
  get servingWorkers(): number { return this.threads - 1; }

  /**
   * Hands a shared batch (task.claims set) to every serving worker, which claim experts from it while the
   * caller does the same. Resolves when each has replied (computeMs summed), which the caller need not
   * wait for: the claim counter says when all experts are computed. A serving worker that dies or
   * throws is replaced; what it had claimed and not computed is computed again by an ordinary task, and
   * a failure of that too is a MoeOffloadError, as for run().
   */
  async runShared(task: ExpertBatchTask, what = 'experts'): Promise<BatchResult> {
    if (this.closed) throw new MoeOffloadError(`the expert worker pool is closed (computing ${what})`);
    if (!task.claims) throw new Error('runShared needs a task with claims');
    const claims = task.claims;
    clearTimeout(this.parkTimer);
    const fault = this.fault;
    this.fault = undefined;
    const results = await Promise.all(this.serving().map(async (lane, i) => {
      try {
        return await lane.run(fault && i === 0 ? { ...task, fault: fault.kind } : task);
      } catch (first) {
        if (this.closed) throw first;
        this.retries++;
        // Runs after this thread's own claiming is over, so what is not computed now never will be.
        const only = task.experts.map((_, j) => j).filter((j) => !SharedClaims.isDone(claims, j));
        try {
          return await this.piscina.run({ ...task, only, fault: fault && fault.attempts >= 2 ? fault.kind : undefined }) as BatchResult;
        } catch (second) {
          throw failedTwice(what, first, second);
        }
      }
    }));
    return { computeMs: results.reduce((a, r) => a + r.computeMs, 0) };
  }

  /**
   * Ends the serving workers' loops unless another shared batch comes within `idleMs` (the next
   * runShared starts new ones). A loop holds its piscina task open, which keeps the process alive: the
   * dispatcher calls this at the end of every evaluation, so a program that never closes the model
   * still exits, while a generation's next token finds its serving workers still up.
   */
  parkServingWhenIdle(idleMs = 100): void {
    clearTimeout(this.parkTimer);
    this.parkTimer = setTimeout(() => { for (const lane of this.lanes) lane.stop(); }, idleMs);
    this.parkTimer.unref();
  }

  /** The serving workers, started on first use and replaced when one has stopped. */
  private serving(): ServingLane[] {
    for (let i = 0; i < this.servingWorkers; i++) {
      if (!this.lanes[i] || this.lanes[i]!.stopped) this.lanes[i] = new ServingLane(this.piscina);
    }
    return this.lanes;
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
        throw failedTwice(what, first, second);
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
    clearTimeout(this.parkTimer);
    for (const lane of this.lanes) lane.stop();
    await this.piscina.destroy();
  }
}

/**
 * One worker in worker.ts's serving loop: a batch is posted on its own port and announced through a
 * shared counter it sleeps on (Atomics.wait), so it wakes without a piscina task or an event-loop turn on
 * either side; its replies come back on the port and settle the batch's promise.
 */
class ServingLane {
  /** No new batches: stop() was called or the loop has ended. */
  stopped = false;
  private readonly ctrl = new Int32Array(new SharedArrayBuffer(8));
  private readonly port: MessagePort;
  private readonly pending = new Map<number, { resolve: (r: BatchResult) => void; reject: (err: unknown) => void }>();
  private nextId = 0;

  constructor(piscina: Piscina<ExpertTask | ExpertBatchTask | ServeTask, ExpertResult | BatchResult>) {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.port.on('message', (m: ServedBatch) => {
      this.pending.get(m.id)?.resolve({ computeMs: m.computeMs });
      this.pending.delete(m.id);
    });
    this.port.unref(); // an idle serving worker must not keep the process alive
    piscina.run({ serve: { ctrl: this.ctrl, port: port2 } }, { transferList: [port2] as never }).then(
      () => this.end(new Error('the serving worker stopped')),
      (err: unknown) => this.end(err));
  }

  run(task: ExpertBatchTask): Promise<BatchResult> {
    if (this.stopped) return Promise.reject(new Error('the serving worker stopped'));
    const id = this.nextId++;
    const done = new Promise<BatchResult>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.port.postMessage({ id, task });
    Atomics.add(this.ctrl, 0, 1);
    Atomics.notify(this.ctrl, 0);
    return done;
  }

  /** Asks the loop to end once it has replied to what was posted (replies still arrive). */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    Atomics.store(this.ctrl, 1, 1);
    Atomics.add(this.ctrl, 0, 1);
    Atomics.notify(this.ctrl, 0);
  }

  /** The loop is over (stopped, or its worker died or threw): every batch without a reply fails. */
  private end(err: unknown): void {
    this.stopped = true;
    this.port.close();
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}

function failedTwice(what: string, first: unknown, second: unknown): MoeOffloadError {
  return new MoeOffloadError(
    `an expert worker failed twice computing ${what}: ${messageOf(second)} (first attempt: ${messageOf(first)})`,
    'the machine may be out of memory; try fewer --threads or a smaller --ram-cache');
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
