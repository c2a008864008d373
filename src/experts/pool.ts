// The CPU expert pool: piscina workers computing experts from the shared slabs (worker.ts). With one
// thread, one worker computes each layer's batch as a task. With N > 1, the dispatcher's thread computes
// each batch through the native thread pool and N - 1 serving workers lend their threads to that pool
// (lendWorkers), so they take their share of every batch without a message per layer. A task that fails
// (its worker died, or threw) is retried once on a fresh or another worker, a lent worker that fails is
// replaced and lent again once; a second failure is a MoeOffloadError. piscina replaces dead workers itself.
import { fileURLToPath } from 'node:url';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { MoeOffloadError } from '../model/errors.js';
import { threadLending } from '../native/index.js';
import type { BatchResult, ExpertBatchTask, ExpertResult, ExpertTask, LendReply, LendRequest, ServeTask } from './worker.js';

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
  /** The release word the serving workers are lent under, while they are (threadLending). */
  private lentUnder: Int32Array | undefined;
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

  /** Workers that lend their threads to the native pool (lendWorkers): threads - 1, the dispatcher's own thread being the other one. */
  get servingWorkers(): number { return this.threads - 1; }

  /** Whether the serving workers are lent now (between lendWorkers and their release). */
  get lent(): boolean { return this.lentUnder !== undefined; }

  /**
   * Lends the serving workers' threads to the native thread pool, unless they are lent already: until
   * released (parkServingWhenIdle, close), every pool job of this process (expertBatch's experts, the
   * matmul row chunks, attention heads) gets them as helpers instead of the pool's own threads, so the
   * experts' batches start at once, without a message or a wake-up per layer. A serving worker that dies
   * or throws is replaced and lent again once; a second failure is a MoeOffloadError, handed to
   * `onFailure` (nothing is lost meanwhile: the calling thread computes every chunk no helper took).
   */
  lendWorkers(onFailure: (err: unknown) => void): void {
    if (this.closed || this.lentUnder !== undefined || this.servingWorkers === 0) return;
    clearTimeout(this.parkTimer);
    const release = new Int32Array(new SharedArrayBuffer(4));
    this.lentUnder = release;
    lentUnder.add(release);
    releaseAtExit();
    const fault = this.fault;
    this.fault = undefined;
    this.serving().forEach((lane, i) => {
      const faulty = fault && i === 0;
      lane.lend(release, faulty ? fault.kind : undefined).catch((first: unknown) => {
        if (this.closed) return;
        this.retries++;
        // A fresh worker in the dead one's place. (A worker that ends after its pool released it counts as
        // stopped, not failed: ServingLane.end; so this runs while the pool is lent, and the release stops it.)
        const again = this.serving()[i]!;
        again.lend(release, faulty && fault.attempts >= 2 ? fault.kind : undefined).catch((second: unknown) => {
          if (!this.closed) onFailure(failedTwice('the layers\' experts (a serving worker lent to the thread pool)', first, second));
        });
      });
    });
  }

  /**
   * Releases the lent workers and ends their loops unless the pool is needed again within `idleMs` (the
   * next lendWorkers lends them again). A loop holds its piscina task open, which keeps the process
   * alive: the dispatcher calls this at the end of every evaluation, so a program that never closes the
   * model still exits, while a generation's next token finds its workers still lent.
   */
  parkServingWhenIdle(idleMs = 100): void {
    clearTimeout(this.parkTimer);
    this.parkTimer = setTimeout(() => this.stopServing(), idleMs);
    this.parkTimer.unref();
  }

  private stopServing(): void {
    clearTimeout(this.parkTimer);
    if (this.lentUnder !== undefined) {
      threadLending.release(this.lentUnder);
      lentUnder.delete(this.lentUnder);
    }
    this.lentUnder = undefined;
    for (const lane of this.lanes) lane.stop();
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
    this.stopServing();
    await this.piscina.destroy();
  }
}

/**
 * One worker in worker.ts's serving loop: a request is posted on its own port and announced through a
 * shared counter it sleeps on (Atomics.wait), so it wakes without a piscina task or an event-loop turn;
 * its reply comes back on the port once the pool has released its thread.
 */
class ServingLane {
  /** No new requests: stop() was called or the loop has ended. */
  stopped = false;
  private stopAsked = false;
  private readonly ctrl = new Int32Array(new SharedArrayBuffer(8));
  private readonly port: MessagePort;
  private readonly pending = new Map<number, { resolve: (r: LendReply) => void; reject: (err: unknown) => void }>();
  private nextId = 0;

  constructor(piscina: Piscina<ExpertTask | ExpertBatchTask | ServeTask, ExpertResult | BatchResult>) {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.port.on('message', (m: LendReply) => {
      this.pending.get(m.id)?.resolve(m);
      this.pending.delete(m.id);
    });
    this.port.unref(); // an idle serving worker must not keep the process alive
    piscina.run({ serve: { ctrl: this.ctrl, port: port2 } }, { transferList: [port2] as never }).then(
      () => this.end(new Error('the serving worker stopped')),
      (err: unknown) => this.end(err));
  }

  /** Lends the worker's thread to the native pool until release[0] is set; settles when it is back. */
  lend(release: Int32Array, fault?: 'exit' | 'throw'): Promise<LendReply> {
    if (this.stopped) return Promise.reject(new Error('the serving worker stopped'));
    const id = this.nextId++;
    const done = new Promise<LendReply>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.port.postMessage({ id, lend: release, ...(fault ? { fault } : {}) } satisfies LendRequest);
    Atomics.add(this.ctrl, 0, 1);
    Atomics.notify(this.ctrl, 0);
    return done;
  }

  /** Asks the loop to end once it has replied to what was posted (replies still arrive). */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.stopAsked = true;
    Atomics.store(this.ctrl, 1, 1);
    Atomics.add(this.ctrl, 0, 1);
    Atomics.notify(this.ctrl, 0);
  }

  /**
   * The loop is over: asked to stop (a reply that did not arrive first counts as given: the worker was
   * released and ended as asked), or its worker died or threw (every request without a reply fails).
   */
  private end(err: unknown): void {
    this.stopped = true;
    this.port.close();
    for (const p of this.pending.values()) {
      if (this.stopAsked) p.resolve({ id: -1, served: false });
      else p.reject(err);
    }
    this.pending.clear();
  }
}

/** The release words of every pool's lent workers, for the 'exit' hook. */
const lentUnder = new Set<Int32Array>();
let releaseHooked = false;
/**
 * A thread lent to the native pool sits in native code, where Node cannot stop it: a process that ends
 * (process.exit, an uncaught error, an empty event loop) with workers still lent would wait for them
 * forever. So every lent thread is released when the process emits 'exit', before Node stops the workers.
 */
function releaseAtExit(): void {
  if (releaseHooked) return;
  releaseHooked = true;
  process.once('exit', () => { for (const release of lentUnder) threadLending.release(release); });
}

function failedTwice(what: string, first: unknown, second: unknown): MoeOffloadError {
  return new MoeOffloadError(
    `an expert worker failed twice computing ${what}: ${messageOf(second)} (first attempt: ${messageOf(first)})`,
    'the machine may be out of memory; try fewer --threads or a smaller --ram-cache');
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
