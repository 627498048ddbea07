import { LoopTurns, SLICE_BYTES } from '../loop-turns.js';

/** `parts`, joined, copied a slice per turn of the event loop. */
export async function joinBytes(parts: Buffer[]): Promise<Buffer> {
  if (parts.length === 1) return parts[0];
  const out = Buffer.alloc(parts.reduce((n, p) => n + p.length, 0));
  const turns = new LoopTurns();
  let at = 0;
  for (const part of parts) {
    for (let from = 0; from < part.length; from += SLICE_BYTES) {
      const n = part.copy(out, at, from, Math.min(part.length, from + SLICE_BYTES));
      at += n;
      await turns.handled(n);
    }
  }
  return out;
}
