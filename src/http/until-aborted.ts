/**
 * `source`'s items until `signal` aborts, then `reason()` at once, even while a client that sends
 * slowly keeps the next item waiting: a SIGTERM must answer an upload in progress with 503, not
 * wait for its body until the shutdown deadline and close the connection without an answer.
 */
export async function* untilAborted<T>(source: AsyncIterable<T>, signal: AbortSignal, reason: () => Error): AsyncGenerator<T> {
  const it = source[Symbol.asyncIterator]();
  let done = false;
  try {
    for (;;) {
      if (signal.aborted) throw reason();
      // A promise and a listener per item, both dropped after it: one that outlived the loop would
      // keep every race's result, the chunks of the whole file, alive until the upload ends.
      let onAbort = () => {};
      const aborted = new Promise<never>((_, reject) => (onAbort = () => reject(reason())));
      signal.addEventListener('abort', onAbort, { once: true });
      const next = it.next();
      next.catch(() => {}); // settles after an abort: nobody waits for it then
      let r: IteratorResult<T>;
      try {
        r = await Promise.race([next, aborted]);
      } finally {
        signal.removeEventListener('abort', onAbort);
      }
      if ((done = r.done === true)) return;
      yield r.value;
    }
  } finally {
    // Left early (an error, an abort): end the source, as a for-await loop over it would.
    if (!done) void it.return?.()?.catch(() => {});
  }
}
