// Fills a RAM-cache entry from the model file: the expert's three matrices (three separate ranges,
// one per stacked tensor) read in parallel by the native addon straight into the entry's slot. When the
// slot has the direct-read layout (entry.regions), each read gets its matrix's whole region, so that an
// O_DIRECT read lands in the slot without a bounce buffer and a copy (PositionedFile.readIntoRegion).
import { FileAccessError } from '../model/errors.js';
import type { PositionedFile } from '../native/io.js';
import { matrixView, type HostEntry } from './host-cache.js';
import { EXPERT_MATRICES, type ExpertLocator } from './locator.js';

export type ReadObserver = (layer: number, bytes: number, ms: number) => void;

export class ExpertReader {
  constructor(
    private readonly file: PositionedFile,
    private readonly locator: ExpertLocator,
    /** Told of every completed load: its layer, bytes and wall time. */
    private readonly onRead?: ReadObserver,
  ) {}

  /** HostCache's loader: getOrLoad(layer, expert, (entry) => reader.load(entry)). */
  async load(entry: HostEntry): Promise<void> {
    const range = this.locator.expertRange(entry.layer, entry.expert);
    const t0 = performance.now();
    let bytes = 0;
    const reads = EXPERT_MATRICES.map((m) => {
      const dst = matrixView(entry, m);
      if (dst.byteLength !== range[m].byteLength) {
        throw new Error(`slot for layer ${entry.layer} expert ${entry.expert} ${m} holds ${dst.byteLength} bytes, the file range ${range[m].byteLength}`);
      }
      bytes += dst.byteLength;
      const region = entry.regions?.[m];
      if (region && entry.slot.buffer) {
        const at = entry.ranges[m].offset - region.offset;
        return this.file.readIntoRegion(range[m].offset, new Uint8Array(entry.slot.buffer, region.offset, region.byteLength), at, dst.byteLength);
      }
      return this.file.readInto(range[m].offset, dst);
    });
    const settled = await Promise.allSettled(reads); // never leave a read writing into a slot we gave up
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) {
      const err = failed.reason as Error;
      const hint = err instanceof FileAccessError ? err.hint : undefined;
      throw new FileAccessError(`cannot load layer ${entry.layer} expert ${entry.expert}: ${err.message}`, hint);
    }
    this.onRead?.(entry.layer, bytes, performance.now() - t0);
  }
}
