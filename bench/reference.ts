import type ort from 'onnxruntime-node';
import { fullLogitsFeeds } from '../src/executor/head.js';
import type { FeedContext } from '../src/executor/model-constants.js';
import { prefillFeeds, type PrefillItem } from '../src/executor/prefill.js';
import { pickGraph, type ModelSessions } from '../src/executor/sessions.js';
import type { AdapterTensors } from '../src/protocol.js';

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

/**
 * One forward pass on the graph a worker picks for these rows (src/executor/sessions.ts), with full
 * logits for every picked row: `sessions.base` null forces the full graph.
 */
export async function runPicked(sessions: ModelSessions, ctx: FeedContext, feeds: Record<string, ort.Tensor>, adapters: (AdapterTensors | null)[], padEmpty = false): Promise<{ out: ort.InferenceSession.OnnxValueMapType; graph: 'base' | 'full' }> {
  const run = pickGraph(sessions, ctx, feeds, adapters);
  return { out: await run.session.run(fullLogitsFeeds(run.session, run.feeds, padEmpty)), graph: run.graph };
}

/** Last-position logits (one [V] row per item's logit position) of a padded prefill of `batch`, and the graph that ran it. */
export async function prefillLogits(sessions: ModelSessions, ctx: FeedContext, batch: PrefillItem[], padEmpty = false): Promise<{ rows: Float32Array[]; graph: 'base' | 'full' }> {
  const { out, graph } = await runPicked(sessions, ctx, prefillFeeds(ctx, batch).feeds, batch.map((it) => it.adapter), padEmpty);
  const V = ctx.base.config.vocabSize;
  const data = out.logits.data as Float32Array;
  return { rows: Array.from({ length: data.length / V }, (_, r) => data.slice(r * V, (r + 1) * V)), graph };
}
