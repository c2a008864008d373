// Positioned reads from the native addon (native/src/io.cc): pread on libuv's thread pool straight into
// a caller's buffer (which may be a view of a SharedArrayBuffer slab), so the JS thread keeps working
// while experts load. Errors come back as FileAccessError with the path, offset and the OS's reason.
import { FileAccessError } from '../model/errors.js';
import { native, type Addon } from './index.js';

interface NativeIoError extends Error { code?: string; errno?: number }

/** Direct reads so far in this process: straight into the caller's memory, or through a scratch buffer and a copy. */
export type IoCounters = ReturnType<Addon['ioCounters']>;

/** Block size O_DIRECT reads are aligned to (native/src/io.cc kDirectAlign). */
export const DIRECT_IO_ALIGNMENT = 4096;

/** The view's start address mod DIRECT_IO_ALIGNMENT (SharedArrayBuffers are not page-aligned in general). */
export function pageOffsetOf(view: Uint8Array): number {
  return native().pageOffsetOf(view);
}

export function ioCounters(): IoCounters {
  return native().ioCounters();
}

/** When one read ran on a pool thread, in ms on the clock of process.hrtime.bigint() / 1e6. */
export interface TracedRead { startMs: number; endMs: number; bytes: number }

/**
 * Starts (on) or stops recording when each read runs on libuv's pool (not when it was queued) and
 * returns the reads recorded since the last call (for timelines; off by default, costs a clock read
 * and a lock per read while on).
 */
export function traceReads(on: boolean): TracedRead[] {
  const raw = native().traceReads(on);
  const out: TracedRead[] = [];
  for (let i = 0; i + 2 < raw.length; i += 3) out.push({ startMs: raw[i]! / 1e6, endMs: raw[i + 1]! / 1e6, bytes: raw[i + 2]! });
  return out;
}

const DIRECT_HINT = 'run without --direct-io (the page cache will be used)';

function toFileError(err: unknown, hint?: string): FileAccessError {
  const e = err as NativeIoError;
  const msg = e instanceof Error ? e.message : String(err);
  const direct = /direct I\/O/.test(msg);
  const out = new FileAccessError(msg, hint ?? (direct ? DIRECT_HINT : 'check that the model file is complete and was not changed or moved while running'));
  (out as NativeIoError).code = e?.code;
  return out;
}

/** A file opened for positioned reads. Do not close it while reads are in flight. */
export class PositionedFile {
  readonly path: string;
  readonly direct: boolean;
  private fd: number | undefined;

  /**
   * direct: O_DIRECT (bypass the page cache). Positions, lengths and buffers need no alignment: the
   * native side reads the 4096-aligned covering range through a scratch buffer (see io.cc).
   * Throws FileAccessError when the file cannot be opened or the filesystem refuses O_DIRECT.
   */
  constructor(path: string, opts: { direct?: boolean } = {}) {
    this.path = path;
    this.direct = opts.direct ?? false;
    try {
      this.fd = native().openFile(path, this.direct);
    } catch (err) {
      const code = (err as NativeIoError).code;
      throw toFileError(err, code === 'ENOENT' ? 'check the path' : undefined);
    }
  }

  get isOpen(): boolean { return this.fd !== undefined; }

  /** Fills all of dst with the file's bytes from `position`. Rejects on an I/O error or an early end of file. */
  async readInto(position: number, dst: Uint8Array): Promise<void> {
    if (this.fd === undefined) throw new FileAccessError(`read from ${this.path} after it was closed`);
    try {
      await native().readInto(this.fd, position, dst);
    } catch (err) {
      throw toFileError(err);
    }
  }

  /**
   * Fills region[at, at + length) with the file's bytes from `position`. With direct I/O the rest of
   * `region` is scratch space: when the block-aligned range covering the wanted bytes, placed so that
   * `position` lands at region[at], is aligned in memory and fits inside region, the read goes straight
   * there (no copy; bytes of region outside [at, at + length) get neighbouring file bytes). Otherwise,
   * and without direct I/O, it is readInto(position, region.subarray(at, at + length)).
   */
  async readIntoRegion(position: number, region: Uint8Array, at: number, length: number): Promise<void> {
    if (this.fd === undefined) throw new FileAccessError(`read from ${this.path} after it was closed`);
    try {
      await native().readIntoRegion(this.fd, position, region, at, length);
    } catch (err) {
      if (err instanceof RangeError || err instanceof TypeError) throw err; // a caller's bug, not the file's
      throw toFileError(err);
    }
  }

  close(): void {
    if (this.fd === undefined) return;
    const fd = this.fd;
    this.fd = undefined;
    native().closeFile(fd);
  }
}

/** Low-level access for tests: the raw fd functions. */
export const rawIo = {
  openFile: (path: string, direct: boolean): number => native().openFile(path, direct),
  closeFile: (fd: number): void => native().closeFile(fd),
  readInto: (fd: number, position: number, dst: Uint8Array): Promise<number> => native().readInto(fd, position, dst),
};
