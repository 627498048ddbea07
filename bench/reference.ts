/** The ground truth's case format and the comparisons made against it, shared by the tests and bench/reference-check.ts. */
export interface RefCase {
  /** Llama reference only: which checkpoint the case belongs to. */
  model?: string;
  adapter: string | null;
  text: string;
  ids: number[];
  last_logits_f32_b64: string;
  greedy: number[];
  top5: number[];
  label_logprobs?: Record<string, number>;
}

export function refLogits(c: RefCase): Float32Array {
  const b = Buffer.from(c.last_logits_f32_b64, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

/** ‖a − b‖ / ‖b‖: the relative error the reference bar (1e-4) is stated in. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}
