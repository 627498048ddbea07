/**
 * Bytes a loop over a large file (an upload, Redis chunks, slices sent to the parser worker)
 * handles per turn of the event loop: a 44 MB copy in one go stalls it 75–320 ms on a VM, mostly
 * page faults of the new buffer; a MiB takes a few milliseconds.
 */
export const SLICE_BYTES = 1 << 20;

/** Counts bytes handled and gives the event loop a turn after every SLICE_BYTES of them. */
export class LoopTurns {
  private sinceTurn = 0;

  async handled(bytes: number): Promise<void> {
    if ((this.sinceTurn += bytes) < SLICE_BYTES) return;
    this.sinceTurn = 0;
    await new Promise((r) => setImmediate(r));
  }
}
