/**
 * Turns generated token ids into text as they arrive, emitting exactly what the full decode of all
 * of them gives. Tokens do not map to text one by one: a character's UTF-8 bytes may span tokens
 * (byte-level BPE, SentencePiece byte fallback) and SentencePiece drops the leading space of the
 * first token of a text. So the decoder decodes a short window of recent ids and emits only the part
 * of its text that further ids cannot change: everything but a trailing U+FFFD (an incomplete
 * character). The window starts where earlier text was complete, one emitted chunk back, so the
 * decoder's own first-token rules apply to text already emitted, never to new text.
 */
export class StreamDecoder {
  private readonly ids: number[];
  /** The window is ids[start..]; ids[start..read) is text already emitted in full. */
  private start = 0;
  private read: number;
  /** Characters of the window's text already emitted. */
  private emitted: number;

  constructor(
    private readonly decode: (ids: readonly number[]) => string,
    context: readonly number[] = [],
  ) {
    // A few ids of context are enough for leading-space rules; the context ends on a whole character.
    this.ids = context.slice(-4);
    this.read = this.ids.length;
    this.emitted = this.ids.length ? decode(this.ids).length : 0;
  }

  push(id: number): string {
    this.ids.push(id);
    const text = this.decode(this.ids.slice(this.start));
    let stable = text.length;
    while (stable > 0 && text.charCodeAt(stable - 1) === 0xfffd) stable--;
    const out = stable > this.emitted ? text.slice(this.emitted, stable) : '';
    this.emitted = Math.max(this.emitted, stable);
    if (stable === text.length) {
      // Complete: the next window starts at the chunk just emitted, which ends on a whole character.
      this.start = this.read;
      this.read = this.ids.length;
      this.emitted = this.decode(this.ids.slice(this.start)).length;
      // Ids before the window are never read again.
      this.ids.splice(0, this.start);
      this.read -= this.start;
      this.start = 0;
    }
    return out;
  }

  /** Whatever is held back (an incomplete character becomes U+FFFD, as in the full decode). */
  flush(): string {
    const text = this.decode(this.ids.slice(this.start));
    const out = text.slice(this.emitted);
    this.emitted = text.length;
    return out;
  }
}
