import v8 from 'node:v8';
import vm from 'node:vm';

/**
 * A worker runs a full garbage collection once the adapters it has forgotten since the last one
 * pass this many bytes.
 */
export const RECLAIM_BYTES = 32 * 1024 * 1024;

/**
 * Frees the memory of the adapters a worker has forgotten. Their arrays are SharedArrayBuffers that
 * the main thread and the workers share, and the memory behind one goes back only once every thread
 * that saw it has collected its handle. A worker's own heap is small and rarely needs a full
 * collection, so without one a worker that forgets adapters the registry has since loaded again
 * keeps every copy it was ever sent (measured: RSS rose by a LoRA's size per reload). The worker
 * calls `collect` after each step's reply: a full collection of its heap takes milliseconds.
 */
export class Reclaimer {
  /** The forgotten bytes (a running total) at the last collection. */
  private collectedAt = 0;
  /** Full collections run, since the start (tests). */
  collections = 0;

  constructor(
    private readonly everyBytes = RECLAIM_BYTES,
    private readonly gc: () => void = exposedGc(),
  ) {}

  /** `forgottenBytes`: the bytes forgotten since the start. Runs a collection if enough were since the last; true if it did. */
  collect(forgottenBytes: number): boolean {
    if (forgottenBytes - this.collectedAt < this.everyBytes) return false;
    this.collectedAt = forgottenBytes;
    this.gc();
    this.collections++;
    return true;
  }
}

/**
 * V8's gc() without starting the process with --expose-gc: a context created while the flag is on
 * gets it. The flag is process-wide and stays on: the workers start together, and one turning it
 * off could leave another's context without gc (a review saw 3-10 % of starts fail that way). Were
 * gc still missing, collections would be left to V8: memory, not correctness.
 */
function exposedGc(): () => void {
  const own = (globalThis as { gc?: () => void }).gc;
  if (own) return own;
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('globalThis.gc') as unknown;
  return typeof gc === 'function' ? (gc as () => void) : () => {};
}
