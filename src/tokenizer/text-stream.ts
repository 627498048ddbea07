/**
 * Turns a token stream into text that never splits a UTF-8 character: bytes of an incomplete
 * character are held back until the token that completes it arrives.
 */
export class TextStream {
  private readonly decoder = new TextDecoder('utf-8');

  constructor(private readonly bytesOf: (ids: number[]) => Uint8Array) {}

  push(id: number): string {
    return this.decoder.decode(this.bytesOf([id]), { stream: true });
  }

  flush(): string {
    return this.decoder.decode();
  }
}
