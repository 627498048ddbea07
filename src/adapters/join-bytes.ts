/** Bytes copied per turn of the event loop. */
const SLICE = 1 << 20;

/**
 * `parts`, joined, copied a MiB per turn of the event loop: a 44 MB copy in one go stalls it
 * 75–320 ms on a VM, mostly page faults of the new buffer.
 */
export async function joinBytes(parts: Buffer[]): Promise<Buffer> {
  if (parts.length === 1) return parts[0];
  const out = Buffer.alloc(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  let sinceYield = 0;
  for (const part of parts) {
    for (let from = 0; from < part.length; from += SLICE) {
      if (sinceYield >= SLICE) {
        sinceYield = 0;
        await new Promise((r) => setImmediate(r));
      }
      const n = part.copy(out, at, from, Math.min(part.length, from + SLICE));
      at += n;
      sinceYield += n;
    }
  }
  return out;
}
